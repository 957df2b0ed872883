"""Source data verification (SDV): a monitor checks saved values against the source documents.

What must be verified: items flagged ``critical`` in the CRF definitions (eligibility, SOFA inputs,
dosing, serious adverse events) for every subject; the other items as the data manager's plan
says (all, a share of the subjects, or none). Derived items are computed by the system from
other items and are never verified themselves: verifying their inputs covers them.

Each verification is one ``ItemVerification`` row per item value, written through the audited
unit of work, so who verified what and when is in the audit trail; un-verifying needs a reason.
A verification belongs to the value it was made on: any later change of that value, by the web
form, the CLI, a loader or a recalculation, clears it (the flush rule at the end of this module,
which every audited write passes through).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, attributes
from sqlalchemy.orm.exc import StaleDataError

from ecrf.audit.capture import flush_rule
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import UOW_KEY, Actor, unit_of_work
from ecrf.casebook.models import VALUE_COLUMNS, FormInstance, ItemValue
from ecrf.database import utcnow
from ecrf.extensions import db
from ecrf.forms.definition import CRF, Item
from ecrf.i18n import Message, msg
from ecrf.review.models import ItemVerification, SdvCount, SdvPlan, SummaryState
from ecrf.study.models import Site, Subject

PLAN_ID = 1
MODES = ("all", "percentage", "none")
MODE_LABELS = {
    "all": _l("every item of every subject"),
    "percentage": _l("every item of a share of the subjects"),
    "none": _l("critical items only"),
}
#: the columns that make an item's value; a change to any of them is a change of the value
VALUE_FIELDS = (*VALUE_COLUMNS, "null_flavor", "null_comment")
VERIFIED_REASON = Reason("administrative", "verified against the source")
CLEARED_REASON = Reason.system("value changed after verification")


class SdvError(ValueError):
    """An SDV action that cannot be done (nothing to verify, no reason, closed data...)."""

    def __init__(self, message: Message):
        super().__init__(str(message))
        self.message = message


# --- the plan ----------------------------------------------------------------------------------


def sample_bucket(subject_code: str) -> int:
    """0-99, from the SHA-256 of the subject code.

    Why a hash of the code: the choice is stable (the code never changes, so a subject never
    enters or leaves the sample on its own), needs no stored state (nothing to keep in sync or to
    audit besides the plan), and samples are nested (raising the percentage only adds subjects,
    lowering it only removes some). Anyone can compute it, sites included: hiding the sample from
    sites is not a goal here, since critical items are verified for every subject anyway.
    """
    return int.from_bytes(hashlib.sha256(subject_code.encode()).digest(), "big") % 100


@dataclass(frozen=True)
class Plan:
    mode: str = "all"
    percentage: int | None = None

    def selects(self, subject_code: str) -> bool:
        """Whether the items not flagged critical of this subject are to be verified."""
        if self.mode == "all":
            return True
        if self.mode == "none":
            return False
        return sample_bucket(subject_code) < (self.percentage or 0)

    def describe(self) -> Message:
        if self.mode == "percentage":
            return msg("critical items of every subject; the other items of %(percentage)s%% of "
                       "the subjects", percentage=self.percentage)
        if self.mode == "none":
            return msg("critical items only")
        return msg("every item of every subject")


def current_plan() -> Plan:
    """The data manager's plan; no plan set yet means every item."""
    row = db.session.get(SdvPlan, PLAN_ID)
    return Plan() if row is None else Plan(row.mode, row.percentage)


def set_plan(actor: Actor, mode: str, percentage: int | None = None,
             reason_text: str = "") -> Plan:
    """Set the plan for items not flagged critical; changing a plan already set needs a reason."""
    if mode not in MODES:
        raise SdvError(msg("Choose all, a percentage or none."))
    if mode == "percentage":
        if percentage is None or not 1 <= percentage <= 99:
            raise SdvError(msg("The percentage is a whole number from 1 to 99."))
    else:
        percentage = None
    row = db.session.get(SdvPlan, PLAN_ID)
    new = Plan(mode, percentage)
    if row is not None and Plan(row.mode, row.percentage) == new:
        return new
    text = reason_text.strip()
    if row is not None and not text:
        raise SdvError(msg("Say why the plan changes (a reason is required)."))
    with unit_of_work(actor, Reason("other", text) if text else None):
        if row is None:
            row = SdvPlan(id=PLAN_ID)
            db.session.add(row)
        row.mode, row.percentage, row.updated_at = mode, percentage, utcnow()
    return new


