"""Data clarification: queries on an item (or a whole form) of a saved form, and their conversation.

A query is open, answered, closed or cancelled. Monitors and data managers (``query.manage``) raise,
close, cancel and re-open; investigators (``query.answer``) answer, in words or by correcting the
value (the correction's audit rows then name the query). Every step is a message kept with its
author and time; nothing is deleted. A soft edit check that fires on a save opens a system query,
which closes itself when a later save no longer fires it.

The rules live here, whatever the path (web, CLI, loaders): who may take a step, from which state,
and what it writes. Views only load the query within the user's sites and show the outcome.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import selectinload

from ecrf import database
from ecrf.access.roles import ROLES
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, UnitOfWork, unit_of_work
from ecrf.casebook.models import FormInstance
from ecrf.extensions import db
from ecrf.forms.definition import CRF, Finding
from ecrf.i18n import Message, msg
from ecrf.review.models import Query, QueryMessage, QueryState
from ecrf.study.models import Subject

OPEN, ANSWERED, CLOSED, CANCELLED = (QueryState.OPEN.value, QueryState.ANSWERED.value,
                                     QueryState.CLOSED.value, QueryState.CANCELLED.value)
MANAGE, ANSWER = "query.manage", "query.answer"
TEXT_MAX = 2000
#: a query's state is not typed by anyone: it follows the step just taken (as a form's status)
STATE_REASON = Reason.system("query state follows its conversation")
SYSTEM_RAISE_REASON = Reason.system("soft edit check fired on save")
SYSTEM_CLOSE_REASON = Reason.system("edit check no longer fires")
#: age buckets of queries not settled, in whole days since they were raised: (label, first day, last day)
AGE_BUCKETS = (("0-7", 0, 7), ("8-14", 8, 14), ("15-30", 15, 30), (">30", 31, None))


@dataclass(frozen=True)
class Step:
    """One step a person takes on a query: from which states, to which, and who may take it."""

    states: frozenset[str]
    to: str
    permission: str
    text_required: bool = True


STEPS: dict[str, Step] = {
    "answer": Step(frozenset({OPEN}), ANSWERED, ANSWER),
    "close": Step(frozenset({ANSWERED}), CLOSED, MANAGE, text_required=False),
    "cancel": Step(frozenset({OPEN}), CANCELLED, MANAGE),
    "reopen": Step(frozenset({ANSWERED, CLOSED}), OPEN, MANAGE),
}


class QueryError(ValueError):
    """A step that cannot be taken; the message says why, in the user's language (``tr``).

    ``status`` is 400 for missing or bad input, 403 for a role that may not, 409 for a step the
    query's state does not allow (or a query changed meanwhile)."""

    def __init__(self, message: Message, status: int = 409):
        super().__init__(str(message))
        self.message = message
        self.status = status


# --- who may ---------------------------------------------------------------------------------


def holds(actor: Actor, permission: str) -> bool:
    """Whether the role of the actor's grant gives ``permission``."""
    role = ROLES.get(actor.role) if actor.role else None
    return role is not None and permission in role.permissions


def _site_code(instance: FormInstance) -> str:
    return instance.subject.site.code


def _check_actor(actor: Actor, permission: str, instance: FormInstance) -> None:
    if not holds(actor, permission):
        raise QueryError(msg("Only a monitor or a data manager can raise, close, cancel or "
                             "re-open a query.") if permission == MANAGE else
                         msg("Only an investigator of the site can answer a query."), 403)
    if actor.site is not None and actor.site != _site_code(instance):
        raise QueryError(msg("This query is on another site's data."), 403)


def _check_open_for_review(instance: FormInstance) -> None:
    """Told before writing (the freeze/lock flush rule holds in any case): queries go on while
    the data are frozen, not once they are locked."""
    from ecrf.review.closure import REVIEW, refusal

    closed = refusal(instance.subject, REVIEW)
    if closed is not None:
        raise QueryError(closed)


def _text(text: str | None, required: bool) -> str:
    text = (text or "").strip()
    if required and not text:
        raise QueryError(msg("Write the text of the message."), 400)
    if len(text) > TEXT_MAX:
        raise QueryError(msg("A message is limited to %(n)s characters.", n=TEXT_MAX), 400)
    return text


def available_steps(query: Query, permissions: Iterable[str]) -> list[str]:
    """The steps the query's state allows to someone holding ``permissions`` (for the page)."""
    held = set(permissions)
    return [name for name, step in STEPS.items()
            if query.state in step.states and step.permission in held]


# --- raising and the conversation ------------------------------------------------------------


