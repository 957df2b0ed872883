"""Concurrent writers: race-free subject codes and one gap-free, valid chain (21 CFR 11.10(e)).

Several threads, each with its own app context (own session, own connection, as several requests
or app servers), write at the same instant. With the row locks, subject codes are distinct and
the chain's ``seq`` is gap-free with a valid hash chain and a non-decreasing ``recorded_at``. A
negative control removes ``FOR UPDATE`` from the chain head read and shows the same run fails.

These need PostgreSQL (sessions that really run side by side and contend for row locks); on
SQLite only the enrolment race runs, where ``BEGIN IMMEDIATE`` serialises the writers.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ecrf.audit import chain
from ecrf.audit.models import AuditRecord, ChainHead
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.auth.services import system_actor
from ecrf.extensions import db
from ecrf.study.models import Site
from ecrf.study.services import enrol_subject
from tests.factories import Factories

pytestmark = pytest.mark.postgres_only

THREADS, UNITS, EVENTS_PER_UNIT = 6, 10, 2


@pytest.fixture
def postgres(engine_name):
    if engine_name != "postgresql":
        pytest.skip("needs PostgreSQL: concurrent sessions contending for row locks "
                    "(SQLite serialises every writer with BEGIN IMMEDIATE)")


def run_threads(app, n: int, work: Callable[[int, threading.Barrier], object]):
    """Run ``work(i, barrier)`` in ``n`` threads, each inside an app context of its own."""
    barrier = threading.Barrier(n, timeout=60)
    results: list[object] = [None] * n
    errors: list[BaseException | None] = [None] * n

    def target(i: int) -> None:
        with app.app_context():
            try:
                results[i] = work(i, barrier)
            except BaseException as e:  # reported by the test
                errors[i] = e
                barrier.abort()

    threads = [threading.Thread(target=target, args=(i,), name=f"writer-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a writer hangs"
    return results, errors


def _trail() -> list[dict]:
    db.session.remove()
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(AuditRecord.__table__).order_by(AuditRecord.__table__.c.seq)).mappings()]


# --- (a)/(d) enrolment at the same instant --------------------------------------------------


@pytest.mark.parametrize("n", [2, 8])
def test_simultaneous_enrolments_on_one_site_get_distinct_consecutive_codes(fresh_app, n):
    Factories().site("01")
    db.session.remove()

    def enrol(_i, barrier):
        site = db.session.scalar(sa.select(Site).where(Site.code == "01"))
        actor = system_actor()
        db.session.commit()  # end the read (on SQLite it holds the write lock) before the start
        barrier.wait()
        return enrol_subject(actor, site).code

    codes, errors = run_threads(fresh_app, n, enrol)
    assert errors == [None] * n
    assert sorted(codes) == [f"01-{k:03d}" for k in range(1, n + 1)]
    rows = _trail()
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert sorted(r["subject"] for r in rows if r["action"] == "subject.create"
                  and r["field"] == "code") == sorted(codes)
    assert chain.verify_rows(chain.iter_db_rows(db.session),
                             stored_head=chain.stored_head(db.session)).ok


# --- (b) many concurrent units of work -------------------------------------------------------


def _record_units(app) -> tuple[list, list[BaseException]]:
    """THREADS x UNITS units of work of EVENTS_PER_UNIT events, all threads released together."""
    actor = system_actor()
    db.session.remove()

    def work(i, barrier):
        failures = []
        for u in range(UNITS):
            barrier.wait()
            try:
                with unit_of_work(actor) as uow:
                    for e in range(EVENTS_PER_UNIT):
                        uow.record("test.concurrent", "test", f"{i}-{u}-{e}", new=f"value {i}-{u}-{e}")
            except IntegrityError as error:
                failures.append(error)
        return failures

    results, errors = run_threads(app, THREADS, work)
    assert errors == [None] * THREADS
    return results, [f for failures in results for f in failures]


@pytest.mark.requirement("ALCOA-consistent")
def test_concurrent_units_of_work_keep_one_gap_free_valid_chain(fresh_app, postgres):
    Factories().site("01")
    before = len(_trail())
    _, failures = _record_units(fresh_app)
    assert failures == []
    rows = _trail()
    assert len(rows) == before + THREADS * UNITS * EVENTS_PER_UNIT
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    result = chain.verify_rows(chain.iter_db_rows(db.session),
                               stored_head=chain.stored_head(db.session))
    assert result.ok, result.problems
    assert result.rows_checked == len(rows)
    times = [r["recorded_at"] for r in rows]
    assert all(isinstance(t, datetime) and t.tzinfo is not None for t in times)
    assert all(a <= b for a, b in zip(times, times[1:], strict=False))
    assert times[-1] <= datetime.now(UTC)
    # each unit of work is one contiguous run of seq, all at one time stamp
    units = defaultdict(list)
    for r in rows[before:]:
        units[r["request_id"]].append(r)
    assert len(units) == THREADS * UNITS
    for unit in units.values():
        seqs = [r["seq"] for r in unit]
        assert seqs == list(range(seqs[0], seqs[0] + EVENTS_PER_UNIT))
        assert len({r["recorded_at"] for r in unit}) == 1
    # the threads really interleaved: no thread wrote all its units in one block
    writers = [r["entity_id"].split("-")[0] for r in rows[before:]]
    switches = sum(a != b for a, b in zip(writers, writers[1:], strict=False))
    assert switches > THREADS


# --- (c) negative control: the chain head read without FOR UPDATE ----------------------------


def _lock_head_without_for_update(conn: sa.Connection):
    """``chain._lock_head`` as it is, minus ``.with_for_update()``."""
    head = ChainHead.__table__
    assert conn.dialect.name == "postgresql"
    stmt = sa.select(head.c.last_seq, head.c.last_hash, head.c.last_recorded_at,
                     sa.func.clock_timestamp()).where(head.c.id == 1)
    seq, last_hash, last_at, now = conn.execute(stmt).one()
    if last_at is not None:
        last_at = last_at.replace(tzinfo=UTC) if last_at.tzinfo is None else last_at
        now = max(now, last_at)
    return seq, last_hash, now


@pytest.mark.requirement("ALCOA-consistent")
def test_negative_control_without_the_row_lock_the_same_run_fails(fresh_app, postgres,
                                                                 monkeypatch):
    Factories().site("01")
    before = len(_trail())
    monkeypatch.setattr(chain, "_lock_head", _lock_head_without_for_update)
    outcomes = []
    for _attempt in range(5):
        _, failures = _record_units(fresh_app)
        result = chain.verify_rows(chain.iter_db_rows(db.session),
                                   stored_head=chain.stored_head(db.session))
        db.session.remove()
        outcomes.append((failures, result))
        if failures or not result.ok:
            break
    failures, result = outcomes[-1]
    assert failures or not result.ok, "without FOR UPDATE the concurrent run still succeeded"
    # the failure is the one the lock prevents: two units took the same seq
    assert all("pk_audit_trail" in str(f.orig) for f in failures), failures[:1]
    # a failed unit left nothing behind: the trail holds exactly the units that committed
    committed = sum(THREADS * UNITS - len(f) for f, _ in outcomes)
    assert len(_trail()) == before + committed * EVENTS_PER_UNIT
