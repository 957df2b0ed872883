"""Export pages: ask for an export, follow its progress, download the file.

The export runs in a background job, never inside the request; the page refreshes itself while
it runs. Investigators export their sites; study-wide roles the study.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import abort, flash, g, redirect, render_template, request, send_file, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from ecrf.access.decorators import refuse, requires
from ecrf.access.grants import Access
from ecrf.access.scoping import sites_for
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.database import key
from ecrf.exports import bp, jobs
from ecrf.exports.models import ExportJob
from ecrf.extensions import db

jobs.load_writers()

#: what users may ask for from the web, and the permission each needs
KINDS = {
    "odm_snapshot": (_l("CDISC ODM 1.3.2, current values (snapshot)"), "export.run"),
    "odm_transactional": (_l("CDISC ODM 1.3.2, whole history with audit records (transactional)"),
                          "export.run"),
    "datasets": (_l("Analysis datasets: CSV, SAS transport, SPSS, Stata, dictionary"), "export.run"),
    "pdf": (_l("PDF casebooks, one per subject"), "export.run"),
    "audit_jsonl": (_l("Audit trail as JSON lines, checkable offline"), "audit.view"),
}
PER_PAGE = 50


def _allowed_kinds(user) -> dict:
    return {k: label for k, (label, perm) in KINDS.items()
            if k in jobs.WRITERS and Access.for_user(user, perm)}


def _site_codes() -> set[str] | None:
    return None if g.access.study_wide else {s.code for s in sites_for()}


def _visible(stmt):
    """Study-wide exporters see every export; site users the exports of their sites."""
    codes = _site_codes()
    return stmt if codes is None else stmt.where(ExportJob.site_code.in_(codes))


@bp.route("/")
@requires("export.run")
def list_exports():
    page = max(request.args.get("page", 1, type=key), 1)
    exports = db.paginate(_visible(sa.select(ExportJob)).order_by(ExportJob.id.desc()),
                          page=page, per_page=PER_PAGE, error_out=False)
    return render_template("exports/list.html", exports=exports, kinds=_allowed_kinds(g.access.user),
                           labels={k: v[0] for k, v in KINDS.items()}, sites=sites_for(),
                           study_wide=g.access.study_wide)


@bp.route("/", methods=["POST"])
@requires("export.run")
def request_export():
    kind = request.form.get("kind", "")
    allowed = _allowed_kinds(g.access.user)
    if kind not in allowed:
        flash(_("Choose a kind of export."), "error")
        return redirect(url_for("exports.list_exports"))
    try:
        scope = jobs.Scope.from_codes(request.form.get("site") or None,
                                      request.form.get("subject", "").strip() or None)
    except LookupError:
        flash(_("No such site or subject."), "error")
        return redirect(url_for("exports.list_exports"))
    access = Access.for_user(g.access.user, KINDS[kind][1])
    if scope.site_id is None and not access.study_wide:
        flash(_("Choose one of your sites."), "error")
        return redirect(url_for("exports.list_exports"))
    if not access.covers(scope.site_id):
        refuse(404, f"export of {scope.label} not granted")
    job = jobs.request(access.actor(scope.site_id), kind, scope)
    return redirect(url_for("exports.view_export", export_id=job.id))


def _job_or_404(export_id: int) -> ExportJob:
    job = db.session.get(ExportJob, export_id)
    codes = _site_codes()
    if job is None or (codes is not None and job.site_code not in codes):
        refuse(404, f"export {export_id} not visible")
    return job


@bp.route("/<int:export_id>")
@requires("export.run")
def view_export(export_id: int):
    job = _job_or_404(export_id)
    return render_template("exports/view.html", job=job, label=KINDS.get(job.kind, (job.kind,))[0])


@bp.route("/<int:export_id>/download")
@requires("export.run")
def download_export(export_id: int):
    job = _job_or_404(export_id)
    if job.state != "done":
        abort(404)
    path = jobs.file_path(job)
    if not path.exists():
        abort(404)
    scope = jobs.job_scope(job)
    with unit_of_work(g.access.actor(scope.site_id), Reason.system("export downloaded")) as uow:
        uow.record("export.downloaded", "export", job.id, field=job.kind,
                   new=f"{job.file_name} sha256:{job.sha256}")
    return send_file(path, as_attachment=True, download_name=job.file_name)