def raise_query(actor: Actor, instance: FormInstance, item_key: str | None, text: str,
                crf: CRF | None = None) -> Query:
    """A monitor's or data manager's question on an item (``item_key`` None: the whole form)."""
    _check_actor(actor, MANAGE, instance)
    _check_open_for_review(instance)
    text = _text(text, required=True)
    if item_key is not None:
        crf = crf or _definition(instance)
        if item_key not in {i.key for i in crf.items}:
            raise QueryError(msg("The form has no item %(key)s.", key=item_key), 400)
    with unit_of_work(actor):
        query = _new_query(instance, item_key, actor.user_id, text)
    return query


def _definition(instance: FormInstance) -> CRF:
    from ecrf.casebook.services import definition_for

    return definition_for(instance.crf_key, instance)


def _new_query(instance: FormInstance, item_key: str | None, author_id: int, text: str, *,
               check_id: str | None = None) -> Query:
    now = database.utcnow()
    query = Query(subject=instance.subject, form_instance=instance, item_key=item_key,
                  state=OPEN, origin="system" if check_id else "manual", check_id=check_id,
                  raised_by_id=author_id, created_at=now, updated_at=now)
    db.session.add(query)
    _message(query, "raise", text, author_id)
    return query


def _message(query: Query, action: str, text: str, author_id: int) -> QueryMessage:
    message = QueryMessage(query=query, action=action, text=text, author_id=author_id,
                           created_at=database.utcnow())
    db.session.add(message)
    return message


def _move(uow: UnitOfWork, query: Query, action: str, to: str, text: str, author_id: int,
          reason: Reason = STATE_REASON) -> None:
    """Write one step: the message, the new state, and one audit row that names the query."""
    _message(query, action, text, author_id)
    query.audit_reason = reason
    query.state = to
    query.updated_at = database.utcnow()
    uow.record(f"query.{action}", "query", query.id, path=query.audit_path(), field="state",
               new=to, reason=reason)


def take_step(actor: Actor, query: Query, action: str, text: str | None = None, *,
              row_version: int | None = None) -> Query:
    """Answer, close, cancel or re-open a query; an illegal step is refused with its reason.

    ``row_version`` (from the page the user read) refuses a step on a query that changed since.
    """
    step = STEPS[action]
    _check_actor(actor, step.permission, query.form_instance)
    if row_version is not None and row_version != query.row_version:
        raise QueryError(msg("Query #%(id)s changed since you opened it: read it again.",
                             id=query.id))
    if query.state not in step.states:
        raise QueryError(_refusal(query, action))
    _check_open_for_review(query.form_instance)
    text = _text(text, required=step.text_required)
    with unit_of_work(actor) as uow:
        _move(uow, query, action, step.to, text, actor.user_id)
    return query


def _refusal(query: Query, action: str) -> Message:
    state = msg(query.state)  # the state's name, in the reader's language (QUERY_STATE_LABELS)
    if action == "answer":
        return msg("Query #%(id)s is %(state)s: only an open query can be answered.",
                   id=query.id, state=state)
    if action == "close" and state == OPEN:
        return msg("Query #%(id)s has no answer yet: it can be closed once answered, or "
                   "cancelled if it was raised in error.", id=query.id)
    if action == "close":
        return msg("Query #%(id)s is %(state)s: only an answered query can be closed.",
                   id=query.id, state=state)
    if action == "cancel":
        return msg("Query #%(id)s is %(state)s: only an open query can be cancelled (an "
                   "answered one is closed or re-opened).", id=query.id, state=state)
    return msg("Query #%(id)s is %(state)s: only an answered or closed query can be re-opened.",
               id=query.id, state=state)


def answer(actor: Actor, query: Query, text: str, **kwargs) -> Query:
    return take_step(actor, query, "answer", text, **kwargs)


def close(actor: Actor, query: Query, text: str = "", **kwargs) -> Query:
    return take_step(actor, query, "close", text, **kwargs)


def cancel(actor: Actor, query: Query, text: str, **kwargs) -> Query:
    return take_step(actor, query, "cancel", text, **kwargs)


def reopen(actor: Actor, query: Query, text: str, **kwargs) -> Query:
    return take_step(actor, query, "reopen", text, **kwargs)


# --- what a save of the form does to its queries ---------------------------------------------


def answer_refusal(actor: Actor, query: Query, instance: FormInstance | None) -> Message | None:
    """Why a save cannot answer ``query`` by correcting the form (None: it can)."""
    if instance is None or query.form_instance_id != instance.id:
        return msg("Query #%(id)s is not on this form.", id=query.id)
    try:
        _check_actor(actor, ANSWER, instance)
    except QueryError as e:
        return e.message
    if query.state != OPEN:
        return _refusal(query, "answer")
    return None


