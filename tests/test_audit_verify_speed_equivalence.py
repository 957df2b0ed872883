"""The fast verification finds exactly what the reference finds, and hashes the same bytes.

``ecrf audit verify`` reads the stored trail through ``chain.verify_db``: plain tuples, orjson
for the canonical JSON, ranges of seqs checked apart (in worker processes on PostgreSQL) and
joined. Each shortcut is checked here against its definition: orjson's bytes against
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` for any text and
integer; the tuple scan, cut into ranges anywhere, against ``verify_rows`` over chains with
arbitrary content and tampering (every field of ``VerifyResult``, not only the first bad seq);
``verify_db`` on a real database, tampered by its owner, against ``verify_rows`` of
``iter_db_rows``; and a line of an export file that orjson reads against json's reading of it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ecrf.audit import chain, export
from ecrf.audit.reasons import Reason
from ecrf.audit.redaction import redact_value
from ecrf.auth.services import system_actor
from ecrf.extensions import db
from tests.factories import Factories
from tests.test_audit_tamper import HEAD, TRAIL, VALUES, _build_history, _trail, as_owner


def definition(content: dict) -> bytes:
    """Step 4 of docs/audit-trail.md, word for word."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def outcome(encode, content):
    try:
        return encode(content)
    except Exception as e:  # both must fail alike where the definition fails (a lone surrogate)
        return type(e)


#: text as a row may hold it, with the characters JSON writers treat specially, often
TRICKY = st.sampled_from(['"', "\\", "/", "\x00", "\x1f", "\x7f", "\x85", "\u2028", "\u2029",
                          "\ufeff", "\U0001f600", "é", "\b\f\n\r\t", "</script>", "\\u0041"])
TEXT = st.one_of(st.text(st.characters(codec="utf-8"), max_size=12), TRICKY,
                 st.lists(TRICKY, max_size=4).map("".join))
INTS = st.one_of(st.integers(-2**63, 2**64 - 1), st.integers())  # beyond 64 bits: json's way
VALUES_ANY = st.one_of(st.none(), TEXT, INTS, st.text(max_size=4))  # the last may hold surrogates


@settings(max_examples=1000, deadline=None)
@given(st.fixed_dictionaries({k: VALUES_ANY for k in chain.HASHED_FIELDS}))
def test_orjson_writes_the_definitions_bytes_for_any_text_and_integer(content):
    assert outcome(chain.canonical_json, content) == outcome(definition, content)


@pytest.mark.parametrize("odd", [float("nan"), 1e16, 1.0, True, [1, "a"], {"b": 1, "a": None}],
                         ids=["nan", "float", "one", "bool", "list", "dict"])
def test_values_of_other_types_go_through_json_itself(odd):
    """A tampered file may hold them; orjson would write NaN as null and 1e16 otherwise."""
    content = dict.fromkeys(chain.HASHED_FIELDS, "x") | {"reason_text": odd}
    assert chain.canonical_json(content) == definition(content)


# --- the tuple scan, cut into ranges, against verify_rows -----------------------------------

ACTIONS = st.sampled_from(["subject.update", "item.update", "site.create", chain.REDACTION_ACTION])
AT = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                  timezones=st.sampled_from([UTC, timezone(timedelta(hours=1)),
                                             timezone(timedelta(hours=-9, minutes=-30))]))


