"""Electronic signatures of visits and casebooks, and the sites' delegation logs (pages)."""

from flask import Blueprint

bp = Blueprint("signatures", __name__)

from ecrf.signatures import views  # noqa: E402,F401
