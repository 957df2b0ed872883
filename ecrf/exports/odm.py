"""odm export (written next)."""
