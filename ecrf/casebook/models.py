"""Entered data: one form instance per (subject, visit, repeat, CRF, repeat) and one current value
row per item, with typed columns (the ODM shape; no table per CRF)."""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ecrf.audit.capture import audit_text
from ecrf.audit.models import Audited, AuditSpec
from ecrf.database import Base, UTCDateTime, utcnow


class FormStatus(enum.StrEnum):
    NOT_STARTED = "not_started"
    INCOMPLETE = "incomplete"
    COMPLETE = "complete"
    NOT_DONE = "not_done"


#: what users read for each form status, in their language (the codes are what is stored)
FORM_STATUS_LABELS = {
    FormStatus.NOT_STARTED: _l("not started"),
    FormStatus.INCOMPLETE: _l("incomplete"),
    FormStatus.COMPLETE: _l("complete"),
    FormStatus.NOT_DONE: _l("not done"),
}


class FormInstance(Audited, Base):
    __tablename__ = "form_instance"
    __audit__ = AuditSpec("form", exclude=frozenset({"created_at", "updated_at", "subject_id",
                                                    "visit_key", "visit_repeat", "crf_key",
                                                    "form_repeat"}))

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(sa.ForeignKey("subject.id"))
    visit_key: Mapped[str] = mapped_column(sa.String(32))
    #: 1 for a scheduled visit; unscheduled visits are numbered 1, 2, ...
    visit_repeat: Mapped[int] = mapped_column(sa.Integer, default=1)
    #: indexed for the lists of one CRF across subjects (serious adverse events on the study home)
    crf_key: Mapped[str] = mapped_column(sa.String(64), index=True)
    #: 1 for a single form; repeating forms (adverse events, dosing...) are numbered 1, 2, ...
    form_repeat: Mapped[int] = mapped_column(sa.Integer, default=1)
    #: the definition version the data were entered against; display and export use it
    crf_version: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16), default=FormStatus.INCOMPLETE.value)
    not_done_reason: Mapped[str | None] = mapped_column(sa.Text)
    row_version: Mapped[int] = mapped_column(sa.Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    subject = relationship("Subject")
    values: Mapped[list[ItemValue]] = relationship(back_populates="form_instance")

    __table_args__ = (
        sa.UniqueConstraint("subject_id", "visit_key", "visit_repeat", "crf_key", "form_repeat",
                            name="uq_form_instance_slot"),
        sa.CheckConstraint("status IN ('not_started','incomplete','complete','not_done')",
                           name="status_known"),
    )
    __mapper_args__ = {"version_id_col": row_version}
    #: data: no change once the subject, its site or the study is frozen or locked
    __closure__ = "data"

    def closure_scope(self) -> tuple[int, int]:
        return self.subject.closure_scope()

    @property
    def visit_label(self) -> str:
        return self.visit_key if self.visit_repeat == 1 else f"{self.visit_key}#{self.visit_repeat}"

    @property
    def form_label(self) -> str:
        return self.crf_key if self.form_repeat == 1 else f"{self.crf_key}#{self.form_repeat}"

    def audit_path(self):
        return {"site": self.subject.site.code, "subject": self.subject.code,
                "visit": self.visit_label, "form": self.form_label}


VALUE_COLUMNS = ("value_text", "value_int", "value_dec", "value_date", "value_dt")


def _compose_value(columns: dict) -> dict[str, str | None]:
    """An item's typed columns and null flavor make one audited "value"."""
    if columns.get("null_flavor"):
        comment = columns.get("null_comment")
        text = f"[{columns['null_flavor']}]" + (f" {comment}" if comment else "")
    else:
        text = next((audit_text(columns[c]) for c in VALUE_COLUMNS if columns.get(c) is not None),
                    None)
    return {"value": text}


class ItemValue(Audited, Base):
    __tablename__ = "item_value"
    __audit__ = AuditSpec("item", compose=_compose_value)

    id: Mapped[int] = mapped_column(primary_key=True)
    form_instance_id: Mapped[int] = mapped_column(sa.ForeignKey("form_instance.id"))
    item_key: Mapped[str] = mapped_column(sa.String(64))
    value_text: Mapped[str | None] = mapped_column(sa.Text)
    value_int: Mapped[int | None] = mapped_column(sa.BigInteger)
    value_dec: Mapped[Decimal | None] = mapped_column(sa.Numeric(24, 8, asdecimal=True))
    value_date: Mapped[date | None] = mapped_column(sa.Date)
    value_dt: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: NI / UNK / NA / ASKU instead of a value, with an optional comment
    null_flavor: Mapped[str | None] = mapped_column(sa.String(4))
    null_comment: Mapped[str | None] = mapped_column(sa.String(500))
    #: set when a data manager redacted the value (emptied above): the seq of the audit record of
    #: that redaction; views and exports show the item as redacted until a new value is entered
    redacted_seq: Mapped[int | None] = mapped_column(sa.BigInteger)

    form_instance: Mapped[FormInstance] = relationship(back_populates="values")
    __closure__ = "data"

    __table_args__ = (
        sa.UniqueConstraint("form_instance_id", "item_key", name="uq_item_value_item"),
        sa.CheckConstraint("null_flavor IS NULL OR null_flavor IN ('NI','UNK','NA','ASKU')",
                           name="null_flavor_known"),
    )

    def audit_path(self):
        return {**self.form_instance.audit_path(), "item": self.item_key}

    def closure_scope(self) -> tuple[int, int]:
        return self.form_instance.closure_scope()


class Submission(Base):
    """One-time token of a form submission: a retried or double-clicked POST saves once."""

    __tablename__ = "submission"

    token: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    form_instance_id: Mapped[int] = mapped_column(sa.ForeignKey("form_instance.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
