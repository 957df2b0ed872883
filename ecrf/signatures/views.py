"""Signing a visit or a casebook, the signatures shown with the data, and the delegation logs."""

from __future__ import annotations

import sqlalchemy as sa
from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user

from ecrf.access.decorators import record_refusal, refuse, requires
from ecrf.access.scoping import site_or_404, sites_for, subject_or_404
from ecrf.auth.models import User
from ecrf.auth.ratelimit import checks_password
from ecrf.casebook.services import local_time
from ecrf.database import key
from ecrf.extensions import db
from ecrf.forms.choices import choices
from ecrf.i18n import tr
from ecrf.review import delegation
from ecrf.review import signatures as services
from ecrf.review.models import SIGNATURE_MEANINGS, DelegationEntry
from ecrf.signatures import bp
from ecrf.signatures.forms import DelegationForm, EndDelegationForm, SignForm

PER_PAGE = 50
REFUSAL_STATUS = {"authority": 403, "state": 409, "credentials": 400}


@bp.app_context_processor
def _signature_helpers():
    """What the casebook grid, the form page and the subject page need to show signatures."""

    def signature_states(subject) -> list[services.ScopeStatus]:
        cache = g.setdefault("ecrf_signature_states", {})
        if subject.id not in cache:
            cache[subject.id] = services.signature_status(subject)
        return cache[subject.id]

    return {"signature_states": signature_states, "signature_local_time": local_time,
            "meaning_label": lambda code: str(services.MEANING_LABELS.get(code, code))}


# --- signing -----------------------------------------------------------------------------------


@bp.route("/subjects/<code>/sign", methods=["GET", "POST"])
@requires("casebook.sign")
@checks_password("signed-in")
def sign_casebook(code: str):
    return _sign(subject_or_404(code), services.SignScope.casebook())


@bp.route("/subjects/<code>/visits/<visit_key>/<int:visit_repeat>/sign", methods=["GET", "POST"])
@requires("casebook.sign")
@checks_password("signed-in")
def sign_visit(code: str, visit_key: str, visit_repeat: int):
    subject = subject_or_404(code)
    try:
        visit = current_app.extensions["ecrf.registry"].schedule.visit(visit_key)
    except KeyError:
        abort(404)
    if visit_repeat < 1 or (visit_repeat > 1 and not visit.unscheduled):
        abort(404)
    return _sign(subject, services.SignScope.visit(visit_key, visit_repeat))


def _sign(subject, scope: services.SignScope):
    """Show what the signature covers, whether it can be signed, and ask for both components."""
    form = SignForm()
    error, status = None, 200
    if request.method == "POST":
        if not form.validate_on_submit():
            error, status = _("Give your username and your password to sign."), 400
        else:
            try:
                services.sign(current_user, subject, scope, username=form.username.data,
                              password=form.password.data, meaning=form.meaning.data,
                              seen_hash=form.content_hash.data or None)
            except services.SigningRefused as e:
                if e.kind == "authority":
                    record_refusal(str(e.message))
                error, status = tr(e.message), REFUSAL_STATUS[e.kind]
            else:
                flash(_("Signed: %(scope)s of %(code)s.", scope=tr(scope.describe()), code=subject.code),
                      "info")
                return redirect(url_for("casebook.grid", code=subject.code))
    instances = services.subject_instances(subject)
    ready = services.readiness(subject, scope, instances)
    state = next((s for s in services.signature_status(subject, instances) if s.scope == scope),
                 services.ScopeStatus(scope, services.NEVER))
    form.password.data = ""
    form.content_hash.data = services.content_hash(subject, scope, instances)
    return render_template(
        "signatures/sign.html", subject=subject, scope=scope, form=form, ready=ready, state=state,
        refusal=services.authority_refusal(current_user, subject), error=error,
        meanings=SIGNATURE_MEANINGS, tz=subject.site.timezone,
        titles={i.crf_key: _crf_title(i.crf_key) for i in ready.instances}), status


def _crf_title(crf_key: str) -> str:
    try:
        return current_app.extensions["ecrf.registry"].current(crf_key).title
    except KeyError:
        return crf_key


# --- delegation log ----------------------------------------------------------------------------


@bp.route("/delegation/")
@requires("delegation.manage")
def delegation_sites():
    sites = sites_for()
    rows = db.session.execute(sa.select(DelegationEntry.site_id, DelegationEntry.task,
                                        sa.func.count(DelegationEntry.id))
                              .where(DelegationEntry.end_date.is_(None))
                              .group_by(DelegationEntry.site_id, DelegationEntry.task)).all()
    open_lines = {(site_id, task): n for site_id, task, n in rows}
    return render_template("signatures/delegation_sites.html", sites=sites, open_lines=open_lines)


def _log_page(site, form: DelegationForm, status: int = 200):
    page = max(request.args.get("page", 1, type=key), 1)
    lines = db.paginate(delegation.entries(site), page=page, per_page=PER_PAGE, error_out=False)
    return render_template("signatures/delegation_log.html", site=site, lines=lines, form=form,
                           end_form=EndDelegationForm(formdata=None), today=delegation.site_today(site),
                           task_label=delegation.task_label), status


def _delegation_form(site) -> DelegationForm:
    form = DelegationForm()
    form.user.choices = choices((u.id, f"{u.full_name} ({u.username})")
                                for u in delegation.eligible_users(site))
    return form


@bp.route("/delegation/sites/<int:site_id>")
@requires("delegation.manage")
def delegation_log(site_id: int):
    site = site_or_404(site_id)
    form = _delegation_form(site)
    form.start_date.data = delegation.site_today(site)
    return _log_page(site, form)


@bp.route("/delegation/sites/<int:site_id>", methods=["POST"])
@requires("delegation.manage")
def add_delegation(site_id: int):
    site = site_or_404(site_id)
    form = _delegation_form(site)
    if not form.validate_on_submit():
        return _log_page(site, form, 400)
    user = db.session.get(User, int(form.user.data))
    try:
        delegation.add_entry(g.access.actor(site.id), site, user, form.task.data,
                             form.start_date.data, form.end_date.data)
    except delegation.DelegationError as e:
        form.user.errors = [*form.user.errors, tr(e.message)]
        return _log_page(site, form, 409)
    flash(_("The line is added to the delegation log of site %(site)s.", site=site.code), "info")
    return redirect(url_for("signatures.delegation_log", site_id=site.id))


@bp.route("/delegation/entries/<int:entry_id>/end", methods=["POST"])
@requires("delegation.manage")
def end_delegation(entry_id: int):
    entry = db.session.get(DelegationEntry, entry_id)
    if entry is None or not g.access.covers(entry.site_id):
        refuse(404, f"delegation line {entry_id} not found")
    form = EndDelegationForm()
    if not form.validate_on_submit():
        flash(_("Give the last day of the task and the reason: %(problems)s",
                problems="; ".join(str(e) for errs in form.errors.values() for e in errs)), "error")
    else:
        try:
            delegation.end_entry(g.access.actor(entry.site_id), entry, form.end_date.data, form.reason())
            flash(_("The line is ended: the task was held until %(day)s.",
                    day=form.end_date.data.isoformat()), "info")
        except delegation.DelegationError as e:
            flash(tr(e.message), "error")
    return redirect(url_for("signatures.delegation_log", site_id=entry.site_id))
