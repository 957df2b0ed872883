"""The periodic access review (21 CFR 11.10(d), Annex 11 §12): every account with its grants,
its last login, and whether it is dormant, locked, expired or without a second factor."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import selectinload

from ecrf.access.roles import ROLES
from ecrf.auth import second_factor
from ecrf.auth.models import User
from ecrf.database import utcnow
from ecrf.extensions import db
from ecrf.i18n import N_


@dataclass
class Row:
    user: User
    grants: list = field(default_factory=list)  # the grants in force now
    flags: list[str] = field(default_factory=list)


@dataclass
class Report:
    at: datetime
    dormant_days: int
    rows: list[Row]

    def count(self, flag: str) -> int:
        return sum(1 for r in self.rows if flag in r.flags)


#: the flags of an account (English; shown translated)
DORMANT, NEVER, LOCKED, EXPIRED, DEACTIVATED, NO_SECOND_FACTOR = (
    N_("dormant"), N_("never logged in"), N_("locked"), N_("expired"), N_("deactivated"),
    N_("no second factor (required)"))
FLAGS = (DORMANT, NEVER, LOCKED, EXPIRED, DEACTIVATED, NO_SECOND_FACTOR)


def build(now: datetime | None = None) -> Report:
    now = now or utcnow()
    days = current_app.config["DORMANT_DAYS"]
    cutoff = now - timedelta(days=days)
    required_roles = set(current_app.config["TOTP_REQUIRED_ROLES"])
    users = db.session.scalars(sa.select(User).where(User.is_system.is_(False))
                               .options(selectinload(User.grants)).order_by(User.username)).all()
    rows = []
    for user in users:
        grants = [g for g in user.grants if g.revoked_at is None and g.is_active_at(now)]
        flags = []
        if not user.is_active:
            flags.append(DEACTIVATED)
        if user.expired(now):
            flags.append(EXPIRED)
        if user.locked_at is not None:
            flags.append(LOCKED)
        if user.last_login_at is None:
            flags.append(NEVER)
            if user.created_at < cutoff:
                flags.append(DORMANT)
        elif user.last_login_at < cutoff:
            flags.append(DORMANT)
        if required_roles & {g.role for g in grants} and not second_factor.enrolled(user):
            flags.append(NO_SECOND_FACTOR)
        rows.append(Row(user, grants, flags))
    return Report(now, days, rows)


def _grant_text(grant) -> str:
    role = ROLES[grant.role].name if grant.role in ROLES else grant.role
    site = grant.site.code if grant.site else "all sites"
    until = f" until {grant.valid_to:%Y-%m-%d}" if grant.valid_to else ""
    return f"{role} ({site}{until})"


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["username", "full_name", "active", "grants", "last_login_utc",
                     "expires_utc", "second_factor", "flags"])
    for r in report.rows:
        u = r.user
        writer.writerow([u.username, u.full_name, "yes" if u.is_active else "no",
                         "; ".join(_grant_text(g) for g in r.grants),
                         f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "",
                         f"{u.expires_at:%Y-%m-%d %H:%M}" if u.expires_at else "",
                         "yes" if second_factor.enrolled(u) else "no", "; ".join(r.flags)])
    return out.getvalue()
