"""Factories for tests, all through the same audited services a request uses."""

from __future__ import annotations

import sqlalchemy as sa

from ecrf.access.services import grant_role
from ecrf.audit.models import AuditRecord
from ecrf.auth.services import create_user, system_actor
from ecrf.extensions import db
from ecrf.study.models import Site
from ecrf.study.services import activate_site, create_site, enrol_subject

PASSWORD = "Correct-Horse-Battery-9"


class Factories:
    def site(self, code: str = "01", *, activated: bool = True) -> Site:
        site = db.session.scalar(sa.select(Site).where(Site.code == code))
        if site is None:
            site = create_site(system_actor(), code, f"Test site {code}")
            if activated:
                activate_site(system_actor(), site)
        return site

    def user(self, username: str, *, role: str | None = None, site=None,
             password: str | None = PASSWORD, full_name: str | None = None, **grant_kwargs):
        user, temp = create_user(system_actor(), username=username,
                                 full_name=full_name or username.title(),
                                 email=f"{username}@example.org", password=password)
        user.temp_password = temp
        if role:
            if isinstance(site, str):
                site = self.site(site)
            grant_role(system_actor(), user, role, site, **grant_kwargs)
        return user

    def subject(self, site="01"):
        if isinstance(site, str):
            site = self.site(site)
        return enrol_subject(system_actor(), site)

    def included(self, site="01", *, seed: int = 7):
        """An enrolled subject whose D0 forms make them eligible, then included (D0 = today)."""
        import random

        from ecrf.demo import fill_screening, fill_sofa
        from ecrf.study.services import change_subject_status

        subject = self.subject(site)
        rng = random.Random(seed)
        fill_screening(system_actor(), subject, rng)
        fill_sofa(system_actor(), subject, rng, days=1, severity=0.8)
        change_subject_status(system_actor(), subject, "included")
        return subject


def audit_rows(**filters) -> list[AuditRecord]:
    stmt = sa.select(AuditRecord).order_by(AuditRecord.seq)
    for key, value in filters.items():
        stmt = stmt.where(getattr(AuditRecord, key) == value)
    return list(db.session.scalars(stmt))


def without_csrf_token(response) -> str:
    """A page without its CSRF token values: a token carries the second it was signed, so two
    otherwise identical pages may differ there."""
    import re

    return re.sub(r'name="csrf_token" value="[^"]*"', 'name="csrf_token" value=""',
                  response.get_data(as_text=True))
