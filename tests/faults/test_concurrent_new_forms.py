"""New forms on one subject saved at the same moment (found by the fault test's concurrent saves).

Two investigators adding adverse events to one patient at once, or one page submitted twice at
once (a double click, or a page submitted again while the first answer is still on its way),
used to reach the unique slot of the form with the same number: one request failed with a
server error, and a user shown that error while the event was saved would enter it again. The
creations now take turns on the subject's row: the events get distinct numbers, and the second
submission of one page reads, under the lock, that the first saved it.

The window between choosing the number and writing it is widened on purpose (a pause), so that
without the lock the saves meet every time: the negative control shows they then fail.
"""

from __future__ import annotations

import threading
import time
from datetime import date

import pytest
import sqlalchemy as sa

from ecrf.auth.services import system_actor
from ecrf.casebook import services
from ecrf.casebook.models import FormInstance
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.extensions import db
from ecrf.study.models import Subject
from tests.factories import Factories

pytestmark = pytest.mark.postgres_only

EVENT = {"term": "10035528", "grade": "2", "onset": date.today().isoformat(), "serious": "N",
         "causality": "UNLIKELY", "action": "DOSE NOT CHANGED", "outcome": "RECOVERING/RESOLVING"}


@pytest.fixture
def subject_id(fresh_app, engine_name, monkeypatch):
    """A subject on a database of its own, and a pause between numbering a new form and
    writing it."""
    if engine_name != "postgresql":
        pytest.skip("needs PostgreSQL: requests that really run side by side (SQLite's "
                    "BEGIN IMMEDIATE serialises every writer)")
    real = services._next_repeat

    def slow_next_repeat(*args):
        number = real(*args)
        time.sleep(0.3)
        return number

    monkeypatch.setattr(services, "_next_repeat", slow_next_repeat)
    found = Factories().subject("01").id
    db.session.remove()
    return found


NEW_EVENT = Slot("D0", form_repeat=None)


def save_at_once(app, subject_id: int, tokens: list[str], crf_key: str = "adverse_event",
                 slot: Slot = NEW_EVENT, values=None) -> list[object]:
    """One new form per token (by default an adverse event described by its token), each in a
    thread (and transaction) of its own, started together: the outcome of each and the number
    of the form it names (with a weight typed: the weight saved, or on a conflict the weight
    shown as saved meanwhile), or the exception it raised."""
    barrier = threading.Barrier(len(tokens), timeout=30)
    results: list[object] = [None] * len(tokens)

    def save(i: int) -> None:
        with app.app_context():
            try:
                subject = db.session.get(Subject, subject_id)
                barrier.wait()
                typed = values[i] if values else {**EVENT, "verbatim": f"event {tokens[i]}"}
                result = save_form(system_actor(), subject, crf_key, slot, Submitted(typed),
                                   token=tokens[i])
                results[i] = (result.outcome, result.instance.form_repeat)
                if "weight" in typed:
                    results[i] += (result.current["weight"] if result.outcome == "conflict"
                                   else typed["weight"],)
            except Exception as e:  # reported by the test
                results[i] = e
            finally:
                db.session.remove()

    threads = [threading.Thread(target=save, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def events(subject_id: int) -> list[tuple[int, str]]:
    rows = db.session.execute(sa.text(
        "SELECT f.form_repeat, v.value_text FROM form_instance f JOIN item_value v "
        "ON v.form_instance_id = f.id AND v.item_key = 'verbatim' "
        "WHERE f.subject_id = :s AND f.crf_key = 'adverse_event' ORDER BY f.form_repeat"),
        {"s": subject_id}).all()
    db.session.remove()
    return [tuple(r) for r in rows]


@pytest.mark.requirement("A11-7", "ALCOA-accurate")
def test_new_adverse_events_saved_at_once_on_one_subject_get_distinct_numbers(fresh_app,
                                                                                subject_id):
    results = save_at_once(fresh_app, subject_id, ["a", "b", "c"])
    assert sorted(results) == [("saved", 1), ("saved", 2), ("saved", 3)]
    assert sorted(text for _n, text in events(subject_id)) == ["event a", "event b", "event c"]


@pytest.mark.requirement("A11-7", "ALCOA-accurate")
def test_a_page_submitted_twice_at_once_is_saved_once(fresh_app, subject_id):
    results = save_at_once(fresh_app, subject_id, ["same page", "same page"])
    assert sorted(results) == [("duplicate", 1), ("saved", 1)]
    assert events(subject_id) == [(1, "event same page")]


def test_negative_control_without_the_subject_lock_the_same_saves_collide(fresh_app, subject_id,
                                                                          monkeypatch):
    monkeypatch.setattr(services, "lock_subject", lambda subject: None)
    results = save_at_once(fresh_app, subject_id, ["a", "b"])
    assert any(isinstance(r, sa.exc.IntegrityError) for r in results), results
    twice = save_at_once(fresh_app, subject_id, ["same page", "same page"])
    assert any(isinstance(r, sa.exc.IntegrityError) for r in twice), twice
    assert db.session.scalar(sa.select(sa.func.count()).select_from(FormInstance)) == 2


@pytest.mark.requirement("A11-7", "ALCOA-accurate")
def test_a_single_form_created_twice_at_once_is_a_conflict_for_the_second(fresh_app, subject_id,
                                                                          monkeypatch):
    """Two users open the same empty form and save it at once: the second is shown what the
    first saved (the conflict page), as for a form changed meanwhile."""
    monkeypatch.setattr(services, "lock_subject", _late(services.lock_subject))
    results = save_at_once(fresh_app, subject_id, ["x", "y"], "toy_vitals", Slot("D1"),
                           [{"weight": "70", "fever": "N"}, {"weight": "80", "fever": "N"}])
    assert sorted(r[0] for r in results) == ["conflict", "saved"], results
    saved, conflict = sorted(results, key=lambda r: r[0] == "conflict")
    assert saved[1] == conflict[1] == 1
    assert conflict[2] == saved[2]  # the second user sees the weight the first saved


def test_negative_control_without_the_lock_the_single_form_created_twice_collides(
        fresh_app, subject_id, monkeypatch):
    monkeypatch.setattr(services, "lock_subject", _late(lambda subject: None))
    results = save_at_once(fresh_app, subject_id, ["x", "y"], "toy_vitals", Slot("D1"),
                           [{"weight": "70", "fever": "N"}, {"weight": "80", "fever": "N"}])
    assert any(isinstance(r, sa.exc.IntegrityError) for r in results), results


def _late(lock):
    """The lock taken after a pause: both saves have seen the form missing before either
    writes it."""

    def late(subject):
        time.sleep(0.3)
        lock(subject)

    return late
