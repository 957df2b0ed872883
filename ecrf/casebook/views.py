"""The casebook of a subject: the visit x form grid, the form pages, each item's history."""

from __future__ import annotations

import secrets
from datetime import date
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ecrf.access.decorators import refuse, requires
from ecrf.access.grants import Access
from ecrf.access.scoping import subject_or_404
from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import REASON_CODES, Reason
from ecrf.casebook import bp, services
from ecrf.casebook.models import FormInstance
from ecrf.database import parse_key
from ecrf.extensions import db
from ecrf.forms.build import NF_COMMENT_SUFFIX, NF_SUFFIX, form_class
from ecrf.forms.items import NULL_FLAVORS, Choice, DateTime
from ecrf.i18n import tr
from ecrf.review.closure import refusal
from ecrf.study.schedule import ended_visits


def _schedule():
    return current_app.extensions["ecrf.registry"].schedule


def _visit_or_404(visit_key: str, crf_key: str | None = None):
    try:
        visit = _schedule().visit(visit_key)
    except KeyError:
        abort(404)
    if crf_key is not None and crf_key not in (*visit.forms, *visit.repeating_forms):
        abort(404)
    return visit


@bp.route("/casebook")
@requires("crf.view")
def grid(code: str):
    subject = subject_or_404(code)
    instances = db.session.scalars(sa.select(FormInstance).where(
        FormInstance.subject_id == subject.id)).all()
    by_slot: dict[tuple, list[FormInstance]] = {}
    for inst in instances:
        by_slot.setdefault((inst.visit_key, inst.crf_key), []).append(inst)
    visits = _schedule().visits
    columns = list(dict.fromkeys(f for v in visits for f in v.forms))
    repeating = list(dict.fromkeys(f for v in visits for f in v.repeating_forms))
    today = date.today()
    titles = {k: services.registry().current(k).title for k in (*columns, *repeating)}
    death = services.CheckContext(subject, services.Slot("D90")).values("end_of_study") or {}
    unscheduled = {v.key for v in visits if v.unscheduled}
    return render_template("casebook/grid.html", subject=subject, visits=visits, columns=columns,
                           repeating=repeating, by_slot=by_slot, today=today, titles=titles,
                           ended=ended_visits(visits, subject.inclusion_date,
                                               death.get("death_date")),
                           next_unscheduled=1 + max((i.visit_repeat for i in instances
                                                     if i.visit_key in unscheduled), default=0))


def _initial(crf, instance, tz: str) -> dict:
    """Stored values as the form shows them (datetimes in the site's local time)."""
    data = {}
    for key, value in services.instance_values(instance, crf).items():
        item = crf.item(key)
        if isinstance(value, services.NullFlavor):
            data[key + NF_SUFFIX], data[key + NF_COMMENT_SUFFIX] = value.code, value.comment
        elif value is None:
            continue
        elif isinstance(item.type, DateTime):
            data[key] = value.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%dT%H:%M")
        elif item.type.multiple:
            data[key] = value
        else:
            data[key] = item.type.text(value)
    return data


def _submitted(crf) -> services.Submitted:
    submitted = services.Submitted()
    for item in crf.items:
        if item.derived:
            continue  # computed by the server; whatever the browser sends is ignored
        if item.type.multiple:
            submitted.values[item.key] = request.form.getlist(item.key)
        else:
            submitted.values[item.key] = request.form.get(item.key, "")
        flavor = request.form.get(item.key + NF_SUFFIX, "")
        if flavor:
            submitted.null_flavors[item.key] = (flavor,
                                                request.form.get(item.key + NF_COMMENT_SUFFIX, ""))
    return submitted


def _reason() -> Reason | None:
    code = request.form.get("reason_code", "")
    if not code:
        return None
    try:
        return Reason(code, request.form.get("reason_text", "").strip())
    except ValueError:
        return None


@bp.route("/visits/<visit_key>/<int:visit_repeat>/forms/<crf_key>/<int:form_repeat>",
          methods=["GET", "POST"])
