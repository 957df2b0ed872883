"""Capture every change to an audited table at flush time, in the same transaction.

``before_flush`` refuses changes outside a unit of work and any physical delete; ``after_flush``
(when new rows have their ids) turns each changed column into one audit event with its old and new
value, read from SQLAlchemy's attribute history. ORM bulk UPDATE/DELETE on audited tables is
refused outright: it would bypass the listeners (the blind spot of ORM-level audit libraries).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from itertools import chain as iter_chain

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, attributes

from ecrf.audit.models import Audited
from ecrf.audit.unit_of_work import (
    UOW_KEY,
    AuditError,
    ReasonRequiredError,
    UnauditedWriteError,
)

SECRET_MARK = "[not recorded]"  # noqa: S105 (a placeholder, not a secret)


def audit_text(value) -> str | None:
    """The text form in which a value is kept and digested."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # 72.50000000 and 72.5 are one value
    if isinstance(value, date | int | float | str):
        return value.isoformat() if isinstance(value, date) else str(value)
    return json.dumps(value, sort_keys=True, default=str)


def _audited(objs) -> list[Audited]:
    return [o for o in objs if isinstance(o, Audited)]


#: rules every flush of audited rows passes through, in this order: (order, name, rule); a rule
#: gets the session and the audited objects being written and may add changes or raise
FLUSH_RULES: list[tuple[int, str, Callable[[Session, list[Audited]], None]]] = []


def flush_rule(order: int, name: str):
    """Register a rule run on every flush inside a unit of work (the one write path), e.g. the
    freeze/lock check, or clearing a verification when its value changes. Lower order first."""

    def register(rule):
        FLUSH_RULES[:] = sorted([r for r in FLUSH_RULES if r[1] != name] + [(order, name, rule)],
                                key=lambda r: r[0])
        return rule

    return register


def touched_objects(session: Session) -> list[Audited]:
    """The audited objects a flush is about to insert, change or delete."""
    dirty = [o for o in session.dirty if session.is_modified(o, include_collections=False)]
    return _audited(iter_chain(session.new, dirty, session.deleted))


def _before_flush(session: Session, _ctx, _instances) -> None:
    touched = touched_objects(session)
    if not touched:
        return
    if session.info.get(UOW_KEY) is None:
        names = sorted({type(o).__name__ for o in touched})
        raise UnauditedWriteError(
            f"change to audited table(s) {', '.join(names)} outside the unit of work"
        )
    deleted = _audited(session.deleted)
    if deleted:
        raise AuditError(
            f"{type(deleted[0]).__name__} rows are never physically deleted: set a status instead"
        )
    for _order, _name, rule in FLUSH_RULES:
        with session.no_autoflush:
            rule(session, touched)
        touched = touched_objects(session)


def _after_flush(session: Session, _ctx) -> None:
    uow = session.info.get(UOW_KEY)
    if uow is None:
        return
    for obj in _audited(session.new):
        _capture(uow, obj, created=True)
    for obj in _audited(session.dirty):
        if session.is_modified(obj, include_collections=False):
            _capture(uow, obj, created=False)


def _column_values(obj: Audited, mapper, spec, *, created: bool):
    """Old and new value of each audited column, from the attribute history."""
    old, new, changed = {}, {}, False
    for column_attr in mapper.column_attrs:
        key = column_attr.key
        if key in spec.exclude:
            continue
        hist = attributes.get_history(obj, key)
        current = hist.added[0] if hist.added else (
            hist.unchanged[0] if hist.unchanged else getattr(obj, key))
        if created:
            old[key], new[key] = None, current
        elif hist.has_changes():
            old[key] = hist.deleted[0] if hist.deleted else None
            new[key] = current
            changed = True
        else:
            old[key] = new[key] = current
    return old, new, changed or created


def _texts(values: dict, spec) -> dict[str, str | None]:
    if spec.compose is not None:
        return spec.compose(values)
    return {k: (SECRET_MARK if v is not None else None) if k in spec.secret else audit_text(v)
            for k, v in values.items()}


def _capture(uow, obj: Audited, *, created: bool) -> None:
    spec = obj.__audit__
    mapper = sa.inspect(type(obj))
    old_cols, new_cols, changed = _column_values(obj, mapper, spec, created=created)
    if not changed:
        return
    old, new = _texts(old_cols, spec), _texts(new_cols, spec)
    entity_id = mapper.primary_key_from_instance(obj)[0]
    path = obj.audit_path()
    action = f"{spec.entity}.{'create' if created else 'update'}"
    reason = obj.audit_reason or uow.reason
    for key, new_text in new.items():
        old_text = old.get(key)
        if old_text == new_text or (created and new_text is None):
            continue
        if old_text is not None and reason is None:
            raise ReasonRequiredError(f"{spec.entity} {entity_id} {key}")
        uow.record(action, spec.entity, entity_id, path=path, field=key,
                   old=old_text, new=new_text, reason=reason)


def _refuse_bulk(state) -> None:
    if not (state.is_update or state.is_delete):
        return
    table = getattr(state.statement, "table", None)
    if table is not None and table.name in audited_table_names():
        raise AuditError(f"bulk UPDATE/DELETE on audited table {table.name} bypasses the audit trail")


def audited_table_names() -> set[str]:
    from ecrf.database import Base

    return {
        m.local_table.name for m in Base.registry.mappers if issubclass(m.class_, Audited)
    }


def _active_history(mapper, class_) -> None:
    """Load the old value before a change, even from an expired instance."""
    if not issubclass(class_, Audited):
        return
    for column_attr in mapper.column_attrs:
        event.listen(getattr(class_, column_attr.key), "set", _noop, active_history=True)


def _noop(*_args):
    return None


def install(session_class=Session) -> None:
    """Register the listeners on every session of the application (idempotent)."""
    if event.contains(session_class, "before_flush", _before_flush):
        return
    event.listen(session_class, "before_flush", _before_flush)
    event.listen(session_class, "after_flush", _after_flush)
    event.listen(session_class, "do_orm_execute", _refuse_bulk)
    event.listen(Audited, "mapper_configured", _active_history, propagate=True)
