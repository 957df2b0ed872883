"""The audit trail tables (21 CFR 11.10(e), EU Annex 11 §9, EMA guideline §6.2).

``audit_trail`` holds one row per changed value or action, hash-chained and append-only (triggers
reject UPDATE, DELETE and TRUNCATE). The values themselves live in ``audit_value`` beside it: the
hashed row carries only a salted digest of each value, so a later audited redaction can mask a
value without touching the chain.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ecrf.database import Base, UTCDateTime


class AuditSpec:
    """How a model is audited: its entity name and the columns that are not recorded.

    ``secret`` columns (a password hash) are recorded as changed, never with their value.
    """

    def __init__(self, entity: str, *, exclude: frozenset[str] = frozenset(),
                 secret: frozenset[str] = frozenset(), compose=None):
        self.entity = entity
        self.exclude = frozenset(exclude) | {"id", "row_version"}
        self.secret = frozenset(secret)
        #: optional: column values -> {field: text}, when several columns make one audited value
        #: (an item's typed value columns and its null flavor make one "value")
        self.compose = compose


class Audited:
    """Mixin for every table whose changes must enter the audit trail.

    A flush that touches such a table outside the unit of work raises; deleting a row raises.
    Subclasses set ``__audit__`` and implement ``audit_path``.
    """

    __audit__: ClassVar[AuditSpec]

    #: a reason that applies to this object's change instead of the unit of work's (set by a
    #: service, e.g. "derived value recalculated"); never stored
    audit_reason = None

    def audit_path(self) -> dict[str, str | None]:
        """Key path of this row: site, subject, visit, form, item (whatever applies)."""
        return {}


class AuditRecord(Base):
    __tablename__ = "audit_trail"

    #: gap-free, strictly increasing, assigned under the chain lock
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    #: database clock, UTC with zone, read under the chain lock
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: version of the canonical serialisation used for row_hash
    format_version: Mapped[int] = mapped_column(sa.SmallInteger)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"), index=True)
    username: Mapped[str] = mapped_column(sa.String(64))
    #: role and site of the grant that allowed the action, at that moment
    role: Mapped[str | None] = mapped_column(sa.String(32))
    actor_site: Mapped[str | None] = mapped_column(sa.String(8))
    grant_id: Mapped[int | None] = mapped_column(sa.Integer)
    action: Mapped[str] = mapped_column(sa.String(48), index=True)
    entity_type: Mapped[str] = mapped_column(sa.String(32))
    entity_id: Mapped[str | None] = mapped_column(sa.String(64))
    site: Mapped[str | None] = mapped_column(sa.String(8), index=True)
    subject: Mapped[str | None] = mapped_column(sa.String(16))
    visit: Mapped[str | None] = mapped_column(sa.String(32))
    form: Mapped[str | None] = mapped_column(sa.String(64))
    item: Mapped[str | None] = mapped_column(sa.String(64))
    field: Mapped[str | None] = mapped_column(sa.String(64))
    old_digest: Mapped[str | None] = mapped_column(sa.String(64))
    new_digest: Mapped[str | None] = mapped_column(sa.String(64))
    reason_code: Mapped[str | None] = mapped_column(sa.String(32))
    reason_text: Mapped[str | None] = mapped_column(sa.Text)
    request_id: Mapped[str | None] = mapped_column(sa.String(36))
    client: Mapped[str | None] = mapped_column(sa.String(64))
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    row_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)

    value: Mapped[AuditValue | None] = relationship(
        primaryjoin="AuditRecord.seq == AuditValue.seq", foreign_keys="AuditValue.seq",
        uselist=False, viewonly=True, lazy="joined",
    )

    __table_args__ = (
        sa.Index("ix_audit_trail_entity", "entity_type", "entity_id", "seq"),
        sa.Index("ix_audit_trail_item", "subject", "form", "item", "seq"),
        #: a subject's rows after a given seq (changes since a signature), and the subject filter
        sa.Index("ix_audit_trail_subject", "subject", "seq"),
        #: the audit viewer's user filter, newest first
        sa.Index("ix_audit_trail_username", "username", "seq"),
    )


class AuditValue(Base):
    """The values behind a row's digests; only a masking UPDATE (redaction) is allowed."""

    __tablename__ = "audit_value"

    seq: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("audit_trail.seq"), primary_key=True, autoincrement=False
    )
    old_salt: Mapped[str | None] = mapped_column(sa.String(32))
    old_value: Mapped[str | None] = mapped_column(sa.Text)
    new_salt: Mapped[str | None] = mapped_column(sa.String(32))
    new_value: Mapped[str | None] = mapped_column(sa.Text)
    #: seq of the audit record of the redaction that masked a value here
    redacted_seq: Mapped[int | None] = mapped_column(sa.BigInteger)


class ChainHead(Base):
    """One row: the last seq and hash. Its row lock serialises appends across app servers."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(sa.BigInteger)
    last_hash: Mapped[str] = mapped_column(sa.String(64))
    last_recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.CheckConstraint("id = 1", name="single_row"),)
