"""Saving a CRF: parse, check, derive, detect conflicts and changes, then one audited write.

The web form, the CLI and the demo loader all call ``save_form``, so they get the same parsing,
edit checks, derived values and audit. Nothing is stored unless every value parses and no hard
check fails; a change to a saved value needs a reason; soft checks need a confirmation, which is
recorded; a stale row version is a conflict that loses nothing; a reused token saves nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import current_app
from flask_babel import gettext as _
from sqlalchemy.orm.exc import StaleDataError

from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.casebook.models import VALUE_COLUMNS, FormInstance, FormStatus, ItemValue, Submission
from ecrf.database import utcnow
from ecrf.extensions import db
from ecrf.forms.definition import CRF, Finding, Item, visible
from ecrf.forms.items import NULL_FLAVORS, DateTime, ItemValueError
from ecrf.i18n import msg, tr
from ecrf.review.models import Query
from ecrf.study.models import Subject

log = logging.getLogger(__name__)
DERIVED_REASON = Reason.system("derived value recalculated")
STATUS_REASON = Reason.system("form status follows its data")


@dataclass(frozen=True)
class NullFlavor:
    code: str
    comment: str = ""


@dataclass(frozen=True)
class Slot:
    """Where a form lives in a casebook; ``form_repeat`` None asks for a new repeating instance."""

    visit_key: str
    visit_repeat: int = 1
    form_repeat: int | None = 1


@dataclass
class Submitted:
    """What a user (or a loader) typed: raw text per item, and null flavors per item."""

    values: dict[str, Any] = field(default_factory=dict)
    null_flavors: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class CheckContext:
    """What a cross-form check may look at: the subject and the values of its other forms."""

    subject: Subject
    slot: Slot
    #: the form being saved (its own instance is left out of ``all_values``)
    crf_key: str | None = None

    def values(self, crf_key: str, visit_key: str | None = None) -> dict[str, Any] | None:
        """Plain values of the subject's first ``crf_key`` form (at ``visit_key`` if given)."""
        stmt = sa.select(FormInstance).where(FormInstance.subject_id == self.subject.id,
                                             FormInstance.crf_key == crf_key)
        if visit_key is not None:
            stmt = stmt.where(FormInstance.visit_key == visit_key)
        instance = db.session.scalars(stmt.order_by(FormInstance.id)).first()
        if instance is None:
            return None
        return plain(instance_values(instance, definition_for(crf_key, instance)))

    def all_values(self, crf_key: str) -> list[tuple[FormInstance, dict[str, Any]]]:
        """Every instance of a (repeating) form of the subject, other than the one being saved."""
        stmt = sa.select(FormInstance).where(FormInstance.subject_id == self.subject.id,
                                             FormInstance.crf_key == crf_key)
        return [(i, plain(instance_values(i, definition_for(crf_key, i))))
                for i in db.session.scalars(stmt.order_by(FormInstance.id))
                if not (i.crf_key == self.crf_key and i.visit_key == self.slot.visit_key
                        and i.visit_repeat == self.slot.visit_repeat
                        and i.form_repeat == self.slot.form_repeat)]


