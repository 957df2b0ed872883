from flask import Blueprint

bp = Blueprint("sdv", __name__)

from ecrf.sdv import views  # noqa: E402,F401
