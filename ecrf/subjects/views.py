"""Subjects of the user's sites: list, enrolment, status."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa
from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from markupsafe import Markup

from ecrf.access.decorators import requires
from ecrf.access.grants import Access
from ecrf.access.scoping import site_or_404, sites_for, subject_or_404, visible
from ecrf.audit.reasons import Reason
from ecrf.database import key, parse_key
from ecrf.extensions import db
from ecrf.forms.choices import choices
from ecrf.review import closure
from ecrf.study import eligibility, services
from ecrf.study.endpoint import primary_endpoint, sofa_series, svg_plot
from ecrf.study.models import ScreeningEntry, Site, Subject, status_label
from ecrf.study.services import TRANSITIONS
from ecrf.subjects import bp
from ecrf.subjects.forms import EnrolForm, ScreeningForm, StatusForm


@bp.route("/")
@requires("subject.view")
def list_subjects():
    page = max(request.args.get("page", 1, type=key), 1)
    per_page = current_app.config["SUBJECTS_PER_PAGE"]
    stmt = visible(sa.select(Subject).join(Site), Subject.site_id).order_by(Subject.code)
    filters = {k: request.args[k] for k in ("site", "included") if request.args.get(k)}
    if "site" in filters:
        stmt = stmt.where(Site.code == filters["site"])
    if filters.get("included") == "1":  # the study home's enrolment counts link here
        stmt = stmt.where(Subject.inclusion_date.is_not(None))
    subjects = db.paginate(stmt, page=page, per_page=per_page, error_out=False)
    enrol = Access.for_user(g.access.user, "subject.enrol")
    form = None
    if enrol:
        form = EnrolForm()
        form.site.choices = choices((s.id, f"{s.code} {s.name}") for s in sites_for(enrol)
                                   if s.activated_at is not None)
    return render_template("subjects/list.html", subjects=subjects, form=form, filters=filters)


@bp.route("/enrol", methods=["POST"])
@requires("subject.enrol")
def enrol():
    form = EnrolForm()
    site_id = parse_key(form.site.data)
    if not form.validate_on_submit() or site_id is None:
        flash(_("Choose one of your sites."), "error")
        return redirect(url_for("subjects.list_subjects"))
    site = site_or_404(site_id)  # another site's id: 404, and the refusal is recorded
    try:
        subject = services.enrol_subject(g.access.actor(site.id), site)
    except services.StudyError as e:
        flash(str(e), "error")
        return redirect(url_for("subjects.list_subjects"))
    flash(_("Subject %(code)s is enrolled (screening).", code=subject.code), "info")
    return redirect(url_for("subjects.view_subject", code=subject.code))


@bp.route("/<code>")
@requires("subject.view")
def view_subject(code: str):
    subject = subject_or_404(code)
    form = None
    if Access.for_user(g.access.user, "subject.status").covers(subject.site_id):
        form = StatusForm()
        form.status.choices = choices((new.value, status_label(new.value))
                                      for (old, new) in TRANSITIONS if old == subject.status)
    clinical = Access.for_user(g.access.user, "crf.view").covers(subject.site_id)
    plot = found = None
    if clinical:
        series = sofa_series(subject)
        endpoint = primary_endpoint(series)
        plot = Markup(svg_plot(series, endpoint))  # noqa: S704 (our own SVG, its texts escaped)
        found = eligibility.for_subject(subject)
    closure_allowed = {a: bool(Access.for_user(g.access.user, f"closure.{a}"))
                       for a in closure.ACTIONS}
    return render_template("subjects/view.html", subject=subject, form=form, plot=plot,
                           eligibility=found, closed=closure.refusal(subject),
                           closure_state=closure.state_of(closure.Scope.of_subject(subject)),
                           closure_allowed=closure_allowed)


@bp.route("/<code>/status", methods=["POST"])
@requires("subject.status")
def change_status(code: str):
    subject = subject_or_404(code)
    form = StatusForm()
    if not form.validate_on_submit():
        abort(400)
    text = (form.reason_text.data or "").strip()
    try:
        services.change_subject_status(g.access.actor(subject.site_id), subject, form.status.data,
                                       Reason("other", text) if text else None)
    except services.StudyError as e:
        flash(str(e), "error")
    else:
        flash(_("%(code)s is now %(status)s.", code=subject.code, status=status_label(subject.status)),
              "info")
    return redirect(url_for("subjects.view_subject", code=subject.code))


@bp.route("/screening-log")
@requires("subject.view")
def screening_log():
    """Every patient screened at the user's sites, and the counts of the flow diagram."""
    entries = db.session.scalars(visible(
        sa.select(ScreeningEntry).order_by(ScreeningEntry.screened_on.desc(), ScreeningEntry.id.desc()),
        ScreeningEntry.site_id)).all()
    form = None
    enrol = Access.for_user(g.access.user, "subject.enrol")
    if enrol:
        form = ScreeningForm()
        form.site.choices = choices((s.id, f"{s.code} {s.name}") for s in sites_for(enrol))
    flow = {"screened": len(entries), "enrolled": sum(1 for e in entries if e.subject_id),
            "reasons": Counter(e.reason_not_included for e in entries if not e.subject_id)}
    return render_template("subjects/screening_log.html", entries=entries, form=form, flow=flow)


@bp.route("/screening-log", methods=["POST"])
@requires("subject.enrol")
def add_screening():
    form = ScreeningForm()
    site_id = parse_key(form.site.data)
    if not form.validate_on_submit() or site_id is None:
        flash(_("The screening entry could not be read: check the date and the age."), "error")
        return redirect(url_for("subjects.screening_log"))
    site = site_or_404(site_id)
    subject = None
    if form.subject.data:
        subject = subject_or_404(form.subject.data.strip())
    try:
        services.log_screening(g.access.actor(site.id), site, screened_on=form.screened_on.data,
                               age=form.age.data, sex=form.sex.data, subject=subject,
                               reason_not_included=form.reason_not_included.data)
        flash(_("The screened patient is in the log."), "info")
    except services.StudyError as e:
        flash(str(e), "error")
    return redirect(url_for("subjects.screening_log"))
