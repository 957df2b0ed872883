from flask import Blueprint

bp = Blueprint("subjects", __name__, url_prefix="/subjects")

from ecrf.subjects import views  # noqa: E402,F401
