"""Data leaving the system: CDISC ODM 1.3.2, analysis datasets, PDF casebooks, each recorded with
who asked, the scope, the time and the SHA-256 of the file."""
