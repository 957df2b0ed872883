"""The delegation log of each site: who is principal investigator, who may sign (E6(R3) 2.3, 3.6).

The data manager keeps it; every line and every change is audited. A line is ended by giving it
an end date with a reason, never removed, so the log shows who held which task on any past day.
A line is active from its start date to its end date, both included, in the site's own calendar.
"""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from ecrf import database
from ecrf.access.models import Grant
from ecrf.access.roles import roles_with
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.auth.models import User
from ecrf.extensions import db
from ecrf.i18n import Message, msg
from ecrf.review.models import DELEGATION_TASK_LABELS, DelegationEntry, DelegationTask
from ecrf.study.models import Site

#: the tasks that allow signing a visit or a casebook of the site
SIGNING_TASKS = frozenset({DelegationTask.PRINCIPAL_INVESTIGATOR.value, DelegationTask.SIGN.value})


class DelegationError(ValueError):
    """A change of the log that cannot be made; the message says why (in the user's language
    through ``tr``, in English as a string)."""

    def __init__(self, message: Message):
        super().__init__(str(message))
        self.message = message


def site_today(site: Site) -> date:
    """Today in the site's time zone: the day delegation lines and visit windows are read on."""
    return database.utcnow().astimezone(ZoneInfo(site.timezone)).date()


def entries(site: Site) -> sa.Select:
    """The site's log, current lines first, then by start date (newest first)."""
    return (sa.select(DelegationEntry).where(DelegationEntry.site_id == site.id)
            .order_by(DelegationEntry.end_date.is_not(None), DelegationEntry.start_date.desc(),
                      DelegationEntry.id.desc()))


def active_lines(user: User, site_id: int, day: date) -> list[DelegationEntry]:
    """The user's lines at this site that are active on ``day``."""
    rows = db.session.scalars(sa.select(DelegationEntry).where(
        DelegationEntry.user_id == user.id, DelegationEntry.site_id == site_id,
        DelegationEntry.start_date <= day,
        sa.or_(DelegationEntry.end_date.is_(None), DelegationEntry.end_date >= day),
    ).order_by(DelegationEntry.id))
    return list(rows)


def signing_line(user: User, site: Site, day: date | None = None) -> DelegationEntry | None:
    """The active line through which the user may sign at this site (PI first), or None."""
    lines = [e for e in active_lines(user, site.id, day or site_today(site)) if e.task in SIGNING_TASKS]
    lines.sort(key=lambda e: e.task != DelegationTask.PRINCIPAL_INVESTIGATOR.value)
    return lines[0] if lines else None


def eligible_users(site: Site) -> list[User]:
    """Accounts that may be put on the site's log: active, holding a role that signs, on this
    site (or study-wide), through a grant not revoked (it may start later)."""
    return list(db.session.scalars(
        sa.select(User).join(Grant, Grant.user_id == User.id).where(
            User.is_active.is_(True), User.is_system.is_(False), Grant.revoked_at.is_(None),
            Grant.role.in_(roles_with("casebook.sign")),
            sa.or_(Grant.site_id == site.id, Grant.site_id.is_(None)),
        ).distinct().order_by(User.full_name, User.username)))


def _overlaps(start: date, end: date | None):
    """Lines whose period shares at least a day with [start, end]."""
    return sa.and_(sa.or_(DelegationEntry.end_date.is_(None), DelegationEntry.end_date >= start),
                   sa.true() if end is None else DelegationEntry.start_date <= end)


def add_entry(actor: Actor, site: Site, user: User, task: str, start_date: date,
              end_date: date | None = None) -> DelegationEntry:
    """Add a line to the site's log.

    Refused: an unknown task, an end before the start, an account that cannot sign at the site
    (inactive, or no investigator role there), a second line for the same person and task over
    the same days, and a second principal investigator over the same days (one PI per site).
    """
    if task not in {t.value for t in DelegationTask}:
        raise DelegationError(msg("Unknown task %(task)s.", task=repr(task)))
    if end_date is not None and end_date < start_date:
        raise DelegationError(msg("The end date %(end)s is before the start date %(start)s.",
                                  end=end_date.isoformat(), start=start_date.isoformat()))
    if user not in eligible_users(site):
        raise DelegationError(msg(
            "%(name)s holds no investigator role at site %(site)s: grant the role first.",
            name=user.full_name, site=site.code))
    same = db.session.scalar(sa.select(DelegationEntry).where(
        DelegationEntry.site_id == site.id, DelegationEntry.user_id == user.id,
        DelegationEntry.task == task, _overlaps(start_date, end_date)))
    if same is not None:
        raise DelegationError(msg(
            "%(name)s already has this task at site %(site)s from %(start)s: end that line first.",
            name=user.full_name, site=site.code, start=same.start_date.isoformat()))
    if task == DelegationTask.PRINCIPAL_INVESTIGATOR.value:
        pi = db.session.scalar(sa.select(DelegationEntry).where(
            DelegationEntry.site_id == site.id, DelegationEntry.task == task,
            _overlaps(start_date, end_date)))
        if pi is not None:
            raise DelegationError(msg(
                "Site %(site)s has a principal investigator over these days (%(name)s, from "
                "%(start)s): end that line first.", site=site.code, name=pi.user.full_name,
                start=pi.start_date.isoformat()))
    with unit_of_work(actor, Reason.system("delegation log line added")):
        entry = DelegationEntry(site=site, user=user, task=task, start_date=start_date,
                                end_date=end_date)
        db.session.add(entry)
    return entry


def end_entry(actor: Actor, entry: DelegationEntry, end_date: date, reason: Reason) -> DelegationEntry:
    """End a line on ``end_date``, the last day the task is held (it may be in the past: the log
    records when someone really stopped); the reason goes to the audit trail."""
    if entry.end_date is not None:
        raise DelegationError(msg("This line already ended on %(end)s.", end=entry.end_date.isoformat()))
    if end_date < entry.start_date:
        raise DelegationError(msg("The end date %(end)s is before the start date %(start)s.",
                                  end=end_date.isoformat(), start=entry.start_date.isoformat()))
    with unit_of_work(actor, reason):
        entry.end_date = end_date
    return entry


def task_label(task: str) -> str:
    return str(DELEGATION_TASK_LABELS.get(task, task))
