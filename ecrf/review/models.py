"""Tables of the review: queries and their messages, item verifications and the SDV plan, the
delegation log and signatures, and the freeze/lock state of the study, its sites and subjects.

Every table is audited; none is ever deleted from. Review rows (queries, verifications,
signatures) may change while the data are frozen, never once they are locked (``closure.py``).
"""

from __future__ import annotations

import enum
from datetime import date, datetime

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ecrf.audit.models import Audited, AuditSpec
from ecrf.database import Base, UTCDateTime, utcnow

# --- queries -----------------------------------------------------------------------------------


class QueryState(enum.StrEnum):
    OPEN = "open"
    ANSWERED = "answered"
    CLOSED = "closed"
    CANCELLED = "cancelled"


QUERY_STATE_LABELS = {
    QueryState.OPEN: _l("open"),
    QueryState.ANSWERED: _l("answered"),
    QueryState.CLOSED: _l("closed"),
    QueryState.CANCELLED: _l("cancelled"),
}


class Query(Audited, Base):
    """A question on an item (or a whole form) of a casebook, raised by a person or by an edit check."""

    __tablename__ = "data_query"
    __audit__ = AuditSpec("query", exclude=frozenset({"created_at", "updated_at", "subject_id",
                                                     "form_instance_id", "item_key"}))
    __closure__ = "review"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(sa.ForeignKey("subject.id"), index=True)
    form_instance_id: Mapped[int] = mapped_column(sa.ForeignKey("form_instance.id"), index=True)
    #: None: the query is on the whole form
    item_key: Mapped[str | None] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(16), default=QueryState.OPEN.value, index=True)
    #: "manual" (a monitor or data manager) or "system" (a soft edit check that fired)
    origin: Mapped[str] = mapped_column(sa.String(8), default="manual")
    check_id: Mapped[str | None] = mapped_column(sa.String(64))
    raised_by_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    row_version: Mapped[int] = mapped_column(sa.Integer, default=1)

    subject = relationship("Subject")
    form_instance = relationship("FormInstance")
    raised_by = relationship("User")
    messages: Mapped[list[QueryMessage]] = relationship(back_populates="query",
                                                        order_by="QueryMessage.id")

    __table_args__ = (
        sa.CheckConstraint("state IN ('open','answered','closed','cancelled')", name="state_known"),
        sa.CheckConstraint("origin IN ('manual','system')", name="origin_known"),
    )
    __mapper_args__ = {"version_id_col": row_version}

    def audit_path(self):
        return {**self.form_instance.audit_path(), "item": self.item_key}

    def closure_scope(self) -> tuple[int, int]:
        return (self.subject or self.form_instance.subject).closure_scope()


class QueryMessage(Audited, Base):
    """One step of a query's conversation: raised, answered, closed, cancelled, re-opened."""

    __tablename__ = "query_message"
    __audit__ = AuditSpec("query_message", exclude=frozenset({"created_at", "query_id"}))
    __closure__ = "review"

    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int] = mapped_column(sa.ForeignKey("data_query.id"), index=True)
    #: raise, answer, close, cancel, reopen, auto_close
    action: Mapped[str] = mapped_column(sa.String(16))
    text: Mapped[str] = mapped_column(sa.Text)
    author_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    query: Mapped[Query] = relationship(back_populates="messages")
    author = relationship("User")

    __table_args__ = (
        sa.CheckConstraint("action IN ('raise','answer','close','cancel','reopen','auto_close')",
                           name="action_known"),
    )

    def audit_path(self):
        return self.query.audit_path()

    def closure_scope(self) -> tuple[int, int]:
        return self.query.closure_scope()


# --- source data verification ------------------------------------------------------------------


class ItemVerification(Audited, Base):
    """Whether the current value of one item was checked against the source, by whom and when."""

    __tablename__ = "item_verification"
    __audit__ = AuditSpec("sdv", exclude=frozenset({"item_value_id"}))
    __closure__ = "review"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_value_id: Mapped[int] = mapped_column(sa.ForeignKey("item_value.id"), unique=True)
    verified: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    verified_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("user.id"))
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    row_version: Mapped[int] = mapped_column(sa.Integer, default=1)

    item_value = relationship("ItemValue")
    verified_by = relationship("User")

    __mapper_args__ = {"version_id_col": row_version}

    def audit_path(self):
        return self.item_value.audit_path()

    def closure_scope(self) -> tuple[int, int]:
        subject = self.item_value.form_instance.subject
        return subject.site_id, subject.id


class SdvPlan(Audited, Base):
    """The data manager's plan for items not flagged critical: all, a share of subjects, or none.
    One row (id 1); critical items are verified for every subject whatever the plan."""

    __tablename__ = "sdv_plan"
    __audit__ = AuditSpec("sdv_plan", exclude=frozenset({"updated_at"}))

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    mode: Mapped[str] = mapped_column(sa.String(16), default="all")
    percentage: Mapped[int | None] = mapped_column(sa.Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.CheckConstraint("mode IN ('all','percentage','none')", name="mode_known"),
        sa.CheckConstraint("(mode = 'percentage') = (percentage IS NOT NULL)",
                           name="percentage_with_mode"),
        sa.CheckConstraint("percentage IS NULL OR percentage BETWEEN 1 AND 99",
                           name="percentage_range"),
    )

    def audit_path(self):
        return {}


# --- delegation log and signatures -------------------------------------------------------------


class DelegationTask(enum.StrEnum):
    PRINCIPAL_INVESTIGATOR = "pi"
    SIGN = "sign"


