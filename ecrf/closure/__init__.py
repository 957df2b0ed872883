from flask import Blueprint

bp = Blueprint("closure", __name__, url_prefix="/closure")

from ecrf.closure import views  # noqa: E402,F401