def is_required(subject: Subject, crf: CRF, item: Item | str, plan: Plan | None = None) -> bool:
    """Whether this item of this subject must be verified: critical ones always, others by plan."""
    item = crf.item(item) if isinstance(item, str) else item
    if item.derived:
        return False
    return item.critical or (plan or current_plan()).selects(subject.code)


# --- items and their verification --------------------------------------------------------------


@dataclass(frozen=True)
class SdvItem:
    """One saved value that can be verified, with its verification (None: never verified)."""

    value: ItemValue
    instance: FormInstance
    item: Item
    verification: ItemVerification | None
    required: bool

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.verified


def _has_value_clause():
    return sa.or_(*(getattr(ItemValue, c).isnot(None) for c in (*VALUE_COLUMNS, "null_flavor")))


def _registry():
    from ecrf.casebook.services import registry

    return registry()


def _definition(instance: FormInstance) -> CRF | None:
    try:
        return _registry().version(instance.crf_key, instance.crf_version)
    except KeyError:
        return None


def items_of(subject: Subject, *, instance: FormInstance | None = None,
             visit_key: str | None = None, plan: Plan | None = None) -> list[SdvItem]:
    """The subject's values that can be verified (saved value or null flavor, not derived), in
    casebook order; only those of one form or one visit if given."""
    plan = plan or current_plan()
    stmt = (sa.select(ItemValue, FormInstance, ItemVerification)
            .join(FormInstance, ItemValue.form_instance_id == FormInstance.id)
            .outerjoin(ItemVerification, ItemVerification.item_value_id == ItemValue.id)
            .where(FormInstance.subject_id == subject.id, _has_value_clause())
            .order_by(FormInstance.id))
    if instance is not None:
        stmt = stmt.where(FormInstance.id == instance.id)
    if visit_key is not None:
        stmt = stmt.where(FormInstance.visit_key == visit_key)
    by_instance: dict[int, list] = defaultdict(list)
    for row, inst, verification in db.session.execute(stmt):
        by_instance[inst.id].append((row, inst, verification))
    selected = plan.selects(subject.code)
    found = []
    for rows in by_instance.values():
        crf = _definition(rows[0][1])
        if crf is None:
            continue
        order = {item.key: n for n, item in enumerate(crf.items)}
        for row, inst, verification in sorted(rows, key=lambda r: order.get(r[0].item_key, -1)):
            if row.item_key not in order:
                continue
            item = crf.item(row.item_key)
            if item.derived:
                continue
            found.append(SdvItem(row, inst, item, verification, item.critical or selected))
    return found


def required_items(subject: Subject, plan: Plan | None = None) -> list[SdvItem]:
    """The subject's saved values that the plan (or a critical flag) requires to be verified."""
    return [i for i in items_of(subject, plan=plan) if i.required]


def _check_open(subject: Subject) -> None:
    from ecrf.review.closure import REVIEW, refusal

    closed = refusal(subject, REVIEW)
    if closed is not None:
        raise SdvError(closed)


def verify(actor: Actor, subject: Subject, items: list[SdvItem]) -> int:
    """Mark these values verified by ``actor`` now, in one unit of work: one verification (and
    its audit records) per item. Items already verified are left as they are. Returns how many
    were verified now."""
    todo = [i for i in items if not i.verified]
    if not todo:
        return 0
    _check_open(subject)
    now = utcnow()
    try:
        with unit_of_work(actor, VERIFIED_REASON):
            for sdv_item in todo:
                verification = sdv_item.verification
                if verification is None:
                    verification = ItemVerification(item_value=sdv_item.value)
                    db.session.add(verification)
                verification.audit_reason = None  # the unit of work's reason applies
                verification.verified = True
                verification.verified_by_id = actor.user_id
                verification.verified_at = now
    except (sa.exc.IntegrityError, StaleDataError) as e:
        raise SdvError(msg("Someone else changed these verifications at the same time: nothing "
                           "was saved. Look again and repeat.")) from e
    return len(todo)


def verify_items(actor: Actor, subject: Subject, instance: FormInstance,
                 item_keys: list[str]) -> int:
    """Verify the named items of one form."""
    available = {i.item.key: i for i in items_of(subject, instance=instance)}
    missing = [k for k in item_keys if k not in available]
    if missing:
        raise SdvError(msg("%(items)s cannot be verified: no value is saved, or the value is "
                           "computed by the system.", items=", ".join(missing)))
    if not item_keys:
        raise SdvError(msg("Tick the items you verified."))
    return verify(actor, subject, [available[k] for k in dict.fromkeys(item_keys)])


