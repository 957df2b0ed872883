"""Sites and pseudonymous subjects. No names or direct identifiers are stored (GDPR)."""

from __future__ import annotations

import enum
from datetime import date, datetime

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ecrf.audit.models import Audited, AuditSpec
from ecrf.database import Base, UTCDateTime, utcnow


class Site(Audited, Base):
    __tablename__ = "site"
    __audit__ = AuditSpec("site", exclude=frozenset({"created_at"}))

    id: Mapped[int] = mapped_column(primary_key=True)
    #: two-digit code that prefixes subject codes, e.g. "01"
    code: Mapped[str] = mapped_column(sa.String(8), unique=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    timezone: Mapped[str] = mapped_column(sa.String(64), default="Europe/Paris")
    #: a site enrols only once activated
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def is_active_at(self, when: datetime) -> bool:
        return self.activated_at is not None and self.activated_at <= when

    def audit_path(self):
        return {"site": self.code}


class SubjectCounter(Base):
    """Last subject number per site; its row lock makes code allocation race-free."""

    __tablename__ = "subject_counter"

    site_id: Mapped[int] = mapped_column(sa.ForeignKey("site.id"), primary_key=True)
    last_number: Mapped[int] = mapped_column(sa.Integer, default=0)


class SubjectStatus(enum.StrEnum):
    SCREENING = "screening"
    INCLUDED = "included"
    SCREEN_FAILURE = "screen_failure"
    COMPLETED = "completed"
    WITHDRAWN = "withdrawn"
    REMOVED = "removed"


#: what users read for each status, in their language (the codes are what is stored)
SUBJECT_STATUS_LABELS = {
    SubjectStatus.SCREENING: _l("screening"),
    SubjectStatus.INCLUDED: _l("included"),
    SubjectStatus.SCREEN_FAILURE: _l("screen failure"),
    SubjectStatus.COMPLETED: _l("completed"),
    SubjectStatus.WITHDRAWN: _l("withdrawn"),
    SubjectStatus.REMOVED: _l("removed"),
}


def status_label(code: str) -> str:
    """A subject status as users read it (an unknown code as it is)."""
    return str(SUBJECT_STATUS_LABELS.get(code, code))


class Subject(Audited, Base):
    __tablename__ = "subject"
    __audit__ = AuditSpec("subject", exclude=frozenset({"created_at", "number"}))

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(sa.ForeignKey("site.id"), index=True)
    number: Mapped[int] = mapped_column(sa.Integer)
    #: pseudonymous code "<site code>-<NNN>", never reused
    code: Mapped[str] = mapped_column(sa.String(16), unique=True)
    status: Mapped[str] = mapped_column(sa.String(16), default=SubjectStatus.SCREENING.value)
    status_reason: Mapped[str | None] = mapped_column(sa.Text)
    #: D0 of the visit schedule: the date of inclusion, in the site's time zone
    inclusion_date: Mapped[date | None] = mapped_column(sa.Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    row_version: Mapped[int] = mapped_column(sa.Integer, default=1)

    site: Mapped[Site] = relationship()

    __table_args__ = (
        sa.UniqueConstraint("site_id", "number", name="uq_subject_site_number"),
        sa.CheckConstraint(
            "status IN ('screening','included','screen_failure','completed','withdrawn','removed')",
            name="status_known",
        ),
    )
    __mapper_args__ = {"version_id_col": row_version}
    __closure__ = "data"

    def closure_scope(self) -> tuple[int, int | None]:
        return self.site_id if self.site_id is not None else self.site.id, self.id

    def audit_path(self):
        return {"site": self.site.code, "subject": self.code}


class ScreeningEntry(Audited, Base):
    """One patient screened at a site, enrolled or not: age, sex, date and why not included.

    No name, initials or birth date: the log feeds the flow diagram, not the casebook.
    """

    __tablename__ = "screening_entry"
    __audit__ = AuditSpec("screening", exclude=frozenset({"created_at"}))

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(sa.ForeignKey("site.id"), index=True)
    screened_on: Mapped[date] = mapped_column(sa.Date)
    age: Mapped[int] = mapped_column(sa.Integer)
    sex: Mapped[str] = mapped_column(sa.String(1))
    #: the subject the patient became, when enrolled
    subject_id: Mapped[int | None] = mapped_column(sa.ForeignKey("subject.id"), unique=True)
    reason_not_included: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    site: Mapped[Site] = relationship()
    subject: Mapped[Subject | None] = relationship()

    __table_args__ = (
        sa.CheckConstraint("sex IN ('M','F')", name="sex_known"),
        sa.CheckConstraint("age BETWEEN 0 AND 120", name="age_plausible"),
        sa.CheckConstraint("(subject_id IS NULL) <> (reason_not_included IS NULL)",
                           name="enrolled_or_reason"),
    )

    __closure__ = "data"

    def closure_scope(self) -> tuple[int, int | None]:
        return (self.site_id if self.site_id is not None else self.site.id,
                self.subject.id if self.subject is not None else None)

    def audit_path(self):
        return {"site": self.site.code, "subject": self.subject.code if self.subject else None}
