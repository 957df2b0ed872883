"""The audit trail for auditors: paginated, newest first, with the values behind the digests."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, current_app, render_template, request

from ecrf.access.decorators import requires
from ecrf.audit.models import AuditRecord
from ecrf.extensions import db

bp = Blueprint("audit", __name__, url_prefix="/audit")


@bp.route("/")
@requires("audit.view")
def trail():
    page = max(request.args.get("page", 1, type=int), 1)
    stmt = sa.select(AuditRecord).order_by(AuditRecord.seq.desc())
    action = request.args.get("action", "").strip()
    if action:
        stmt = stmt.where(AuditRecord.action == action)
    records = db.paginate(stmt, page=page, per_page=current_app.config["AUDIT_PER_PAGE"],
                          error_out=False)
    return render_template("audit/trail.html", records=records, action=action)
