from flask import Blueprint

bp = Blueprint("queries", __name__, url_prefix="/queries")

from ecrf.queries import views  # noqa: E402,F401