def verify_scope(actor: Actor, subject: Subject, *, instance: FormInstance | None = None,
                 visit_key: str | None = None, required_only: bool = False) -> int:
    """Bulk verification of a form, a visit or the whole casebook.

    From the form page the monitor sees every value, so all of them are verified; from the
    casebook grid or the subject page (``required_only``) only what the plan requires is.
    """
    items = items_of(subject, instance=instance, visit_key=visit_key)
    if required_only:
        items = [i for i in items if i.required]
    return verify(actor, subject, items)


def unverify(actor: Actor, subject: Subject, instance: FormInstance, item_key: str,
             reason_text: str) -> None:
    """Withdraw a verification; the reason goes on the audit records."""
    text = (reason_text or "").strip()
    if not text:
        raise SdvError(msg("Say why the verification is withdrawn (a reason is required)."))
    found = next((i for i in items_of(subject, instance=instance) if i.item.key == item_key), None)
    if found is None or not found.verified:
        raise SdvError(msg("%(item)s is not verified.", item=item_key))
    _check_open(subject)
    verification = found.verification
    try:
        with unit_of_work(actor, Reason("other", text)):
            verification.audit_reason = None
            verification.verified = False
            verification.verified_by_id = None
            verification.verified_at = None
    except StaleDataError as e:
        raise SdvError(msg("Someone else changed these verifications at the same time: nothing "
                           "was saved. Look again and repeat.")) from e


# --- counts: the backlog -----------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    required: int = 0
    verified: int = 0

    @property
    def left(self) -> int:
        return self.required - self.verified

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.required + other.required, self.verified + other.verified)


class SiteBacklog(NamedTuple):
    site: Site
    required: int
    verified: int
    left: int


class SubjectBacklog(NamedTuple):
    subject_id: int
    code: str
    site: Site
    required: int
    verified: int
    left: int


#: the item kinds counted: values that can be verified, and the critical ones among them
ITEM_KINDS = {
    "verifiable": lambda item: not item.derived,
    "critical": lambda item: item.critical and not item.derived,
}


def _item_keys(kind: str) -> list[str]:
    """"crf:version:item" of every item of this kind, in every definition version (worked out
    once per registry: the definitions do not change while the app runs)."""
    registry = _registry()
    cache = registry.__dict__.setdefault("_sdv_item_keys", {})
    if kind not in cache:
        cache[kind] = sorted(f"{crf_key}:{version}:{item.key}"
                             for crf_key, versions in registry.crfs.items()
                             for version, crf in versions.items() for item in crf.items
                             if ITEM_KINDS[kind](item))
    return cache[kind]


def _items_where(kind: str) -> sa.ColumnElement[bool]:
    """SQL for "the item of this value, in its form's definition version, is of this kind".

    One IN on "crf:version:item" rather than an OR per definition: PostgreSQL hashes the list,
    which counts a whole trial's values several times faster. On PostgreSQL the list is one
    array parameter, not hundreds of bound values to expand on every save's recount.
    """
    keys = _item_keys(kind)
    full_key = (FormInstance.crf_key + ":" + sa.cast(FormInstance.crf_version, sa.String) + ":"
                + ItemValue.item_key)
    if not keys:
        return sa.false()
    if db.session.get_bind().dialect.name == "postgresql":
        return full_key == sa.any_(sa.bindparam(f"sdv_{kind}_keys", keys, type_=ARRAY(sa.String)))
    return full_key.in_(keys)


def _one(condition) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


def _raw_counts(group_by: tuple, where: list) -> list[tuple]:
    """Per group: (*group, values, verified, critical values, critical verified); only values
    that can be verified (saved, known, not derived)."""
    critical = _items_where("critical")
    verified = ItemVerification.verified.is_(True)
    stmt = (sa.select(*group_by, sa.func.count(ItemValue.id), _one(verified), _one(critical),
                      _one(sa.and_(critical, verified)))
            .select_from(ItemValue)
            .join(FormInstance, ItemValue.form_instance_id == FormInstance.id)
            .outerjoin(ItemVerification, ItemVerification.item_value_id == ItemValue.id)
            .where(_has_value_clause(), _items_where("verifiable"), *where)
            .group_by(*group_by))
    return [tuple(r) for r in db.session.execute(stmt)]


def _required(selected: bool, values: int, verified: int, critical: int,
              critical_verified: int) -> Counts:
    return Counts(values, verified) if selected else Counts(critical, critical_verified)


