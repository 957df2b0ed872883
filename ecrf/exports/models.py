"""Exports, their files and their progress; audit reviews; API tokens.

``ExportJob`` is operational state (queued, running, progress, done): its progress is updated
often and is not clinical data, so the table is not audited row by row; instead the request and
the finished file (with its SHA-256) are explicit audit records (``export.requested``,
``export.done``). ``AuditReview`` and ``ApiToken`` are audited.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ecrf.audit.models import Audited, AuditSpec
from ecrf.database import Base, UTCDateTime, utcnow

EXPORT_KINDS = ("odm_snapshot", "odm_transactional", "datasets", "pdf", "audit_jsonl",
                "audit_csv")
EXPORT_STATES = ("queued", "running", "done", "failed")


class ExportJob(Base):
    """One export asked for: what, which scope, by whom; its progress, file and digest."""

    __tablename__ = "export_job"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(24))
    #: None: the whole study; otherwise a site code or a subject code
    site_code: Mapped[str | None] = mapped_column(sa.String(8), index=True)
    subject_code: Mapped[str | None] = mapped_column(sa.String(16))
    #: filters of an audit export (JSON text), None otherwise
    options: Mapped[str | None] = mapped_column(sa.Text)
    requested_by_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"), index=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[str] = mapped_column(sa.String(8), default="queued", index=True)
    #: 0-100
    progress: Mapped[int] = mapped_column(sa.Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the file, relative to the exports folder of the instance
    file_name: Mapped[str | None] = mapped_column(sa.String(255))
    size: Mapped[int | None] = mapped_column(sa.BigInteger)
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    error: Mapped[str | None] = mapped_column(sa.Text)

    requested_by = relationship("User")

    __table_args__ = (
        sa.CheckConstraint("kind IN ('odm_snapshot','odm_transactional','datasets','pdf',"
                           "'audit_jsonl','audit_csv')", name="kind_known"),
        sa.CheckConstraint("state IN ('queued','running','done','failed')", name="state_known"),
        sa.CheckConstraint("progress BETWEEN 0 AND 100", name="progress_range"),
    )


class AuditReview(Audited, Base):
    """A data manager's review of a flagged audit record (EMA-6): who, when, with what comment."""

    __tablename__ = "audit_review"
    __audit__ = AuditSpec("audit_review", exclude=frozenset({"reviewed_at"}))

    id: Mapped[int] = mapped_column(primary_key=True)
    #: the audit record reviewed
    seq: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    #: why it was flagged: late_entry, changed_after_sdv, changed_after_signature, many_changes,
    #: out_of_hours
    flag: Mapped[str] = mapped_column(sa.String(32))
    reviewer_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"))
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    comment: Mapped[str] = mapped_column(sa.Text)

    reviewer = relationship("User")

    __table_args__ = (sa.UniqueConstraint("seq", "flag", name="uq_audit_review_seq_flag"),)

    def audit_path(self):
        return {}


class ApiToken(Audited, Base):
    """A user's token for the read-only API: only its SHA-256 is stored; it expires and can be
    revoked; the API acts with the user's own grants."""

    __tablename__ = "api_token"
    __audit__ = AuditSpec("api_token", exclude=frozenset({"created_at", "last_used_at"}),
                          secret=frozenset({"token_hash"}))

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    row_version: Mapped[int] = mapped_column(sa.Integer, default=1)

    user = relationship("User")

    __mapper_args__ = {"version_id_col": row_version}

    def audit_path(self):
        return {}
