"""Role grants: who may act, as which role, on which site, and when (EU Annex 11 §12, E6 4.3.8)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ecrf.audit.models import Audited, AuditSpec
from ecrf.database import Base, UTCDateTime, utcnow


class Grant(Audited, Base):
    """A role held by a user, on one site (site-scoped roles) or study-wide, for a period.

    A grant is never deleted: removing it sets ``revoked_at``.
    """

    __tablename__ = "grant"
    __audit__ = AuditSpec("grant", exclude=frozenset({"created_at"}))

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"), index=True)
    role: Mapped[str] = mapped_column(sa.String(32))
    site_id: Mapped[int | None] = mapped_column(sa.ForeignKey("site.id"), index=True)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    valid_to: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user = relationship("User", foreign_keys=[user_id], back_populates="grants")
    site = relationship("Site")

    def is_active_at(self, when: datetime) -> bool:
        return (
            self.revoked_at is None
            and self.valid_from <= when
            and (self.valid_to is None or when < self.valid_to)
        )

    def audit_path(self):
        return {"user": self.user.username, "site": self.site.code if self.site else None}