def counts_by_subject(site_ids: set[int] | None = None, *,
                      subject_ids: set[int] | None = None) -> dict[int, Counts]:
    """Required and verified values per subject id (subjects with no value are left out), read
    from the kept per-subject counts (``sdv_count``)."""
    plan = current_plan()
    ensure_counts()
    stmt = (sa.select(Subject.id, Subject.code, SdvCount.values_n, SdvCount.verified_n,
                      SdvCount.critical_n, SdvCount.critical_verified_n)
            .join(SdvCount, SdvCount.subject_id == Subject.id).where(SdvCount.values_n > 0))
    if site_ids is not None:
        stmt = stmt.where(Subject.site_id.in_(site_ids))
    if subject_ids is not None:
        stmt = stmt.where(Subject.id.in_(subject_ids))
    return {subject_id: _required(plan.selects(code), *numbers)
            for subject_id, code, *numbers in db.session.execute(stmt)}


def counted_by_subject(subject_ids: set[int] | None = None) -> dict[int, tuple[int, int, int, int]]:
    """The raw numbers counted from the values themselves (what ``sdv_count`` keeps)."""
    where = [] if subject_ids is None else [FormInstance.subject_id.in_(subject_ids)]
    return {subject_id: tuple(numbers)
            for subject_id, *numbers in _raw_counts((FormInstance.subject_id,), where)}


# --- the kept counts ---------------------------------------------------------------------------

COUNTS_KEY = "sdv.recount"
COUNTS_SUMMARY = "sdv_count"


def _store_counts(session: Session, subject_ids: set[int]) -> None:
    """Recount these subjects from their values and write the numbers (a row per subject)."""
    counted = counted_by_subject(subject_ids)
    kept = {c.subject_id: c for c in session.scalars(
        sa.select(SdvCount).where(SdvCount.subject_id.in_(subject_ids)))}
    for subject_id in subject_ids:
        row = kept.get(subject_id) or SdvCount(subject_id=subject_id)
        (row.values_n, row.verified_n, row.critical_n,
         row.critical_verified_n) = counted.get(subject_id, (0, 0, 0, 0))
        session.add(row)
    session.flush()


@flush_rule(60, "sdv.keep_counts")
def keep_counts(session: Session, touched: list) -> None:
    """Note the values, verifications and forms a flush writes; once the unit of work has
    appended its audit records (holding the chain head lock, so one transaction at a time),
    their subjects are recounted in the same transaction. Every path that changes a value or a
    verification passes here, like the audit capture."""
    relevant = [o for o in touched if isinstance(o, ItemValue | ItemVerification | FormInstance)]
    if not relevant:
        return
    pending = session.info.get(COUNTS_KEY)
    if pending is None:
        pending = session.info[COUNTS_KEY] = []
        session.info[UOW_KEY].after_append.append(_recount_touched)
    pending.extend(relevant)


def _recount_touched(session: Session, _seqs) -> None:
    touched = session.info.pop(COUNTS_KEY, [])
    value_ids = {o.id for o in touched if isinstance(o, ItemValue)}
    value_ids |= {o.item_value_id for o in touched if isinstance(o, ItemVerification)}
    subject_ids = {o.subject_id for o in touched if isinstance(o, FormInstance)}
    if value_ids:
        subject_ids |= set(session.scalars(
            sa.select(FormInstance.subject_id).join(ItemValue).where(ItemValue.id.in_(value_ids))))
    if subject_ids and _filled(session):
        _store_counts(session, subject_ids)


def _filled(session: Session) -> bool:
    return session.get(SummaryState, COUNTS_SUMMARY) is not None


def ensure_counts() -> None:
    """Fill ``sdv_count`` for the whole study the first time it is read (a new database, or one
    migrated from before the counts were kept). The chain head lock keeps writers out while the
    study is counted; a writer that waited for it then recounts its own subjects."""
    if _filled(db.session):
        return
    if db.session.info.get(UOW_KEY) is not None:
        _fill(db.session)
        return
    from ecrf.auth.services import system_actor

    with unit_of_work(system_actor(), Reason.system("SDV counts filled for the study")):
        _fill(db.session)


def _fill(session: Session) -> None:
    from ecrf.audit import chain

    chain.lock(session)
    if _filled(session):
        return
    subject_ids = set(session.scalars(sa.select(Subject.id)))
    if subject_ids:
        _store_counts(session, subject_ids)
    session.add(SummaryState(name=COUNTS_SUMMARY))
    session.flush()


