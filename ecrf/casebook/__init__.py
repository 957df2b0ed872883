from flask import Blueprint

bp = Blueprint("casebook", __name__, url_prefix="/subjects/<code>")

from ecrf.casebook import views  # noqa: E402,F401
