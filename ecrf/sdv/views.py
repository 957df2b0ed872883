"""Source data verification pages: the backlog per site and subject, the plan, and the verify and
un-verify actions of the form page, the casebook grid and the subject page."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import sqlalchemy as sa
from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import ngettext
from flask_login import current_user

from ecrf.access.decorators import requires
from ecrf.access.grants import Access
from ecrf.access.scoping import site_or_404, subject_or_404
from ecrf.casebook.models import FormInstance
from ecrf.casebook.services import Slot, get_instance, local_time
from ecrf.database import key, parse_key
from ecrf.extensions import db
from ecrf.i18n import msg, tr
from ecrf.review import sdv
from ecrf.review.models import SdvPlan
from ecrf.sdv import bp

FORM = "/subjects/<code>/visits/<visit_key>/<int:visit_repeat>/forms/<crf_key>/<int:form_repeat>/sdv"


@dataclass
class Page:
    """A page of a list computed on the server (the pager macro's interface)."""

    rows: list
    page: int
    per_page: int
    items: list = field(init=False)

    def __post_init__(self):
        self.pages = max(math.ceil(len(self.rows) / self.per_page), 1)
        self.page = min(max(self.page, 1), self.pages)
        self.items = self.rows[(self.page - 1) * self.per_page:self.page * self.per_page]
        self.total = len(self.rows)
        self.has_prev, self.has_next = self.page > 1, self.page < self.pages
        self.prev_num, self.next_num = self.page - 1, self.page + 1


# --- the backlog and the plan ------------------------------------------------------------------


@bp.route("/sdv/")
@requires("sdv.verify")
def backlog():
    """What is left to verify on the monitor's sites: per site, then per subject and form."""
    site_ids = g.access.site_ids()
    chosen = request.args.get("site", type=key)
    if chosen is not None:
        site_or_404(chosen)
    by_site, by_subject = sdv.backlog(site_ids)
    if chosen is not None:
        by_subject = [s for s in by_subject if s.site.id == chosen]
    page = Page(by_subject, request.args.get("page", 1, type=key),
                current_app.config["SUBJECTS_PER_PAGE"])
    forms = sdv.forms_left({s.subject_id for s in page.items})
    registry = current_app.extensions["ecrf.registry"]
    return render_template("sdv/backlog.html", by_site=by_site, subjects=page, forms=forms,
                           chosen=chosen, plan=sdv.current_plan(),
                           crf_titles={k: registry.current(k).title for k in registry.crfs},
                           visit_titles={v.key: v.title for v in registry.schedule.visits})


@bp.route("/sdv/plan")
@requires("sdv.plan")
def plan():
    return render_template("sdv/plan.html", plan=sdv.current_plan(),
                           row=db.session.get(SdvPlan, sdv.PLAN_ID), modes=sdv.MODE_LABELS)


@bp.route("/sdv/plan", methods=["POST"])
@requires("sdv.plan")
def set_plan():
    percentage = parse_key(request.form.get("percentage", "").strip())
    mode = request.form.get("mode", "")
    if mode == "percentage" and percentage is None:
        flash(tr(msg("The percentage is a whole number from 1 to 99.")), "error")
        return redirect(url_for("sdv.plan"))
    try:
        sdv.set_plan(g.access.actor(None), mode, percentage,
                     request.form.get("reason_text", ""))
    except sdv.SdvError as e:
        flash(tr(e.message), "error")
    else:
        flash(tr(msg("The SDV plan is now: %(plan)s.", plan=sdv.current_plan().describe())),
              "info")
    return redirect(url_for("sdv.plan"))


# --- verifying ---------------------------------------------------------------------------------


def _instance_or_404(subject, visit_key: str, visit_repeat: int, crf_key: str, form_repeat: int):
    instance = get_instance(subject, crf_key, Slot(visit_key, visit_repeat, form_repeat))
    if instance is None:
        abort(404)
    return instance


def _done(count: int) -> None:
    if count:
        flash(ngettext("%(num)d item verified.", "%(num)d items verified.", count), "info")
    else:
        flash(tr(msg("Nothing left to verify here.")), "info")


def _back(default: str):
    target = request.form.get("next", "")
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        target = default
    return redirect(target)


@bp.route(f"{FORM}/verify", methods=["POST"])
@requires("sdv.verify")
def verify_form(code: str, visit_key: str, visit_repeat: int, crf_key: str, form_repeat: int):
    """The ticked items of a form, or all of them ("all")."""
    subject = subject_or_404(code)
    instance = _instance_or_404(subject, visit_key, visit_repeat, crf_key, form_repeat)
    actor = g.access.actor(subject.site_id)
    try:
        if request.form.get("all"):
            count = sdv.verify_scope(actor, subject, instance=instance)
        else:
            count = sdv.verify_items(actor, subject, instance, request.form.getlist("item"))
    except sdv.SdvError as e:
        flash(tr(e.message), "error")
    else:
        _done(count)
    return redirect(url_for("casebook.form_page", code=code, visit_key=visit_key,
                            visit_repeat=visit_repeat, crf_key=crf_key, form_repeat=form_repeat))


@bp.route(f"{FORM}/unverify", methods=["POST"])
@requires("sdv.verify")
def unverify(code: str, visit_key: str, visit_repeat: int, crf_key: str, form_repeat: int):
    subject = subject_or_404(code)
    instance = _instance_or_404(subject, visit_key, visit_repeat, crf_key, form_repeat)
    try:
        sdv.unverify(g.access.actor(subject.site_id), subject, instance,
                     request.form.get("item", ""), request.form.get("reason_text", ""))
    except sdv.SdvError as e:
        flash(tr(e.message), "error")
    else:
        flash(tr(msg("The verification is withdrawn.")), "info")
    return redirect(url_for("casebook.form_page", code=code, visit_key=visit_key,
                            visit_repeat=visit_repeat, crf_key=crf_key, form_repeat=form_repeat))


@bp.route("/subjects/<code>/visits/<visit_key>/sdv/verify", methods=["POST"])
@requires("sdv.verify")
def verify_visit(code: str, visit_key: str):
    """The items the plan requires, in every form of one visit (all its repeats)."""
    subject = subject_or_404(code)
    try:
        _done(sdv.verify_scope(g.access.actor(subject.site_id), subject, visit_key=visit_key,
                               required_only=True))
    except sdv.SdvError as e:
        flash(tr(e.message), "error")
    return _back(url_for("casebook.grid", code=code))


@bp.route("/subjects/<code>/sdv/verify", methods=["POST"])
@requires("sdv.verify")
def verify_subject(code: str):
    """The items the plan requires, in the whole casebook."""
    subject = subject_or_404(code)
    try:
        _done(sdv.verify_scope(g.access.actor(subject.site_id), subject, required_only=True))
    except sdv.SdvError as e:
        flash(tr(e.message), "error")
    return _back(url_for("casebook.grid", code=code))


# --- what the casebook pages show --------------------------------------------------------------


@dataclass
class FormState:
    """The SDV state of one form, for its page."""

    items: dict[str, sdv.SdvItem]
    required: dict[str, bool]
    plan: sdv.Plan
    selected: bool
    can_verify: bool
    tz: str

    @property
    def counts(self) -> sdv.Counts:
        required = [i for i in self.items.values() if i.required]
        return sdv.Counts(len(required), sum(1 for i in required if i.verified))

    @property
    def to_verify(self) -> list[sdv.SdvItem]:
        return [i for i in self.items.values() if not i.verified]

    @property
    def verified(self) -> list[sdv.SdvItem]:
        return [i for i in self.items.values() if i.verified]

    def when(self, sdv_item: sdv.SdvItem) -> str:
        return local_time(sdv_item.verification.verified_at, self.tz)


@dataclass
class SubjectState:
    """The SDV state of a casebook: totals, per form and per visit."""

    plan: sdv.Plan
    selected: bool
    bucket: int
    counts: sdv.Counts
    by_form: dict[int, sdv.Counts]
    by_visit: dict[str, sdv.Counts]
    can_verify: bool


def _covers(permission: str, site_id: int) -> bool:
    return current_user.is_authenticated and Access.for_user(current_user, permission).covers(site_id)


def form_state(subject, instance, crf) -> FormState | None:
    if instance is None or not _covers("crf.view", subject.site_id):
        return None
    plan = sdv.current_plan()
    items = {i.item.key: i for i in sdv.items_of(subject, instance=instance, plan=plan)}
    required = {item.key: sdv.is_required(subject, crf, item, plan) for item in crf.items}
    return FormState(items, required, plan, plan.selects(subject.code),
                     _covers("sdv.verify", subject.site_id), subject.site.timezone)


def subject_state(subject) -> SubjectState | None:
    if not _covers("crf.view", subject.site_id):
        return None
    plan = sdv.current_plan()
    by_form = sdv.counts_by_form(subject)
    visits = dict(db.session.execute(
        sa.select(FormInstance.id, FormInstance.visit_key).where(
            FormInstance.id.in_(list(by_form)))).all()) if by_form else {}
    by_visit: dict[str, sdv.Counts] = {}
    for instance_id, counts in by_form.items():
        key = visits[instance_id]
        by_visit[key] = by_visit.get(key, sdv.Counts()) + counts
    total = sum(by_form.values(), sdv.Counts())
    return SubjectState(plan, plan.selects(subject.code), sdv.sample_bucket(subject.code), total,
                        by_form, by_visit, _covers("sdv.verify", subject.site_id))


@bp.app_context_processor
def _sdv_helpers():
    return {"sdv_form": form_state, "sdv_subject": subject_state}
