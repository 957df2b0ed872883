"""Freeze and lock of the study, a site or a subject, enforced on every write.

Frozen: no data change (forms, item values, subjects, the screening log), while queries, SDV and
signing go on. Locked: nothing changes, review included. The two are independent flags per scope
and a write is refused when any scope above it (study > site > subject) says so; unlocking or
unfreezing one scope therefore never depends on the state of another (the lock holes other systems
had: a form not started yet, a derived value, a removed event).

The check is a flush rule (``ecrf.audit.capture.flush_rule``): every audited write of the web, the
CLI, loaders and derived recalculations flushes through it, so no path escapes. Services and views
also ask ``refusal()`` beforehand, to tell the user before they type, but the rule is what holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ecrf.audit.capture import flush_rule
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, AuditError, unit_of_work
from ecrf.database import utcnow
from ecrf.extensions import db
from ecrf.i18n import Message, msg
from ecrf.review.models import ClosureState
from ecrf.study.models import Site, Subject

#: the kinds of write: data (CRF values, subjects) and review (queries, SDV, signatures)
DATA, REVIEW = "data", "review"


class ClosedError(AuditError):
    """A write refused because the study, a site or a subject is frozen or locked."""

    def __init__(self, message: Message):
        super().__init__(str(message))
        self.message = message


@dataclass(frozen=True)
class Scope:
    """The study (no site, no subject), a site, or a subject."""

    level: str
    site: Site | None = None
    subject: Subject | None = None

    @classmethod
    def study(cls) -> Scope:
        return cls("study")

    @classmethod
    def of_site(cls, site: Site) -> Scope:
        return cls("site", site=site)

    @classmethod
    def of_subject(cls, subject: Subject) -> Scope:
        return cls("subject", site=subject.site, subject=subject)

    @property
    def key(self) -> str:
        if self.level == "study":
            return "study"
        return f"{self.level}:{self.subject.id if self.subject is not None else self.site.id}"

    def describe(self) -> Message:
        if self.level == "study":
            return msg("The study")
        if self.level == "site":
            return msg("Site %(code)s", code=self.site.code)
        return msg("Subject %(code)s", code=self.subject.code)


def state_of(scope: Scope) -> ClosureState | None:
    return db.session.scalar(sa.select(ClosureState).where(ClosureState.scope == scope.key))


def _states(site_ids: set[int], subject_ids: set[int], session=None) -> list[ClosureState]:
    """The frozen or locked states that apply to these sites and subjects (and the study)."""
    where = [ClosureState.level == "study"]
    if site_ids:
        where.append(sa.and_(ClosureState.level == "site", ClosureState.site_id.in_(site_ids)))
    if subject_ids:
        where.append(sa.and_(ClosureState.level == "subject",
                             ClosureState.subject_id.in_(subject_ids)))
    return list((session or db.session).scalars(sa.select(ClosureState).where(
        sa.or_(*where), sa.or_(ClosureState.frozen, ClosureState.locked))))


def _refusal(states: list[ClosureState], kind: str, site_id: int,
             subject_id: int | None) -> Message | None:
    order = {"study": 0, "site": 1, "subject": 2}
    for state in sorted(states, key=lambda s: order[s.level]):
        applies = (state.level == "study" or (state.level == "site" and state.site_id == site_id)
                   or (state.level == "subject" and subject_id is not None
                       and state.subject_id == subject_id))
        if not applies:
            continue
        where = _where(state)
        if state.locked:
            return msg("%(where)s is locked: nothing can change.", where=where)
        if state.frozen and kind == DATA:
            return msg("%(where)s is frozen: data cannot change (queries, SDV and signatures "
                       "go on).", where=where)
    return None


def _where(state: ClosureState) -> Message:
    if state.level == "study":
        return msg("The study")
    if state.level == "site":
        return msg("Site %(code)s", code=state.site.code)
    return msg("Subject %(code)s", code=state.subject.code)


def refusal(subject: Subject | None, kind: str = DATA, site: Site | None = None) -> Message | None:
    """Why a write of this kind on this subject (or site) would be refused now; None if allowed."""
    site_id = subject.site_id if subject is not None else site.id
    subject_id = subject.id if subject is not None else None
    return _refusal(_states({site_id}, {subject_id} if subject_id else set()), kind, site_id,
                    subject_id)


@flush_rule(100, "closure.freeze_and_lock")
def enforce(session: Session, touched: list) -> None:
    """Refuse the flush if any object written belongs to a frozen or locked scope."""
    guarded = [(o, o.__closure__) for o in touched if getattr(o, "__closure__", None)]
    if not guarded:
        return
    scoped = [(o, kind, *o.closure_scope()) for o, kind in guarded]
    states = _states({s for _o, _k, s, _j in scoped if s is not None},
                     {j for _o, _k, _s, j in scoped if j is not None}, session)
    if not states:
        return
    for _obj, kind, site_id, subject_id in scoped:
        message = _refusal(states, kind, site_id, subject_id)
        if message is not None:
            raise ClosedError(message)


# --- changing the state ------------------------------------------------------------------------

#: action -> (flag, new value, reason required)
ACTIONS = {
    "freeze": ("frozen", True, False),
    "unfreeze": ("frozen", False, True),
    "lock": ("locked", True, False),
    "unlock": ("locked", False, True),
}


class ClosureChangeError(ValueError):
    """A freeze/lock action that makes no sense (already frozen, unlock without a reason...)."""


def change(actor: Actor, scope: Scope, action: str, reason: Reason | None = None) -> ClosureState:
    """Freeze, unfreeze, lock or unlock one scope; the change is an audit record with its reason."""
    flag, value, needs_reason = ACTIONS[action]
    if needs_reason and (reason is None or not (reason.text or "").strip()):
        raise ClosureChangeError(msg("Say why: unfreezing or unlocking needs a reason."))
    state = state_of(scope)
    current = bool(getattr(state, flag)) if state is not None else False
    if current == value:
        where = scope.describe()
        raise ClosureChangeError({
            "freeze": lambda: msg("%(scope)s is already frozen.", scope=where),
            "unfreeze": lambda: msg("%(scope)s is not frozen.", scope=where),
            "lock": lambda: msg("%(scope)s is already locked.", scope=where),
            "unlock": lambda: msg("%(scope)s is not locked.", scope=where)}[action]())
    with unit_of_work(actor, reason or Reason("administrative", action)) as uow:
        if state is None:
            state = ClosureState(scope=scope.key, level=scope.level,
                                 site_id=scope.site.id if scope.level == "site" else None,
                                 subject_id=scope.subject.id if scope.subject is not None else None)
            db.session.add(state)
        setattr(state, flag, value)
        state.updated_at = utcnow()
        uow.record(f"closure.{action}", "closure", None,
                   path=_path(scope), field=flag, new=scope.key)
    return state


def _path(scope: Scope) -> dict[str, str | None]:
    return {"site": scope.site.code if scope.site is not None else None,
            "subject": scope.subject.code if scope.subject is not None else None}


def overview() -> dict[str, ClosureState]:
    """Every recorded state, by scope key (scopes without a row are open)."""
    return {s.scope: s for s in db.session.scalars(sa.select(ClosureState))}
