"""What a user may do now: their active grants, and which grant allows an action on a site."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from ecrf.access.models import Grant
from ecrf.access.roles import ROLES
from ecrf.audit.unit_of_work import Actor
from ecrf.database import utcnow
from ecrf.extensions import db


def active_grants(user, when: datetime | None = None) -> list[Grant]:
    when = when or utcnow()
    if not user.is_active or user.is_system or user.expired(when):
        return []
    grants = db.session.scalars(
        sa.select(Grant).where(Grant.user_id == user.id, Grant.revoked_at.is_(None))
        .order_by(Grant.id)
    ).all()
    return [g for g in grants if g.is_active_at(when)]


@dataclass
class Access:
    """The grants through which a user holds one permission right now."""

    user: object
    permission: str
    grants: list[Grant]

    @classmethod
    def for_user(cls, user, permission: str) -> Access:
        grants = [g for g in active_grants(user) if permission in ROLES[g.role].permissions]
        return cls(user, permission, grants)

    def __bool__(self) -> bool:
        return bool(self.grants)

    @property
    def study_wide(self) -> bool:
        return any(g.site_id is None for g in self.grants)

    def site_ids(self) -> set[int] | None:
        """Sites this permission covers; None means every site."""
        if self.study_wide:
            return None
        return {g.site_id for g in self.grants}

    def grant_for(self, site_id: int | None) -> Grant | None:
        """The grant that allows the action on this site (study-wide grants cover all)."""
        for g in self.grants:
            if g.site_id is None or g.site_id == site_id:
                return g
        return None

    def covers(self, site_id: int | None) -> bool:
        return self.grant_for(site_id) is not None

    def actor(self, site_id: int | None = None) -> Actor:
        grant = self.grant_for(site_id)
        if grant is None:
            raise PermissionError(f"{self.permission} not granted on this site")
        return Actor.of(self.user, grant)