def counts_by_form(subject: Subject) -> dict[int, Counts]:
    """Required and verified values per form instance id of one subject (casebook grid)."""
    selected = current_plan().selects(subject.code)
    return {instance_id: _required(selected, *numbers) for instance_id, *numbers in
            _raw_counts((FormInstance.id,), [FormInstance.subject_id == subject.id])}


def _subjects(site_ids: set[int] | None) -> list[tuple[int, str, int]]:
    stmt = sa.select(Subject.id, Subject.code, Subject.site_id).order_by(Subject.code)
    if site_ids is not None:
        stmt = stmt.where(Subject.site_id.in_(site_ids))
    return [tuple(r) for r in db.session.execute(stmt)]


def _sites(site_ids: set[int] | None) -> dict[int, Site]:
    stmt = sa.select(Site).order_by(Site.code)
    if site_ids is not None:
        stmt = stmt.where(Site.id.in_(site_ids))
    return {s.id: s for s in db.session.scalars(stmt)}


def backlog(site_ids: set[int] | None = None) -> tuple[list[SiteBacklog], list[SubjectBacklog]]:
    """Both lists of the backlog page from one count: per site (every site, or those given)
    values required, verified and left; then the subjects with values left, by code."""
    sites = _sites(site_ids)
    counts = counts_by_subject(site_ids)
    totals: dict[int, Counts] = defaultdict(Counts)
    subjects = []
    for subject_id, code, site_id in _subjects(site_ids):
        c = counts.get(subject_id)
        if c is None:
            continue
        totals[site_id] += c
        if c.left > 0:
            subjects.append(SubjectBacklog(subject_id, code, sites[site_id], c.required,
                                           c.verified, c.left))
    by_site = [SiteBacklog(site, totals[site.id].required, totals[site.id].verified,
                           totals[site.id].left) for site in sites.values()]
    return by_site, subjects


def backlog_by_site(site_ids: set[int] | None = None) -> list[SiteBacklog]:
    """Per site (every site, or those given): values required, verified, and left to verify."""
    return backlog(site_ids)[0]


def backlog_by_subject(site_ids: set[int] | None = None) -> list[SubjectBacklog]:
    """The subjects with values left to verify, by code, with their counts."""
    return backlog(site_ids)[1]


def forms_left(subject_ids: set[int]) -> dict[int, list[tuple[FormInstance, Counts]]]:
    """For the backlog page: per subject, its forms with values left to verify."""
    if not subject_ids:
        return {}
    plan = current_plan()
    codes = dict(db.session.execute(sa.select(Subject.id, Subject.code)
                                    .where(Subject.id.in_(subject_ids))).all())
    rows = _raw_counts((FormInstance.id, FormInstance.subject_id),
                       [FormInstance.subject_id.in_(subject_ids)])
    instances = {i.id: i for i in db.session.scalars(
        sa.select(FormInstance).where(FormInstance.id.in_([r[0] for r in rows])))}
    found: dict[int, list] = defaultdict(list)
    for instance_id, subject_id, *numbers in rows:
        counts = _required(plan.selects(codes[subject_id]), *numbers)
        if counts.left:
            found[subject_id].append((instances[instance_id], counts))
    for forms in found.values():
        forms.sort(key=lambda f: (f[0].visit_key, f[0].visit_repeat, f[0].crf_key,
                                  f[0].form_repeat))
    return found


# --- clear on change ---------------------------------------------------------------------------


def _value_changed(row: ItemValue) -> bool:
    return any(attributes.get_history(row, column).has_changes() for column in VALUE_FIELDS)


@flush_rule(50, "sdv.clear_on_change")
def clear_on_change(session: Session, touched: list) -> None:
    """A verified value that changes is no longer verified: whatever the path of the change, the
    verification is cleared in the same flush, with a system reason on its audit records.

    Runs before the freeze/lock rule (order 100), which then sees the cleared verification too.
    """
    changed = [o for o in touched if isinstance(o, ItemValue) and o not in session.new
               and _value_changed(o)]
    if not changed:
        return
    ids = {o.id for o in changed}
    found = set(session.scalars(sa.select(ItemVerification).where(
        ItemVerification.item_value_id.in_(ids), ItemVerification.verified.is_(True))))
    found |= {o for o in session.new if isinstance(o, ItemVerification) and o.verified
              and (o.item_value_id in ids or o.item_value in changed)}
    for verification in found:
        verification.verified = False
        verification.verified_by_id = None
        verification.verified_at = None
        verification.audit_reason = CLEARED_REASON