def response_reason(query: Query, reason: Reason | None) -> Reason:
    """The reason for change of a correction in answer to a query: it names the query."""
    text = (reason.text if reason is not None else "").strip()
    return Reason("query_response", f"Query #{query.id}: {text}" if text else f"Query #{query.id}")


def after_form_saved(uow: UnitOfWork, instance: FormInstance, crf: CRF, soft: list[Finding],
                     old_text: dict[str, str | None], new_text: dict[str, str | None],
                     answering: Query | None = None) -> None:
    """Inside the save's unit of work: answer the query the correction responds to, then open a
    system query for each soft check that fired and close those whose check no longer fires."""
    if answering is not None:
        _answer_by_correction(uow, answering, crf, old_text, new_text)
    sync_system_queries(uow, instance, soft)


def _answer_by_correction(uow: UnitOfWork, query: Query, crf: CRF,
                          old_text: dict[str, str | None], new_text: dict[str, str | None]) -> None:
    changes = [f"{item.label}: {old_text[item.key] or '-'} -> {new_text[item.key] or '-'}"
               for item in crf.items
               if not item.derived and old_text[item.key] != new_text[item.key]]
    text = "Corrected in the form: " + "; ".join(changes) + "."
    why = (uow.reason.text if uow.reason else "").removeprefix(f"Query #{query.id}").lstrip(": ")
    if why:
        text += f" Reason: {why}"
    _move(uow, query, "answer", ANSWERED, text, uow.actor.user_id,
          reason=uow.reason or STATE_REASON)


def sync_system_queries(uow: UnitOfWork, instance: FormInstance, soft: list[Finding]) -> None:
    """One open system query per (form, check) while the check fires on the saved form.

    A system query a person closed or cancelled is not raised again for the same finding (same
    message, so the same value): the value was accepted. Opened and closed by the system account,
    in the audit trail under the user whose save fired (or cleared) the check.
    """
    from ecrf.auth.services import system_user

    existing = db.session.scalars(sa.select(Query).where(
        Query.form_instance_id == instance.id, Query.origin == "system")
        .options(selectinload(Query.messages)).order_by(Query.id)).all()
    latest: dict[str, Query] = {}
    for query in existing:
        latest[query.check_id] = query
    firing = {f.check_id: f for f in soft}
    system_id = None
    for check_id, finding in firing.items():
        last = latest.get(check_id)
        if last is not None and (last.state in (OPEN, ANSWERED) or (
                last.messages[-1].action in ("close", "cancel")
                and last.messages[0].text == str(finding.message))):
            continue
        system_id = system_id or system_user().id
        query = _new_query(instance, finding.items[0] if finding.items else None, system_id,
                           str(finding.message), check_id=check_id)
        query.audit_reason = SYSTEM_RAISE_REASON
    for check_id, query in latest.items():
        if check_id not in firing and query.state in (OPEN, ANSWERED):
            system_id = system_id or system_user().id
            _move(uow, query, "auto_close", CLOSED,
                  "Closed by the system: the edit check no longer fires on the saved values.",
                  system_id, reason=SYSTEM_CLOSE_REASON)


# --- reading: lists, counts, ages ------------------------------------------------------------


def age_days(query: Query, now: datetime | None = None) -> int:
    """Whole days since the query was raised."""
    return ((now or database.utcnow()) - query.created_at).days


def _raised_before(days: int, now: datetime) -> datetime:
    """Raised at or before this time: more than ``days - 1`` whole days old."""
    return now - timedelta(days=days)


#: the age filters of a list: label -> (fewest, most) whole days since raised (None: no bound)
AGE_FILTERS: dict[str, tuple[int, int | None]] = {
    ">7": (8, None), ">14": (15, None), ">30": (31, None),
    **{label: (first, last) for label, first, last in AGE_BUCKETS},
}
#: not settled yet: waiting for the site (open) or for the monitor (answered)
UNRESOLVED = (OPEN, ANSWERED)


@dataclass
class Filters:
    """What a query list is narrowed to; empty fields do not filter."""

    site_id: int | None = None
    subject_code: str | None = None
    crf_key: str | None = None
    #: one state, or "unresolved" (open or answered)
    state: str | None = None
    #: a key of AGE_FILTERS
    age: str | None = None
    form_instance_id: int | None = None
    item_key: str | None = None


def _age_where(age: str, now: datetime) -> list:
    first, last = AGE_FILTERS[age]
    where = [Query.created_at <= _raised_before(first, now)]
    if last is not None:
        where.append(Query.created_at > _raised_before(last + 1, now))
    return where


