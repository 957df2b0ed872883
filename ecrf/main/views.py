"""Home page and health check."""

from flask import render_template
from flask_login import current_user

from ecrf.access.decorators import authenticated, public
from ecrf.access.grants import active_grants
from ecrf.main import bp
from ecrf.study.safety import serious_events


@bp.route("/")
@authenticated
def index():
    grants = active_grants(current_user)
    # data managers see every serious adverse event with its 24-hour reporting deadline
    alerts = serious_events() if any(g.role == "data_manager" for g in grants) else None
    return render_template("main/index.html", grants=grants, alerts=alerts)


@bp.route("/health")
@public
def health():
    return {"status": "ok"}