@requires("crf.view")
def form_page(code: str, visit_key: str, visit_repeat: int, crf_key: str, form_repeat: int):
    """``form_repeat`` 0 opens a new instance of a repeating form."""
    subject = subject_or_404(code)
    visit = _visit_or_404(visit_key, crf_key)
    if form_repeat == 0 and crf_key not in visit.repeating_forms:
        abort(404)
    if visit_repeat < 1 or (visit_repeat > 1 and not visit.unscheduled):
        abort(404)  # only unscheduled visits repeat
    slot = services.Slot(visit_key, visit_repeat, form_repeat or None)
    instance = services.get_instance(subject, crf_key, slot)
    if instance is None and form_repeat > 1:
        abort(404)
    crf = services.definition_for(crf_key, instance)
    from ecrf.queries.views import answering_query

    answering = answering_query(instance)  # a correction in answer to this query (?query=)
    enter = Access.for_user(g.access.user, "crf.enter")
    can_enter = enter.covers(subject.site_id)
    tz = subject.site.timezone
    Form = form_class(crf)
    result = None
    if request.method == "POST":
        if not can_enter:
            refuse(403, "crf.enter not held on this site")
        form = Form()
        if not form.validate_on_submit():
            abort(400)
        row_version = parse_key(form.row_version.data)
        result = services.save_form(
            enter.actor(subject.site_id), subject, crf_key, slot, _submitted(crf),
            reason=_reason(), row_version=row_version, token=form.submission_token.data or None,
            confirmed=set(request.form.getlist("confirm")), query=answering)
        if result.ok:
            flash({"saved": _("Saved."), "unchanged": _("Nothing changed."),
                   "duplicate": _("This submission was already saved.")}[result.outcome], "info")
            target = result.instance
            if answering is not None:
                return redirect(url_for("queries.view_query", query_id=answering.id))
            return redirect(url_for("casebook.form_page", code=code, visit_key=visit_key,
                                    visit_repeat=visit_repeat, crf_key=crf_key,
                                    form_repeat=target.form_repeat))
    else:
        form = Form(data=_initial(crf, instance, tz))
        form.row_version.data = str(instance.row_version) if instance else ""
    if result is None or result.outcome != "conflict":
        form.submission_token.data = secrets.token_urlsafe(24)
    derived = services.instance_values(instance, crf)  # the derived values as stored
    for item in crf.items:
        if item.derived:
            value = derived.get(item.key)
            shown = item.type.label(value) if value is not None and hasattr(item.type, "label") \
                else services.value_text(item, value)
            if value is not None and isinstance(item.type, DateTime):  # local time, with offset
                shown = services.local_time(value, tz)
            if value is not None and isinstance(item.type, Choice):
                shown = tr(shown)  # a codelist label of the definition, in the user's language
            form[item.key].data = shown or ""
    status = 409 if result and result.outcome in ("conflict", "closed") else 400 if result else 200
    closed = refusal(subject)
    return render_template(
        "casebook/form.html", subject=subject, visit=visit, visit_repeat=visit_repeat, crf=crf,
        instance=instance, form=form, result=result, can_enter=can_enter, reasons=REASON_CODES,
        null_flavors=NULL_FLAVORS, form_repeat=form_repeat, tz=tz, closed=closed,
        local_time=services.local_time, answering=answering), status


@bp.route("/visits/<visit_key>/<int:visit_repeat>/forms/<crf_key>/<int:form_repeat>/not-done",
          methods=["POST"])
@requires("crf.enter")
def mark_not_done(code: str, visit_key: str, visit_repeat: int, crf_key: str, form_repeat: int):
    subject = subject_or_404(code)
    _visit_or_404(visit_key, crf_key)
    from ecrf.admin.forms import ConfirmForm

    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        services.mark_not_done(g.access.actor(subject.site_id), subject, crf_key,
                               services.Slot(visit_key, visit_repeat, form_repeat),
                               request.form.get("not_done_reason", ""))
        flash(_("The form is marked not done."), "info")
    except ValueError as e:
        flash(str(e), "error")
    return redirect(url_for("casebook.grid", code=code))


@bp.route("/visits/<visit_key>/<int:visit_repeat>/forms/<crf_key>/<int:form_repeat>/items/"
          "<item_key>/history")
@requires("crf.view")
def item_history(code: str, visit_key: str, visit_repeat: int, crf_key: str, form_repeat: int,
                 item_key: str):
    subject = subject_or_404(code)
    _visit_or_404(visit_key, crf_key)
    instance = services.get_instance(subject, crf_key,
                                     services.Slot(visit_key, visit_repeat, form_repeat))
    if instance is None:
        abort(404)
    crf = services.definition_for(crf_key, instance)
    try:
        item = crf.item(item_key)
    except KeyError:
        abort(404)
    rows = db.session.scalars(sa.select(AuditRecord).where(
        AuditRecord.subject == subject.code, AuditRecord.form == instance.form_label,
        AuditRecord.visit == instance.visit_label, AuditRecord.item == item_key,
        # the value's own history and its redactions (queries and SDV have theirs)
        AuditRecord.entity_type.in_(("item", "audit")),
    ).order_by(AuditRecord.seq)).all()
    return render_template("casebook/history.html", subject=subject, instance=instance, crf=crf,
                           item=item, rows=rows, tz=subject.site.timezone,
                           local_time=services.local_time)
