"""pdf export (written next)."""
