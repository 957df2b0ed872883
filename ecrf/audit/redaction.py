"""Redaction (E6(R3) 4.2.2b, GDPR): mask a value entered by mistake without breaking the chain.

The hashed row keeps only a salted digest; the value and its salt are masked in ``audit_value``
(the only UPDATE its trigger allows), and the redaction is itself an audit record that names the
masked row. ``ecrf audit verify`` then reports the value as redacted, not as tampered.
"""

from __future__ import annotations

import sqlalchemy as sa

from ecrf.audit.chain import REDACTION_ACTION
from ecrf.audit.models import AuditRecord, AuditValue
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.extensions import db


class RedactionError(ValueError):
    pass


def redact_value(actor: Actor, seq: int, side: str, reason: Reason) -> None:
    """Mask the old or new value of audit row ``seq``; needs a reason."""
    if side not in ("old", "new"):
        raise RedactionError("Redact the 'old' or the 'new' value.")
    if not reason.text.strip():
        raise RedactionError("A redaction needs an explanation.")
    record = db.session.get(AuditRecord, seq)
    kept = db.session.get(AuditValue, seq)
    if record is None or kept is None or getattr(kept, f"{side}_value") is None:
        raise RedactionError(f"Audit row {seq} has no {side} value to redact.")
    table = AuditValue.__table__

    def mask(session, seqs):
        session.execute(sa.update(table).where(table.c.seq == seq).values(
            {f"{side}_value": None, f"{side}_salt": None, "redacted_seq": seqs[0]}))

    with unit_of_work(actor, reason) as uow:
        uow.record(REDACTION_ACTION, "audit", seq, path={"site": record.site,
                   "subject": record.subject, "visit": record.visit, "form": record.form,
                   "item": record.item}, field=side)
        uow.after_append.append(mask)