@dataclass
class SaveResult:
    #: saved, unchanged, invalid, needs_reason, needs_confirmation, conflict, duplicate, closed
    outcome: str
    instance: FormInstance | None = None
    errors: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[Finding] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    current: dict[str, str | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome in ("saved", "unchanged", "duplicate")


def registry():
    return current_app.extensions["ecrf.registry"]


def get_instance(subject: Subject, crf_key: str, slot: Slot) -> FormInstance | None:
    if slot.form_repeat is None:
        return None
    return db.session.scalar(sa.select(FormInstance).where(
        FormInstance.subject_id == subject.id, FormInstance.visit_key == slot.visit_key,
        FormInstance.visit_repeat == slot.visit_repeat, FormInstance.crf_key == crf_key,
        FormInstance.form_repeat == slot.form_repeat))


def definition_for(crf_key: str, instance: FormInstance | None) -> CRF:
    """Data keep the definition version they were entered against."""
    if instance is not None:
        return registry().version(crf_key, instance.crf_version)
    return registry().current(crf_key)


# --- reading values --------------------------------------------------------------------------


def stored(item_value: ItemValue | None, item: Item) -> Any:
    """The Python value of a stored item (a NullFlavor for a null flavor, None when empty)."""
    if item_value is None:
        return None
    if item_value.null_flavor:
        return NullFlavor(item_value.null_flavor, item_value.null_comment or "")
    raw = getattr(item_value, item.type.column)
    if raw is None:
        return None
    if item.type.column == "value_text" and item.type.multiple:
        return item.type.from_text(raw)
    return raw


def instance_values(instance: FormInstance | None, crf: CRF) -> dict[str, Any]:
    if instance is None:
        return {}
    by_key = {v.item_key: v for v in instance.values}
    return {item.key: stored(by_key.get(item.key), item) for item in crf.items}


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """Values as checks and derivations see them: a null flavor counts as no value."""
    return {k: (None if isinstance(v, NullFlavor) else v) for k, v in values.items()}


def value_text(item: Item, value: Any) -> str | None:
    """The canonical text of a value (the same the audit trail keeps)."""
    if value is None:
        return None
    if isinstance(value, NullFlavor):
        return f"[{value.code}]" + (f" {value.comment}" if value.comment else "")
    return item.type.text(value)


# --- saving ----------------------------------------------------------------------------------


def parse(crf: CRF, submitted: Submitted, tz: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Raw input -> values, or messages per item. Derived items are never taken from input."""
    values: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for item in crf.items:
        if item.derived:
            continue
        raw = submitted.values.get(item.key)
        flavor = submitted.null_flavors.get(item.key)
        try:
            values[item.key] = _parse_one(item, raw, flavor, tz)
        except ItemValueError as e:
            errors.setdefault(item.key, []).append(str(e))
    unknown = set(submitted.values) - {i.key for i in crf.items}
    for key in sorted(unknown):
        errors.setdefault("_form", []).append(
            _("Unknown item %(key)s for this form.", key=repr(key)))
    derived_sent = [i.key for i in crf.items if i.derived and not i.type.is_empty(
        submitted.values.get(i.key))]
    for key in derived_sent:
        errors.setdefault(key, []).append(_("This value is computed by the system, not entered."))
    for item in crf.items:
        if item.derived or item.key in errors:
            continue
        value = values.get(item.key)
        if value is not None and not visible(item, plain(values)):
            errors.setdefault(item.key, []).append(
                _("This item does not apply given the other answers: leave it empty."))
    return values, errors


def _parse_one(item: Item, raw, flavor, tz: str):
    if flavor and flavor[0]:
        code, comment = flavor[0], (flavor[1] or "").strip()
        if code not in NULL_FLAVORS:
            raise ItemValueError(_("Unknown null flavor %(code)s.", code=repr(code)))
        if not item.type.is_empty(raw):
            raise ItemValueError(_("Give either a value or a reason it is missing, not both."))
        if len(comment) > 500:
            raise ItemValueError(_("The comment is limited to 500 characters."))
        return NullFlavor(code, comment)
    if item.type.is_empty(raw):
        return None
    if isinstance(raw, list) and not item.type.multiple:
        raise ItemValueError(_("Only one value is expected."))
    if isinstance(raw, str) and len(raw) > 10_000:
        raise ItemValueError(_("The value is too long."))
    if isinstance(item.type, DateTime):
        value = item.type.parse(raw, tz)
    elif item.type.multiple:
        value = item.type.parse(raw)
    else:
        value = item.type.parse(str(raw).strip())
    if item.hard is not None and not item.hard.contains(value):
        raise ItemValueError(_(
            "%(label)s must be %(range)s; found %(value)s.", label=tr(item.label),
            range=tr(item.hard.describe(item.unit)),
            value=item.type.text(value)))
    return value


def derive(crf: CRF, values: dict[str, Any], context=None) -> dict[str, Any]:
    """Compute derived items from the entered values (in definition order)."""
    result = dict(values)
    for item in crf.items:
        if item.derived:
            try:
                value = item.derive(plain(result), context) if item.derive_context \
                    else item.derive(plain(result))
                result[item.key] = None if value is None else item.type.coerce(value)
            except (ValueError, TypeError, ArithmeticError) as e:
                log.info("derivation of %s.%s gave no value: %s", crf.key, item.key, e)
                result[item.key] = None
    return result


def run_checks(crf: CRF, values: dict[str, Any], context=None) -> list[Finding]:
    findings = []
    p = plain(values)
    for item in crf.items:
        value = p.get(item.key)
        if value is not None and item.soft is not None and not item.soft.contains(value):
            findings.append(Finding(
                f"{crf.key.upper()}-{item.key}-RANGE", "soft",
                msg("%(label)s is usually %(range)s; found %(value)s. Confirm the value is right.",
                    label=msg(item.label), range=item.soft.describe(item.unit),
                    value=item.type.text(value)), (item.key,)))
    for check in crf.checks:
        finding = check.run(p, context)
        if finding is not None:
            findings.append(finding)
    return findings


def form_status(crf: CRF, values: dict[str, Any]) -> FormStatus:
    p = plain(values)
    for item in crf.items:
        if item.required and visible(item, p) and values.get(item.key) is None:
            return FormStatus.INCOMPLETE
    return FormStatus.COMPLETE


def _apply(item: Item, row: ItemValue, value: Any) -> None:
    for column in VALUE_COLUMNS:
        setattr(row, column, None)
    row.null_flavor = row.null_comment = None
    if isinstance(value, NullFlavor):
        row.null_flavor, row.null_comment = value.code, value.comment or None
    elif value is not None:
        stored_value = item.type.text(value) if item.type.multiple else value
        setattr(row, item.type.column, stored_value)


def save_form(actor: Actor, subject: Subject, crf_key: str, slot: Slot, submitted: Submitted, *,
              reason: Reason | None = None, row_version: int | None = None,
              token: str | None = None, confirmed: frozenset[str] | set[str] = frozenset(),
              context=None, query: Query | None = None) -> SaveResult:
    """Validate and save one form; see the module docstring for the outcomes.

    ``query``: the save corrects the form in answer to this open query; the reason for change
    names it, and the query is answered with the values changed (in the same transaction)."""
    if token:
        done = db.session.get(Submission, token)
        if done is not None:
            return SaveResult("duplicate", db.session.get(FormInstance, done.form_instance_id))
    instance = get_instance(subject, crf_key, slot)
    crf = definition_for(crf_key, instance)
    from ecrf.review.closure import refusal

    closed = refusal(subject)
    if closed is not None:  # told before anything is parsed; the flush rule holds in any case
        return SaveResult("closed", instance, errors={"_form": [tr(closed)]})
    if query is not None:
        from ecrf.review.queries import answer_refusal

        refused = answer_refusal(actor, query, instance)
        if refused is not None:
            return SaveResult("invalid", instance, errors={"_form": [tr(refused)]})
    values, errors = parse(crf, submitted, subject.site.timezone)
    if errors:
        return SaveResult("invalid", instance, errors=errors)
    context = context or CheckContext(subject, slot, crf_key)
    values = derive(crf, values, context)
    findings = run_checks(crf, values, context)
    hard = [f for f in findings if f.severity == "hard"]
    if hard:
        for f in hard:
            for key in f.items or ("_form",):
                errors.setdefault(key, []).append(f"{tr(f.message)} [{f.check_id}]")
        return SaveResult("invalid", instance, errors=errors)
    soft = [f for f in findings if f.severity == "soft"]
    old = instance_values(instance, crf)
    old_text = {i.key: value_text(i, old.get(i.key)) for i in crf.items}
    new_text = {i.key: value_text(i, values.get(i.key)) for i in crf.items}
    if instance is None and all(new_text[i.key] is None for i in crf.items if not i.derived):
        return SaveResult("invalid", None, errors={"_form": [
            _("Nothing to save: enter at least one value, or mark the form not done.")]})
    if instance is not None and row_version is not None and row_version != instance.row_version:
        return SaveResult("conflict", instance, current=old_text)
    changed = [k for k in new_text if old_text[k] is not None and new_text[k] != old_text[k]
               and not crf.item(k).derived]
    if changed and reason is None:
        return SaveResult("needs_reason", instance, warnings=soft, changed=changed)
    unconfirmed = [f for f in soft if f.check_id not in confirmed]
    if unconfirmed:
        return SaveResult("needs_confirmation", instance, warnings=unconfirmed, changed=changed)
    status = form_status(crf, values)
    if instance is not None and new_text == old_text and instance.status == status:
        return SaveResult("unchanged", instance)
    if instance is None:
        lock_subject(subject)
        done = db.session.get(Submission, token) if token else None
        if done is not None:  # the same page, submitted twice at once: the other one saved it
            return SaveResult("duplicate", db.session.get(FormInstance, done.form_instance_id))
        current = get_instance(subject, crf_key, slot)
        if current is not None:  # a single form someone else created meanwhile
            now = instance_values(current, crf)
            return SaveResult("conflict", current,
                              current={i.key: value_text(i, now.get(i.key)) for i in crf.items})
    try:
        if query is not None:
            from ecrf.review.queries import response_reason

            reason = response_reason(query, reason)
        instance = _write(actor, subject, crf, slot, instance, values, old_text, new_text, status,
                          reason, token, soft, query)
    except StaleDataError:
        db.session.rollback()
        current = get_instance(subject, crf_key, slot)
        return SaveResult("conflict", current,
                          current={i.key: value_text(i, v)
                                   for i, v in zip(crf.items, instance_values(current, crf).values(),
                                                   strict=False)})
    from ecrf.study.protocol import after_save

    after_save(subject, crf.key, instance, old_text, new_text)
    return SaveResult("saved", instance, warnings=soft, changed=changed)


def _write(actor, subject, crf, slot, instance, values, old_text, new_text, status, reason, token,
           soft, query=None) -> FormInstance:
    with unit_of_work(actor, reason) as uow:
        created = instance is None
        if created:  # inserted with its status: no second UPDATE of the new row
            form_repeat = slot.form_repeat or _next_repeat(subject, crf.key, slot)
            instance = FormInstance(subject=subject, visit_key=slot.visit_key,
                                    visit_repeat=slot.visit_repeat, crf_key=crf.key,
                                    form_repeat=form_repeat, crf_version=crf.version,
                                    status=status.value)
            db.session.add(instance)
            db.session.flush()
        rows = {} if created else {v.item_key: v for v in instance.values}
        for item in crf.items:
            if new_text[item.key] == old_text[item.key]:
                continue
            row = rows.get(item.key)
            if row is None:
                row = ItemValue(form_instance=instance, item_key=item.key)
                db.session.add(row)
            if item.derived:
                row.audit_reason = DERIVED_REASON
            _apply(item, row, values.get(item.key))
        if not created:
            instance.audit_reason = STATUS_REASON  # the status follows the data just saved
            instance.status = status.value
            instance.updated_at = utcnow()
        if token:
            db.session.add(Submission(token=token, form_instance_id=instance.id))
        for finding in soft:
            uow.record("check.confirmed", "form", instance.id, path=instance.audit_path(),
                       field=finding.check_id, new=finding.message)
        from ecrf.review.queries import after_form_saved

        after_form_saved(uow, instance, crf, soft, old_text, new_text, answering=query)
    return instance


def lock_subject(subject: Subject) -> None:
    """Creations of forms on one subject take turns until the transaction ends: two new adverse
    events at once get distinct numbers, and what the other committed meanwhile is read under
    the lock. A row lock on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises writers."""
    db.session.execute(sa.select(Subject.id).where(Subject.id == subject.id).with_for_update())


def _next_repeat(subject: Subject, crf_key: str, slot: Slot) -> int:
    last = db.session.scalar(sa.select(sa.func.max(FormInstance.form_repeat)).where(
        FormInstance.subject_id == subject.id, FormInstance.visit_key == slot.visit_key,
        FormInstance.visit_repeat == slot.visit_repeat, FormInstance.crf_key == crf_key))
    return (last or 0) + 1


def mark_not_done(actor: Actor, subject: Subject, crf_key: str, slot: Slot, reason_text: str):
    """An expected form that will not be filled: status "not done" with its reason."""
    if not reason_text.strip():
        raise ValueError(_("Say why the form is not done."))
    instance = get_instance(subject, crf_key, slot)
    crf = definition_for(crf_key, instance)
    with unit_of_work(actor, Reason("other", reason_text.strip())):
        if instance is None:
            instance = FormInstance(subject=subject, visit_key=slot.visit_key,
                                    visit_repeat=slot.visit_repeat, crf_key=crf.key,
                                    form_repeat=slot.form_repeat or 1, crf_version=crf.version)
            db.session.add(instance)
        instance.status = FormStatus.NOT_DONE.value
        instance.not_done_reason = reason_text.strip()
        instance.updated_at = utcnow()
    return instance


def local_time(value: datetime, tz: str) -> str:
    """A UTC time shown in the site's time zone with its offset."""
    local = value.astimezone(ZoneInfo(tz))
    return local.strftime("%Y-%m-%d %H:%M ") + local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:]


def now_utc() -> datetime:
    return datetime.now(UTC)
