"""Redaction (E6(R3) 4.2.2b, GDPR): mask a value entered by mistake without breaking the chain.

The hashed row keeps only a salted digest; the value and its salt are masked in ``audit_value``
(the only UPDATE its trigger allows), and the redaction is itself an audit record that names the
masked row. ``ecrf audit verify`` then reports the value as redacted, not as tampered.

When the masked value is still the item's current value, the item value row is masked too, in
the same unit of work: its value columns are emptied and ``redacted_seq`` names the redaction, so
every view and export shows the item as redacted. That change is audited like any other, and the
audit row recording it would hold the value once more as its old value: that side is masked by a
second redaction record of the same unit of work. Nothing keeps the value afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session, attributes

from ecrf.audit.capture import flush_rule
from ecrf.audit.chain import REDACTION_ACTION
from ecrf.audit.models import AuditRecord, AuditValue, ChainHead
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, AuditError, unit_of_work
from ecrf.database import utcnow
from ecrf.extensions import db
from ecrf.i18n import msg

SIDES = ("old", "new")
#: how a redacted current value shows where exports have a null flavor beside each value (the
#: API, the analysis datasets): HL7's null flavor "masked", never one a user can choose
REDACTED_FLAVOR = "MSK"


class RedactionError(ValueError):
    pass


@dataclass
class Redaction:
    """What a redaction masks: one side of an audit row, and the item's current value when it
    is still that value (None otherwise)."""

    record: AuditRecord
    side: str
    value: str
    current: object | None  # the ItemValue row masked with it

    @property
    def seq(self) -> int:
        return self.record.seq


def plan(seq: int, side: str) -> Redaction:
    """What redacting ``side`` of audit row ``seq`` would mask; RedactionError if nothing."""
    if side not in SIDES:
        raise RedactionError(msg("Redact the 'old' or the 'new' value."))
    record = db.session.get(AuditRecord, seq)
    kept = db.session.get(AuditValue, seq)
    value = getattr(kept, f"{side}_value") if kept is not None else None
    if record is None or value is None:
        raise RedactionError(msg("Audit record %(seq)s has no %(side)s value to redact.",
                                 seq=seq, side=side))
    return Redaction(record, side, value, _current_value(record, value))


def _current_value(record: AuditRecord, value: str):
    """The item value row still holding ``value`` (an item's value row, same text), or None."""
    if record.entity_type != "item" or record.field != "value" or not record.entity_id:
        return None
    from ecrf.casebook.models import ItemValue

    row = db.session.get(ItemValue, int(record.entity_id))
    if row is None or item_text(row) != value:
        return None
    return row


def item_text(row) -> str | None:
    """An item value row's text exactly as the audit trail records it."""
    from ecrf.casebook.models import VALUE_COLUMNS, ItemValue

    columns = {c: getattr(row, c) for c in (*VALUE_COLUMNS, "null_flavor", "null_comment")}
    return ItemValue.__audit__.compose(columns)["value"]


def redact_value(actor: Actor, seq: int, side: str, reason: Reason) -> Redaction:
    """Mask the old or new value of audit row ``seq`` (and the item's current value when it is
    still that value); needs a reason. Raises RedactionError, or ClosedError when the item's
    subject, site or study is frozen or locked (then nothing is masked at all)."""
    if not reason.text.strip():
        raise RedactionError(msg("A redaction needs an explanation."))
    found = plan(seq, side)
    path = {"site": found.record.site, "subject": found.record.subject,
            "visit": found.record.visit, "form": found.record.form, "item": found.record.item}
    with unit_of_work(actor, reason) as uow:
        db.session.flush()
        if found.current is None:
            uow.record(REDACTION_ACTION, "audit", seq, path=path, field=side)
            index = len(uow.events) - 1
            uow.after_append.append(lambda s, seqs: _mask(s, seq, side, seqs[index]))
        else:
            _redact_with_current(uow, found, path)
    return found


def _redact_with_current(uow, found: Redaction, path: dict) -> None:
    """Three rows: the redaction, the change of the item (the mask, recorded with its old value)
    and the redaction of that old value. Each names another's seq: under the chain lock the seqs
    this unit of work will get are known (the head's next ones, in the order of its events), and
    they are checked once appended."""
    from ecrf.audit import chain

    session = db.session
    chain.lock(session)
    session.refresh(found.current)  # a save committed before the lock was taken is seen now
    if item_text(found.current) != found.value:
        raise RedactionError(msg("The item's value changed meanwhile: look at it again."))
    head = _head_seq(session)
    first = len(uow.events)
    uow.record(REDACTION_ACTION, "audit", found.seq, path=path, field=found.side)
    _empty(found.current, head + 1 + first)
    session.flush()
    masking = _event_index(uow.events, found.current.id, first)
    uow.record(REDACTION_ACTION, "audit", head + 1 + masking, path=path, field="old")
    second = len(uow.events) - 1

    named = [head + 1 + first, head + 1 + masking, head + 1 + second]

    def mask_both(s: Session, seqs: list[int]) -> None:
        if len(seqs) <= second or [seqs[first], seqs[masking], seqs[second]] != named:
            raise AuditError("the redaction's audit rows did not get the seqs they name")
        _mask(s, found.seq, found.side, named[0])
        _mask(s, named[1], "old", named[2])

    uow.after_append.append(mask_both)


def _head_seq(session: Session) -> int:
    """The last seq of the chain (read under its lock)."""
    return session.scalar(sa.select(ChainHead.last_seq).where(ChainHead.id == 1))


def _empty(row, redaction_seq: int) -> None:
    """Mask the current value: no value, no null flavor, the redaction named. The form's row
    version moves (a page opened before cannot save the value back unseen: it is a conflict),
    and its status follows its data, as after any save (a required item masked is missing)."""
    from ecrf.casebook import services
    from ecrf.casebook.models import VALUE_COLUMNS, FormStatus

    for column in (*VALUE_COLUMNS, "null_flavor", "null_comment"):
        setattr(row, column, None)
    row.redacted_seq = redaction_seq
    instance = row.form_instance
    instance.updated_at = utcnow()
    if instance.status in (FormStatus.COMPLETE.value, FormStatus.INCOMPLETE.value):
        crf = services.definition_for(instance.crf_key, instance)
        status = services.form_status(crf, services.instance_values(instance, crf)).value
        if status != instance.status:
            instance.audit_reason = services.STATUS_REASON
            instance.status = status


def _event_index(events: list[dict], item_value_id: int, after: int) -> int:
    """The index of the event recording the change of the item's value."""
    for n in range(after, len(events)):
        ev = events[n]
        if (ev["entity_type"], ev["entity_id"], ev["field"]) == ("item", str(item_value_id),
                                                                 "value"):
            return n
    raise AuditError("masking the current value recorded no change of the item")


def _mask(session: Session, seq: int, side: str, redaction_seq: int) -> None:
    table = AuditValue.__table__
    session.execute(sa.update(table).where(table.c.seq == seq).values(
        {f"{side}_value": None, f"{side}_salt": None, "redacted_seq": redaction_seq}))


# --- a later value ------------------------------------------------------------------------------


@flush_rule(40, "redaction.clear_on_new_value")
def clear_on_new_value(session: Session, touched: list) -> None:
    """A value entered after a redaction is the item's value again: the item is no longer shown
    as redacted (its history keeps the redaction)."""
    from ecrf.casebook.models import VALUE_COLUMNS, ItemValue

    for row in touched:
        if not isinstance(row, ItemValue) or row.redacted_seq is None:
            continue
        if attributes.get_history(row, "redacted_seq").has_changes():
            continue  # the redaction itself
        if any(getattr(row, c) is not None for c in (*VALUE_COLUMNS, "null_flavor")):
            row.redacted_seq = None
