"""Tampering with the stored trail is caught by ``ecrf audit verify`` (21 CFR 11.10(e), ALCOA+).

Each test builds a real, committed history through the audited services, then acts as the
database owner: it first removes the append-only guards with raw SQL (which the application role
cannot do), then tampers in one way. ``ecrf audit verify`` must exit non-zero and name the first
bad seq. A recorded redaction, in contrast, is reported as such and the chain still verifies.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from ecrf.audit import chain
from ecrf.audit.models import AuditRecord, AuditValue, ChainHead
from ecrf.extensions import db
from tests.factories import Factories

pytestmark = pytest.mark.requirement("P11-10a")

TRAIL, VALUES, HEAD = AuditRecord.__table__, AuditValue.__table__, ChainHead.__table__

#: what an owner runs first; the application role holds no privilege to do it
REMOVE_GUARDS = {
    "sqlite": [
        "DROP TRIGGER audit_trail_no_update",
        "DROP TRIGGER audit_trail_no_delete",
        "DROP TRIGGER audit_value_no_delete",
        "DROP TRIGGER audit_value_mask_only",
    ],
    "postgresql": [
        "ALTER TABLE audit_trail DISABLE TRIGGER audit_trail_no_change",
        "DROP TRIGGER audit_value_no_delete ON audit_value",
        "DROP TRIGGER audit_value_mask_only ON audit_value",
    ],
}


def _trail() -> list[dict]:
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(TRAIL).order_by(TRAIL.c.seq)).mappings()]


def _values() -> dict[int, dict]:
    with db.engine.connect() as conn:
        return {r["seq"]: dict(r) for r in conn.execute(sa.select(VALUES)).mappings()}


def _build_history() -> None:
    make = Factories()
    make.site("01")
    make.site("02")
    make.user("alice", role="data_manager")
    make.user("ivan", role="investigator", site="01")
    for _ in range(3):
        make.subject("01")
    make.subject("02")
    db.session.remove()


@pytest.fixture
def history(fresh_app) -> list[dict]:
    """A committed history of a few dozen audit rows, as the owner sees them."""
    _build_history()
    rows = _trail()
    assert len(rows) >= 20 and [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    return rows


@contextmanager
def as_owner():
    """One committed transaction of the database owner, who first removes the guards."""
    db.session.remove()  # SQLite: the session must not hold the write lock
    with db.engine.begin() as conn:
        for statement in REMOVE_GUARDS[conn.dialect.name]:
            conn.exec_driver_sql(statement)
        yield conn


def verify(app, *args: str):
    db.session.remove()
    result = app.test_cli_runner().invoke(args=["audit", "verify", *args])
    db.session.remove()
    return result


def assert_fails_at(result, seq: int, why: str) -> None:
    assert result.exit_code == 1, result.output
    assert f"FAILED at seq {seq}: " in result.output, result.output
    assert why in result.output, result.output
    assert "Chain OK" not in result.output


def _head_of(output: str) -> str:
    match = re.search(r"^Head: (\d+:[0-9a-f]{64})$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def _a_row(rows: list[dict], **match) -> dict:
    """A row from the middle of the history matching the given columns."""
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert found, match
    return found[len(found) // 2]


def _hashable(row: dict) -> dict:
    return {**row, "v": row["format_version"]}


# --- the control: an untouched trail --------------------------------------------------------


def test_an_untouched_trail_verifies_and_prints_the_stored_head(fresh_app, history):
    result = verify(fresh_app)
    assert result.exit_code == 0, result.output
    assert f"Rows checked: {len(history)}\n" in result.output
    head_seq, head_hash = chain.stored_head(db.session)
    assert (head_seq, head_hash) == (history[-1]["seq"], history[-1]["row_hash"])
    assert _head_of(result.output) == f"{head_seq}:{head_hash}"
    assert "Chain OK" in result.output and "FAILED" not in result.output
    # a head published now is still found later
    assert verify(fresh_app, "--expect-head", f"{head_seq}:{head_hash}").exit_code == 0


# --- tampering by the owner -----------------------------------------------------------------


def test_a_changed_value_in_a_row_is_caught(fresh_app, history):
    target = _a_row(history, reason_text="site created")
    with as_owner() as conn:
        conn.execute(TRAIL.update().where(TRAIL.c.seq == target["seq"])
                     .values(reason_text="site created on request of the sponsor"))
    assert_fails_at(verify(fresh_app), target["seq"], "row content does not match its row_hash")


def test_a_changed_actor_is_caught(fresh_app, history):
    target = _a_row(history, action="subject.create")
    with as_owner() as conn:
        conn.execute(TRAIL.update().where(TRAIL.c.seq == target["seq"]).values(username="alice"))
    assert_fails_at(verify(fresh_app), target["seq"], "row content does not match its row_hash")


@pytest.mark.requirement("ALCOA-consistent")
def test_a_row_deleted_in_the_middle_is_caught(fresh_app, history):
    gone = history[len(history) // 2]["seq"]
    with as_owner() as conn:
        conn.execute(VALUES.delete().where(VALUES.c.seq == gone))
        conn.execute(TRAIL.delete().where(TRAIL.c.seq == gone))
    result = verify(fresh_app)
    assert_fails_at(result, gone + 1, f"seq {gone + 1} where {gone} was expected (missing rows")


def test_a_row_inserted_in_the_middle_with_a_correct_hash_is_caught(fresh_app, history):
    """The forger knows the format: the forged row itself hashes right and links to its
    predecessor, and later rows are renumbered; the row after it no longer links."""
    k = history[len(history) // 2]["seq"]
    values = _values()
    forged = {**history[k - 1], "seq": k + 1, "action": "subject.update", "field": "status",
              "old_digest": None, "new_digest": None, "reason_text": "forged",
              "prev_hash": history[k - 1]["row_hash"]}
    forged["row_hash"] = chain.row_hash(_hashable(forged))
    later = history[k:]
    with as_owner() as conn:
        conn.execute(VALUES.delete().where(VALUES.c.seq > k))
        conn.execute(TRAIL.delete().where(TRAIL.c.seq > k))
        conn.execute(TRAIL.insert(), [forged] + [{**r, "seq": r["seq"] + 1} for r in later])
        conn.execute(VALUES.insert(), [{**values[r["seq"]], "seq": r["seq"] + 1} for r in later])
        conn.execute(HEAD.update().values(last_seq=history[-1]["seq"] + 1))
    assert _trail()[k]["reason_text"] == "forged"
    assert_fails_at(verify(fresh_app), k + 2, "prev_hash does not match the previous row's hash")


@pytest.mark.requirement("ALCOA-consistent")
def test_two_rows_swapped_keeping_their_seq_are_caught(fresh_app, history):
    a, b = history[len(history) // 2], history[len(history) // 2 + 1]
    values = _values()
    content = [c.name for c in TRAIL.columns if c.name not in ("seq", "row_hash")]
    value_cols = [c.name for c in VALUES.columns if c.name != "seq"]
    with as_owner() as conn:
        def put(seq, row, row_hash):
            conn.execute(TRAIL.update().where(TRAIL.c.seq == seq)
                         .values(**{c: row[c] for c in content}, row_hash=row_hash))

        put(a["seq"], b, "x" * 64)  # row_hash is unique: park it while swapping
        put(b["seq"], a, a["row_hash"])
        put(a["seq"], b, b["row_hash"])
        for seq, other in ((a["seq"], values[b["seq"]]), (b["seq"], values[a["seq"]])):
            conn.execute(VALUES.update().where(VALUES.c.seq == seq)
                         .values(**{c: other[c] for c in value_cols}))
    swapped = _trail()
    assert swapped[a["seq"] - 1]["row_hash"] == b["row_hash"]
    assert swapped[b["seq"] - 1]["row_hash"] == a["row_hash"]
    assert_fails_at(verify(fresh_app), a["seq"], "prev_hash does not match the previous row's hash")


def test_a_kept_value_that_no_longer_matches_its_digest_is_caught(fresh_app, history):
    target = _a_row(history, entity_type="site", field="name")
    assert _values()[target["seq"]]["new_value"].startswith("Test site ")
    with as_owner() as conn:
        conn.execute(VALUES.update().where(VALUES.c.seq == target["seq"])
                     .values(new_value="A different site name"))
    assert_fails_at(verify(fresh_app), target["seq"], "kept new value does not match its digest")


def test_a_value_masked_without_a_recorded_redaction_is_caught(fresh_app, history):
    target = _a_row(history, entity_type="subject", field="code")
    with as_owner() as conn:
        conn.execute(VALUES.update().where(VALUES.c.seq == target["seq"])
                     .values(new_value=None, new_salt=None))
    assert_fails_at(verify(fresh_app), target["seq"], "new value missing without a redaction")


def test_a_deleted_value_row_is_caught(fresh_app, history):
    target = _a_row(history, entity_type="subject", field="status")
    with as_owner() as conn:
        conn.execute(VALUES.delete().where(VALUES.c.seq == target["seq"]))
    assert target["seq"] not in _values()
    assert_fails_at(verify(fresh_app), target["seq"], "new value missing without a redaction")


def test_the_last_rows_deleted_are_caught_by_the_chain_head(fresh_app, history):
    last = history[-1]["seq"]
    with as_owner() as conn:
        conn.execute(VALUES.delete().where(VALUES.c.seq >= last - 1))
        conn.execute(TRAIL.delete().where(TRAIL.c.seq >= last - 1))
    result = verify(fresh_app)
    assert_fails_at(result, last, f"chain head says seq {last} but the trail ends at seq {last - 2}")
    assert f"Rows checked: {last - 2}\n" in result.output


def test_a_rewrite_with_every_later_row_rehashed_is_caught_only_by_a_published_head(fresh_app,
                                                                                    history):
    published = _head_of(verify(fresh_app).output)  # e.g. printed in the monitoring report
    Factories().subject("02")  # the trail grows after the head was published
    db.session.remove()
    rows = _trail()
    assert len(rows) > len(history)
    k = _a_row(history, reason_text="site created")["seq"]
    with as_owner() as conn:
        prev = rows[k - 2]["row_hash"]
        for row in rows[k - 1:]:
            if row["seq"] == k:
                row["reason_text"] = "backdated site creation"
            row["prev_hash"] = prev
            row["row_hash"] = prev = chain.row_hash(_hashable(row))
            conn.execute(TRAIL.update().where(TRAIL.c.seq == row["seq"]).values(
                reason_text=row["reason_text"], prev_hash=row["prev_hash"],
                row_hash=row["row_hash"]))
        conn.execute(HEAD.update().values(last_hash=prev))
    # the chain is consistent again: without a published head nothing shows
    unaware = verify(fresh_app)
    assert unaware.exit_code == 0, unaware.output
    assert _trail()[k - 1]["reason_text"] == "backdated site creation"
    # with the head published before the change, the rewrite is caught
    published_seq = int(published.split(":")[0])
    assert published_seq < len(rows)
    assert_fails_at(verify(fresh_app, "--expect-head", published), published_seq,
                    f"row {published_seq} differs from the published head")


def test_the_last_rows_deleted_with_the_head_moved_back_are_caught_by_a_published_head(fresh_app,
                                                                                     history):
    published = _head_of(verify(fresh_app).output)
    last = history[-1]["seq"]
    with as_owner() as conn:
        conn.execute(VALUES.delete().where(VALUES.c.seq >= last - 1))
        conn.execute(TRAIL.delete().where(TRAIL.c.seq >= last - 1))
        conn.execute(HEAD.update().values(last_seq=last - 2, last_hash=history[-3]["row_hash"]))
    assert verify(fresh_app).exit_code == 0  # consistent again for the unaware
    assert_fails_at(verify(fresh_app, "--expect-head", published), last,
                    f"published head seq {last} is missing")


# --- redaction is not tampering -------------------------------------------------------------


def _mask(conn, seq: int, redacted_seq: int) -> None:
    conn.execute(VALUES.update().where(VALUES.c.seq == seq)
                 .values(new_value=None, new_salt=None, redacted_seq=redacted_seq))


def test_a_recorded_redaction_is_reported_as_redacted_and_the_chain_verifies(fresh_app, history):
    from ecrf.audit.reasons import Reason
    from ecrf.audit.redaction import redact_value
    from ecrf.auth.services import system_actor

    target = _a_row(history, entity_type="user", field="email")
    assert _values()[target["seq"]]["new_value"].endswith("@example.org")
    redact_value(system_actor(), target["seq"], "new",
                 Reason("other", "a patient's name typed in the e-mail field"))
    db.session.remove()
    masked = _values()[target["seq"]]
    assert masked["new_value"] is None and masked["new_salt"] is None
    redaction = db.session.get(AuditRecord, masked["redacted_seq"])
    assert (redaction.action, redaction.entity_id) == ("audit.redact", str(target["seq"]))
    result = verify(fresh_app)
    assert result.exit_code == 0, result.output
    assert "Redacted values (masked by a recorded redaction): 1" in result.output
    assert "Chain OK" in result.output and "FAILED" not in result.output


def test_a_value_masked_naming_a_row_that_is_not_its_redaction_is_caught(fresh_app, history):
    """The mask-only trigger lets the value be wiped; verify still asks for the redaction record."""
    target = _a_row(history, entity_type="user", field="email")
    db.session.remove()
    with db.engine.begin() as conn:  # the guards stay: masking is what they allow
        _mask(conn, target["seq"], redacted_seq=history[-1]["seq"])
    assert_fails_at(verify(fresh_app), target["seq"], "masked without a recorded redaction")


def test_a_redaction_that_names_no_recorded_row_is_not_accepted(fresh_app, history):
    target = _a_row(history, entity_type="user", field="email")
    db.session.remove()
    with db.engine.begin() as conn:
        _mask(conn, target["seq"], redacted_seq=history[-1]["seq"] + 1000)
    assert verify(fresh_app).exit_code == 1


def test_masking_the_other_side_of_a_row_under_a_one_sided_redaction_is_caught(fresh_app, history):
    from ecrf.audit.reasons import Reason
    from ecrf.audit.redaction import redact_value
    from ecrf.auth.services import system_actor
    from ecrf.study.models import Subject
    from ecrf.study.services import change_subject_status

    subject = db.session.scalar(sa.select(Subject).where(Subject.code == "01-001"))
    change_subject_status(system_actor(), subject, "withdrawn", Reason("other", "consent withdrawn"))
    db.session.remove()
    row = [r for r in _trail() if r["subject"] == "01-001" and r["field"] == "status"][-1]
    assert _values()[row["seq"]]["old_value"] == "screening"
    assert _values()[row["seq"]]["new_value"] == "withdrawn"
    redact_value(system_actor(), row["seq"], "old", Reason("other", "old status entered by mistake"))
    db.session.remove()
    redaction = _trail()[-1]
    assert (redaction["action"], redaction["entity_id"], redaction["field"]) == \
        ("audit.redact", str(row["seq"]), "old")
    assert verify(fresh_app).exit_code == 0  # the recorded redaction of the old value is fine
    with db.engine.begin() as conn:  # the guards stay: the trigger lets the new value go too
        conn.execute(VALUES.update().where(VALUES.c.seq == row["seq"])
                     .values(new_value=None, new_salt=None))
    assert _values()[row["seq"]]["new_value"] is None
    assert_fails_at(verify(fresh_app), row["seq"], "without a recorded redaction")