DELEGATION_TASK_LABELS = {
    DelegationTask.PRINCIPAL_INVESTIGATOR: _l("Principal investigator"),
    DelegationTask.SIGN: _l("Sign casebooks (sub-investigator)"),
}


class DelegationEntry(Audited, Base):
    """A line of a site's delegation log: who may do which task there, from when to when.
    Kept by the data manager; a line is ended (end date), never removed."""

    __tablename__ = "delegation_entry"
    __audit__ = AuditSpec("delegation", exclude=frozenset({"created_at"}))

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(sa.ForeignKey("site.id"), index=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"), index=True)
    task: Mapped[str] = mapped_column(sa.String(16))
    start_date: Mapped[date] = mapped_column(sa.Date)
    end_date: Mapped[date | None] = mapped_column(sa.Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    row_version: Mapped[int] = mapped_column(sa.Integer, default=1)

    site = relationship("Site")
    user = relationship("User")

    __table_args__ = (
        sa.CheckConstraint("task IN ('pi','sign')", name="task_known"),
        sa.CheckConstraint("end_date IS NULL OR end_date >= start_date", name="ends_after_start"),
    )
    __mapper_args__ = {"version_id_col": row_version}

    def is_active_on(self, day: date) -> bool:
        return self.start_date <= day and (self.end_date is None or day <= self.end_date)

    def audit_path(self):
        return {"site": self.site.code}


class SignatureMeaning(enum.StrEnum):
    APPROVAL = "approval"


#: the attestation a signer reads and signs; the English text is what the signature stores
SIGNATURE_MEANINGS = {
    SignatureMeaning.APPROVAL: (
        "I approve the data in this casebook as complete and accurate, and I attest that I "
        "reviewed them."),
}


class Signature(Audited, Base):
    """An electronic signature of a visit or a whole casebook (21 CFR 11.50, 11.70).

    Bound to the SHA-256 of the exact content it covers: when that content changes the signature
    shows as broken. Never updated: signing again is a new row and the old one stays.
    """

    __tablename__ = "signature"
    __audit__ = AuditSpec("signature", exclude=frozenset({"subject_id"}))
    __closure__ = "review"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(sa.ForeignKey("subject.id"), index=True)
    #: None: the whole casebook; otherwise the visit signed
    visit_key: Mapped[str | None] = mapped_column(sa.String(32))
    visit_repeat: Mapped[int | None] = mapped_column(sa.Integer)
    signer_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"))
    #: the printed name of the signer as it was at signing
    signer_name: Mapped[str] = mapped_column(sa.String(128))
    meaning: Mapped[str] = mapped_column(sa.String(16))
    meaning_text: Mapped[str] = mapped_column(sa.Text)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    content_hash: Mapped[str] = mapped_column(sa.String(64))

    subject = relationship("Subject")
    signer = relationship("User")

    __table_args__ = (
        sa.CheckConstraint("(visit_key IS NULL) = (visit_repeat IS NULL)", name="visit_whole"),
    )

    def audit_path(self):
        visit = None
        if self.visit_key is not None:
            visit = self.visit_key if self.visit_repeat == 1 else f"{self.visit_key}#{self.visit_repeat}"
        return {"site": self.subject.site.code, "subject": self.subject.code, "visit": visit}

    def closure_scope(self) -> tuple[int, int]:
        return self.subject.closure_scope()


# --- freeze and lock ---------------------------------------------------------------------------


class ClosureState(Audited, Base):
    """Whether the study, a site or a subject is frozen (no data change) or locked (no change at
    all). The two flags are independent; a write is refused when any level above it says so."""

    __tablename__ = "closure_state"
    __audit__ = AuditSpec("closure", exclude=frozenset({"scope", "site_id", "subject_id",
                                                       "updated_at"}))

    id: Mapped[int] = mapped_column(primary_key=True)
    #: "study", "site:<id>" or "subject:<id>": one row per scope
    scope: Mapped[str] = mapped_column(sa.String(32), unique=True)
    level: Mapped[str] = mapped_column(sa.String(8))
    site_id: Mapped[int | None] = mapped_column(sa.ForeignKey("site.id"), index=True)
    subject_id: Mapped[int | None] = mapped_column(sa.ForeignKey("subject.id"), index=True)
    frozen: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    locked: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    row_version: Mapped[int] = mapped_column(sa.Integer, default=1)

    site = relationship("Site")
    subject = relationship("Subject")

    __table_args__ = (
        sa.CheckConstraint("level IN ('study','site','subject')", name="level_known"),
    )
    __mapper_args__ = {"version_id_col": row_version}

    def audit_path(self):
        if self.subject is not None:
            return {"site": self.subject.site.code, "subject": self.subject.code}
        if self.site is not None:
            return {"site": self.site.code}
        return {}


class SdvCount(Base):
    """Per subject, the verifiable values and how many are verified (all items, and the critical
    ones), kept current in the transaction of every change (``ecrf.review.sdv``) so the backlog
    of a large study is read, not recounted. Derived from audited rows, so not audited itself."""

    __tablename__ = "sdv_count"

    subject_id: Mapped[int] = mapped_column(sa.ForeignKey("subject.id"), primary_key=True)
    values_n: Mapped[int] = mapped_column(sa.Integer, default=0)
    verified_n: Mapped[int] = mapped_column(sa.Integer, default=0)
    critical_n: Mapped[int] = mapped_column(sa.Integer, default=0)
    critical_verified_n: Mapped[int] = mapped_column(sa.Integer, default=0)


class SummaryState(Base):
    """Which kept summaries (e.g. ``sdv_count``) have been filled for the whole study once."""

    __tablename__ = "summary_state"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    filled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
