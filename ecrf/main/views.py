"""Home page and health check."""

from flask import render_template
from flask_login import current_user

from ecrf.access.decorators import authenticated, public
from ecrf.access.grants import active_grants
from ecrf.main import bp


@bp.route("/")
@authenticated
def index():
    return render_template("main/index.html", grants=active_grants(current_user))


@bp.route("/health")
@public
def health():
    return {"status": "ok"}
