"""Data leaving the system: CDISC ODM 1.3.2, analysis datasets, PDF casebooks, the audit trail;
each recorded with who asked, the scope, the time and the SHA-256 of the file."""

from flask import Blueprint

bp = Blueprint("exports", __name__, url_prefix="/exports")

from ecrf.exports import views  # noqa: E402,F401