def listing(filters: Filters, site_ids: set[int] | None = None,
            now: datetime | None = None) -> sa.Select:
    """Queries matching ``filters`` within ``site_ids`` (None: every site), oldest first."""
    now = now or database.utcnow()
    stmt = (sa.select(Query).join(Subject, Query.subject_id == Subject.id)
            .join(FormInstance, Query.form_instance_id == FormInstance.id)
            .options(selectinload(Query.messages), selectinload(Query.subject),
                     selectinload(Query.form_instance))
            .order_by(Query.created_at, Query.id))
    if site_ids is not None:
        stmt = stmt.where(Subject.site_id.in_(site_ids))
    if filters.site_id is not None:
        stmt = stmt.where(Subject.site_id == filters.site_id)
    if filters.subject_code:
        stmt = stmt.where(Subject.code == filters.subject_code)
    if filters.crf_key:
        stmt = stmt.where(FormInstance.crf_key == filters.crf_key)
    if filters.state == "unresolved":
        stmt = stmt.where(Query.state.in_(UNRESOLVED))
    elif filters.state:
        stmt = stmt.where(Query.state == filters.state)
    if filters.age in AGE_FILTERS:
        stmt = stmt.where(*_age_where(filters.age, now))
    if filters.form_instance_id is not None:
        stmt = stmt.where(Query.form_instance_id == filters.form_instance_id)
    if filters.item_key:
        stmt = stmt.where(Query.item_key == filters.item_key)
    return stmt


def _scoped(stmt: sa.Select, site_ids: set[int] | None) -> sa.Select:
    if site_ids is None:
        return stmt
    return stmt.join(Subject, Query.subject_id == Subject.id).where(Subject.site_id.in_(site_ids))


def counts_by_state(site_ids: set[int] | None = None) -> dict[str, int]:
    """Number of queries in each state (every state present, zero included)."""
    rows = db.session.execute(_scoped(
        sa.select(Query.state, sa.func.count()).select_from(Query), site_ids)
        .group_by(Query.state)).all()
    found = dict(rows)
    return {state.value: found.get(state.value, 0) for state in QueryState}


def open_counts(site_ids: set[int] | None = None, *,
                states: Iterable[str] = UNRESOLVED) -> dict[int, int]:
    """Queries not settled (open or answered, or the ``states`` given) per site id; sites
    without one are left out."""
    rows = db.session.execute(
        sa.select(Subject.site_id, sa.func.count()).select_from(Query)
        .join(Subject, Query.subject_id == Subject.id)
        .where(Query.state.in_(tuple(states)),
               *([Subject.site_id.in_(site_ids)] if site_ids is not None else []))
        .group_by(Subject.site_id)).all()
    return dict(rows)


def open_by_age(site_ids: set[int] | None = None, now: datetime | None = None, *,
                states: Iterable[str] = UNRESOLVED) -> dict[str, int]:
    """Queries not settled (open or answered, or the ``states`` given) by whole days since
    raised: {"0-7": n, "8-14": n, "15-30": n, ">30": n}; the list filter ``age`` uses the same
    labels."""
    now = now or database.utcnow()
    columns = [sa.func.count(sa.case((sa.and_(*_age_where(label, now)), 1)))
               for label, _first, _last in AGE_BUCKETS]
    row = db.session.execute(_scoped(sa.select(*columns).select_from(Query), site_ids)
                             .where(Query.state.in_(tuple(states)))).one()
    return {label: n for (label, _f, _l), n in zip(AGE_BUCKETS, row, strict=True)}


def unresolved_by_form(subject_id: int) -> dict[int, Counter]:
    """Open and answered queries of a subject, per form instance id: {id: Counter(state: n)}."""
    rows = db.session.execute(
        sa.select(Query.form_instance_id, Query.state, sa.func.count())
        .where(Query.subject_id == subject_id, Query.state.in_((OPEN, ANSWERED)))
        .group_by(Query.form_instance_id, Query.state)).all()
    result: dict[int, Counter] = {}
    for instance_id, state, n in rows:
        result.setdefault(instance_id, Counter())[state] = n
    return result


def unresolved_by_item(instance_id: int) -> dict[str | None, Counter]:
    """Open and answered queries of a form, per item key (None: on the whole form)."""
    rows = db.session.execute(
        sa.select(Query.item_key, Query.state, sa.func.count())
        .where(Query.form_instance_id == instance_id, Query.state.in_((OPEN, ANSWERED)))
        .group_by(Query.item_key, Query.state)).all()
    result: dict[str | None, Counter] = {}
    for item_key, state, n in rows:
        result.setdefault(item_key, Counter())[state] = n
    return result