def _row_hash(row: dict) -> str:
    content = {k: row[k] for k in chain.HASHED_FIELDS}
    content["recorded_at"] = row["recorded_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return hashlib.sha256(definition(content)).hexdigest()


def _digest(salt, value):
    return None if value is None else hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()


#: the text fields drawn per row (the others are fixed: fewer draws, the same code paths)
DRAWN = ("username", "entity_id", "site", "field", "reason_text", "client")
SALT = st.one_of(st.none(), st.text("0123456789abcdef", min_size=32, max_size=32))


def _append(rows: list[dict], draw, **fixed) -> dict:
    prev = rows[-1]["row_hash"] if rows else chain.GENESIS_HASH
    row = dict.fromkeys(chain.HASHED_FIELDS, "x")
    row.update(zip(DRAWN, draw(st.tuples(*[st.one_of(st.none(), TEXT)] * len(DRAWN))), strict=True))
    row.update(v=1, seq=len(rows) + 1, user_id=draw(st.integers(1, 2**31)),
               grant_id=draw(st.one_of(st.none(), st.integers(1, 2**31))),
               action=draw(ACTIONS), recorded_at=draw(AT), redacted_seq=None, prev_hash=prev)
    for side in ("old", "new"):
        kept, salt = draw(st.tuples(st.one_of(st.none(), TEXT), SALT))
        row[f"{side}_value"], row[f"{side}_salt"] = kept, salt if kept is not None else None
        row[f"{side}_digest"] = _digest(row[f"{side}_salt"], kept)
    row.update(fixed)
    row["row_hash"] = _row_hash(row)
    rows.append(row)
    return row


def _rehash_from(rows: list[dict], i: int) -> None:
    """The forger who knows the format: every row from i on hashes right again."""
    for k in range(i, len(rows)):
        rows[k]["prev_hash"] = rows[k - 1]["row_hash"] if k else chain.GENESIS_HASH
        rows[k]["row_hash"] = _row_hash(rows[k])


@st.composite
def tampered_chains(draw):
    rows: list[dict] = []
    for _ in range(draw(st.integers(0, 14))):
        _append(rows, draw)
    for _ in range(draw(st.integers(0, 3))):  # recorded redactions, maybe also of the other side
        kept = [(r, s) for r in rows for s in ("old", "new") if r[f"{s}_value"] is not None]
        if kept:
            target, side = draw(st.sampled_from(kept))
            red = _append(rows, draw, action=chain.REDACTION_ACTION, entity_id=str(target["seq"]),
                          field=side)
            target.update({f"{side}_value": None, f"{side}_salt": None, "redacted_seq": red["seq"]})
    published = [(r["seq"], r["row_hash"]) for r in rows]
    n = len(rows)
    for _ in range(draw(st.integers(0, 2))):
        if not rows:
            break
        i = draw(st.integers(0, len(rows) - 1))
        how = draw(st.sampled_from(["field", "hash", "value", "mask", "delete", "duplicate",
                                    "swap", "rewrite", "redact_other"]))
        row = rows[i]
        if how in ("field", "rewrite"):
            key = draw(st.sampled_from([k for k in chain.HASHED_FIELDS if k != "recorded_at"]))
            new = draw(st.integers(0, n + 2) if key == "seq" else st.one_of(st.none(), TEXT, INTS))
            row[key] = new
            if how == "rewrite":
                _rehash_from(rows, i)
        elif how == "hash":
            row[draw(st.sampled_from(["row_hash", "prev_hash"]))] = draw(st.sampled_from(
                [r["row_hash"] for r in rows] + ["f" * 64]))
        elif how == "value":
            row[draw(st.sampled_from(["old_value", "new_value", "old_salt", "new_salt"]))] = \
                draw(st.one_of(st.none(), TEXT))
        elif how in ("mask", "redact_other"):
            side = draw(st.sampled_from(["old", "new"]))
            row.update({f"{side}_value": None, f"{side}_salt": None})
            row["redacted_seq"] = draw(st.one_of(st.none(), st.integers(0, n + 2))) \
                if how == "mask" else row["redacted_seq"] or n + 1
        elif how == "delete":
            rows.pop(i)
        elif how == "duplicate":
            rows.insert(i, dict(row))
        elif how == "swap":
            j = draw(st.integers(0, len(rows) - 1))
            rows[i], rows[j] = rows[j], rows[i]
    expect = draw(st.one_of(st.none(), st.sampled_from(published or [(1, "0" * 64)]),
                            st.tuples(st.integers(0, n + 2), st.sampled_from(["a" * 64]))))
    stored = draw(st.one_of(st.none(), st.just(published[-1] if published else (0, "0" * 64)),
                            st.tuples(st.integers(0, n + 2), st.sampled_from(["b" * 64]))))
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    return rows, expect, stored, cuts


def _as_tuple(row: dict) -> tuple:
    return tuple(row[k] for k in chain._DB_FIELDS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tampered_chains(), st.booleans())
def test_the_tuple_scan_cut_into_ranges_finds_what_verify_rows_finds(case, fast):
    rows, expect, stored, cuts = case
    if fast:  # what PostgreSQL's integer columns can hold (other types take the reference path)
        assume(all(-2**63 <= x < 2**63 for r in rows for x in r.values() if type(x) is int))
    reference = chain.verify_rows([dict(r) for r in rows], expect_head=expect, stored_head=stored)
    bounds = [0, *cuts, len(rows)]
    parts = [chain.scan_tuples([_as_tuple(r) for r in rows[a:b]], expect, fast=fast)
             for a, b in zip(bounds, bounds[1:], strict=False)]
    assert chain.join_scans(parts, expect, stored) == reference


def test_an_untampered_chain_is_proven_by_the_fast_path_alone(monkeypatch):
    """The negative control of the comparison above: the reference is not what did the work."""
    rows: list[dict] = []
    for seq in range(1, 6):
        row = {k: f"{k}-{seq}" for k in chain.HASHED_FIELDS}
        row.update(v=1, seq=seq, user_id=seq, grant_id=None, action="item.update",
                   recorded_at=datetime(2026, 1, 15, 9, 30, seq, tzinfo=UTC), old_value=None,
                   old_salt=None, old_digest=None, new_value="Café", new_salt="ab" * 16,
                   redacted_seq=None, prev_hash=rows[-1]["row_hash"] if rows else "0" * 64)
        row["new_digest"] = _digest(row["new_salt"], row["new_value"])
        row["row_hash"] = _row_hash(row)
        rows.append(row)
    calls, check = [], chain._Scan.check
    monkeypatch.setattr(chain._Scan, "check", lambda self, row: calls.append(row["seq"])
                        or check(self, row))
    scan = chain.scan_tuples([_as_tuple(r) for r in rows])
    assert calls == [1]  # the anchor of the range only
    assert chain.join_scans([scan], None, (5, rows[-1]["row_hash"])).ok
    rows[3]["new_value"] = "Cafe"  # and a row the fast path cannot prove goes to the reference
    scan = chain.scan_tuples([_as_tuple(r) for r in rows])
    assert calls == [1, 1, 4] and scan.result.problems == [(4, "kept new value does not match its digest")]


# --- verify_db on a real database, tampered by its owner ------------------------------------


def _mid(history, **match):
    found = [r for r in history if all(r[k] == v for k, v in match.items())]
    return found[len(found) // 2]


def _change_a_row(history):
    with as_owner() as conn:
        conn.execute(TRAIL.update().where(TRAIL.c.seq == _mid(history, reason_text="site created")
                                          ["seq"]).values(reason_text="changed"))


def _delete_a_row(history):
    gone = history[len(history) // 2]["seq"]
    with as_owner() as conn:
        conn.execute(VALUES.delete().where(VALUES.c.seq == gone))
        conn.execute(TRAIL.delete().where(TRAIL.c.seq == gone))


def _delete_a_value(history):
    with as_owner() as conn:
        conn.execute(VALUES.delete().where(VALUES.c.seq == _mid(history, field="name")["seq"]))


def _change_a_value(history):
    with as_owner() as conn:
        conn.execute(VALUES.update().where(VALUES.c.seq == _mid(history, field="name")["seq"])
                     .values(new_value="Another site"))


def _mask_a_value(history, redacted_seq=None):
    with as_owner() as conn:
        conn.execute(VALUES.update().where(VALUES.c.seq == _mid(history, field="name")["seq"])
                     .values(new_value=None, new_salt=None, redacted_seq=redacted_seq))


def _redact(history):
    redact_value(system_actor(), _mid(history, entity_type="user", field="email")["seq"], "new",
                 Reason("other", "a patient's name typed in the e-mail field"))
    db.session.remove()


def _redact_then_mask_another(history):
    _redact(history)
    _mask_a_value(history, redacted_seq=_trail()[-1]["seq"])


def _cut_the_end(history):
    last = history[-1]["seq"]
    with as_owner() as conn:
        conn.execute(VALUES.delete().where(VALUES.c.seq >= last - 1))
        conn.execute(TRAIL.delete().where(TRAIL.c.seq >= last - 1))


def _rewrite_and_rehash(history):
    k = _mid(history, reason_text="site created")["seq"]
    rows = _trail()
    with as_owner() as conn:
        prev = rows[k - 2]["row_hash"]
        for row in rows[k - 1:]:
            row["reason_text"] = f"{row['reason_text']} (rewritten)"
            row["prev_hash"] = prev
            row["row_hash"] = prev = chain.row_hash({**row, "v": row["format_version"]})
            conn.execute(TRAIL.update().where(TRAIL.c.seq == row["seq"]).values(
                reason_text=row["reason_text"], prev_hash=row["prev_hash"], row_hash=prev))
        conn.execute(HEAD.update().values(last_hash=prev))


TAMPERING = [None, _change_a_row, _delete_a_row, _delete_a_value, _change_a_value, _mask_a_value,
             _redact, _redact_then_mask_another, _cut_the_end, _rewrite_and_rehash]


@pytest.mark.requirement("P11-10a")
@pytest.mark.parametrize("tamper", TAMPERING, ids=lambda t: t.__name__.strip("_") if t else "none")
def test_verify_db_finds_what_verify_rows_finds(fresh_app, engine_name, tamper):
    _build_history()
    history = _trail()
    if tamper:
        tamper(history)
    published = [None, (history[-1]["seq"], history[-1]["row_hash"]),
                 (history[len(history) // 2]["seq"], history[len(history) // 2]["row_hash"]),
                 (history[-1]["seq"] + 5, "c" * 64)]
    # the pool of worker processes is used only from a single-threaded process
    assert engine_name != "postgresql" or threading.active_count() == 1
    for expect in published:
        db.session.remove()
        reference = chain.verify_rows(chain.iter_db_rows(db.session), expect_head=expect,
                                      stored_head=chain.stored_head(db.session))
        db.session.remove()
        for workers, range_rows in ((1, 4), (2, 3), (2, 10), (None, chain.RANGE_ROWS)):
            found = chain.verify_db(db.session, expect_head=expect, workers=workers,
                                    range_rows=range_rows)
            assert found == reference, (expect, workers, range_rows)


def test_verify_db_reads_the_rows_and_the_head_in_one_snapshot(fresh_app, engine_name,
                                                             monkeypatch):
    """Rows appended while the trail is read are not a finding: the head is read with the rows."""
    if engine_name != "postgresql":
        pytest.skip("SQLite keeps the plain path: one connection, nothing appended meanwhile")
    _build_history()
    db.session.remove()
    appended = []
    scan_range = chain._scan_range

    def scan_then_append(conn, bounds, expect_head):
        if not appended:
            appended.append(Factories().subject("02").code)  # committed by another session
            db.session.remove()
        return scan_range(conn, bounds, expect_head)

    monkeypatch.setattr(chain, "_scan_range", scan_then_append)
    result = chain.verify_db(db.session, workers=1, range_rows=5)
    assert appended and result.ok, result.problems
    assert result.rows_checked < len(_trail())


# --- reading an exported file -----------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, st.floats(), TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6)
LINES = st.dictionaries(st.sampled_from(sorted(export.FULL_KEYS)) | TEXT, JSON_VALUES, max_size=6)


@st.composite
def export_lines(draw):
    """Lines as the export writes them, as others might write them, and with bytes changed."""
    content = draw(LINES)
    compact = draw(st.booleans())
    raw = json.dumps(content, sort_keys=compact, separators=(",", ":") if compact else None,
                     ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass") + b"\n"
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.sampled_from([b"", b"\\", b'"', b"1e16", b"\xff", b"\xef\xbb\xbf",
                                               b"NaN", b"\\ud800", b",", b" "])) + raw[at + 1:]
    return raw


@settings(max_examples=1000, deadline=None)
@given(export_lines())
def test_a_line_orjson_reads_is_one_json_reads_alike(raw):
    row = export._as_written(raw)
    if row is not None:
        assert (export._json(json.loads(raw.decode("utf-8"))) + "\n").encode() == raw
        assert export._json(row) == export._json(json.loads(raw.decode("utf-8")))
