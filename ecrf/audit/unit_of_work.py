"""The one audited unit of work every write goes through (ALCOA+, 21 CFR 11.10(e), EMA §6.2).

``with unit_of_work(actor, reason):`` opens a transaction context: changes to audited tables are
captured at flush time (``capture.py``), explicit actions are recorded with ``uow.record``, and on
exit the audit rows are appended to the hash chain under its lock (``chain.py``) and everything is
committed together, or nothing is. It is the only place that commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import has_request_context, request

from ecrf.audit.reasons import Reason
from ecrf.extensions import db

UOW_KEY = "ecrf.unit_of_work"
#: set in the request's environ once a commit carrying audit rows has been sent: if the database
#: is lost from then on, the request may have been saved (the 503 page must not deny it)
COMMIT_SENT = "ecrf.commit_sent"


class AuditError(RuntimeError):
    """A write that the audit mechanism refuses."""


class UnauditedWriteError(AuditError):
    pass


class ReasonRequiredError(AuditError):
    def __init__(self, what: str):
        super().__init__(f"A reason for change is required to change the saved value of {what}")
        self.what = what


@dataclass(frozen=True)
class Actor:
    """Who acts, and under which grant: recorded on every audit row (EMA-3)."""

    user_id: int
    username: str
    role: str | None = None
    site: str | None = None
    grant_id: int | None = None

    @classmethod
    def of(cls, user, grant=None) -> Actor:
        if grant is None:
            return cls(user.id, user.username)
        return cls(user.id, user.username, grant.role,
                   grant.site.code if grant.site is not None else None, grant.id)


@dataclass
class UnitOfWork:
    actor: Actor
    reason: Reason | None
    request_id: str
    client: str | None
    events: list[dict[str, Any]] = field(default_factory=list)
    #: callbacks run inside the transaction once the events have their seq numbers
    after_append: list = field(default_factory=list)

    def record(self, action: str, entity_type: str, entity_id: Any = None, *,
               path: dict[str, str | None] | None = None, field: str | None = None,
               old: str | None = None, new: str | None = None,
               reason: Reason | None = None) -> None:
        """Record an action that is not a column change (login, access denied, ...)."""
        reason = reason or self.reason
        self.events.append({
            "action": action, "entity_type": entity_type,
            "entity_id": None if entity_id is None else str(entity_id),
            **_path(path), "field": field, "old": old, "new": new,
            "reason_code": reason.code if reason else None,
            "reason_text": reason.text if reason else None,
        })


def _path(path: dict[str, str | None] | None) -> dict[str, str | None]:
    path = path or {}
    return {k: path.get(k) for k in ("site", "subject", "visit", "form", "item")}


def current_unit_of_work() -> UnitOfWork | None:
    return db.session.info.get(UOW_KEY)


@contextmanager
def unit_of_work(actor: Actor, reason: Reason | None = None) -> Iterator[UnitOfWork]:
    """Run the block as one audited transaction; re-entrant for the same actor."""
    from ecrf.audit import chain

    session = db.session
    outer = session.info.get(UOW_KEY)
    if outer is not None:
        if outer.actor != actor:
            raise AuditError("a unit of work is already open for another actor")
        # a nested block keeps its own reason: capture before and after it under the right one
        session.flush()
        saved, outer.reason = outer.reason, reason or outer.reason
        try:
            yield outer
            session.flush()
        finally:
            outer.reason = saved
        return
    request_id, client = str(uuid.uuid4()), None
    if has_request_context():
        request_id = request.environ.get("ecrf.request_id", request_id)
        client = (request.remote_addr or "")[:64] or None
    uow = UnitOfWork(actor, reason, request_id, client)
    session.info[UOW_KEY] = uow
    try:
        yield uow
        session.flush()
        seqs = chain.append(session, uow)
        for callback in uow.after_append:
            callback(session, seqs)
        if seqs and has_request_context():
            request.environ[COMMIT_SENT] = True
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.info.pop(UOW_KEY, None)
