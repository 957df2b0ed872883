"""datasets export (written next)."""
