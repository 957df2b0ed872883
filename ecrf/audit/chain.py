"""The hash chain over ``audit_trail`` and its verification (21 CFR 11.10(a)(e), ALCOA+).

Format version 1, documented in docs/audit-trail.md:
- ``row_hash`` = SHA-256 (hex) of the canonical JSON of the row's HASHED_FIELDS (keys sorted, no
  spaces, UTF-8, ``recorded_at`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``), ``prev_hash`` included;
- the first row's ``prev_hash`` is 64 zeros;
- each value enters as ``SHA-256(salt + ":" + value)`` (hex), with a fresh random salt kept beside
  the value in ``audit_value``; a missing value has a null digest.
Appends take the row lock on ``audit_chain_head``, so ``seq`` and ``recorded_at`` (the database
clock) are assigned in one order even when several app servers share the database.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import sqlalchemy as sa

from ecrf.audit.models import AuditRecord, AuditValue, ChainHead

FORMAT_VERSION = 1
#: the action of the audit record that masks a kept value (its entity_id is the masked seq)
REDACTION_ACTION = "audit.redact"
GENESIS_HASH = "0" * 64
HASHED_FIELDS = (
    "v", "seq", "recorded_at", "user_id", "username", "role", "actor_site", "grant_id",
    "action", "entity_type", "entity_id", "site", "subject", "visit", "form", "item", "field",
    "old_digest", "new_digest", "reason_code", "reason_text", "request_id", "client",
    "prev_hash",
)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(row: dict) -> bytes:
    content = {k: row[k] for k in HASHED_FIELDS}
    if isinstance(content["recorded_at"], datetime):
        content["recorded_at"] = format_time(content["recorded_at"])
    return canonical_json(content)


#: value types for which orjson writes exactly the bytes of the definition below
_ORJSON_TYPES = frozenset({str, int, type(None)})


def canonical_json(content: dict) -> bytes:
    """Step 4 of the format: ``json.dumps(content, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` in UTF-8.

    orjson writes those very bytes for text, integers and null (every value a row holds), several
    times faster (tests/test_audit_verify_speed_equivalence.py compares the two); anything else -
    a float or a list in a tampered file, an integer beyond 64 bits, a lone surrogate - goes
    through json itself, the definition.
    """
    if set(map(type, content.values())) <= _ORJSON_TYPES:
        try:
            return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(row: dict) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


def value_digest(salt: str | None, value: str | None) -> str | None:
    if value is None:
        return None
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()


def _lock_head(conn: sa.Connection):
    """Lock the chain head for the rest of the transaction and read the database clock."""
    head = ChainHead.__table__
    if conn.dialect.name == "postgresql":
        stmt = sa.select(head.c.last_seq, head.c.last_hash, head.c.last_recorded_at,
                         sa.func.clock_timestamp()).where(head.c.id == 1).with_for_update()
        seq, last_hash, last_at, now = conn.execute(stmt).one()
    else:  # SQLite: BEGIN IMMEDIATE already holds the database write lock
        stmt = sa.select(head.c.last_seq, head.c.last_hash, head.c.last_recorded_at)
        seq, last_hash, last_at = conn.execute(stmt.where(head.c.id == 1)).one()
        now = datetime.now(UTC)
    if last_at is not None:
        last_at = last_at.replace(tzinfo=UTC) if last_at.tzinfo is None else last_at
        now = max(now, last_at)  # one clock, never running backwards along the chain
    return seq, last_hash, now


def lock(session) -> None:
    """Take the chain lock now (it is held until the transaction ends), to read-then-write safely."""
    _lock_head(session.connection())


def append(session, uow) -> list[int]:
    """Append the unit of work's events to the chain, inside its transaction; their seqs."""
    if not uow.events:
        return []
    conn = session.connection()
    seq, prev, now = _lock_head(conn)
    actor = uow.actor
    rows, values = [], []
    for ev in uow.events:
        seq += 1
        old_salt = secrets.token_hex(16) if ev["old"] is not None else None
        new_salt = secrets.token_hex(16) if ev["new"] is not None else None
        row = {
            "v": FORMAT_VERSION, "seq": seq, "recorded_at": now,
            "user_id": actor.user_id, "username": actor.username, "role": actor.role,
            "actor_site": actor.site, "grant_id": actor.grant_id,
            "action": ev["action"], "entity_type": ev["entity_type"], "entity_id": ev["entity_id"],
            "site": ev["site"], "subject": ev["subject"], "visit": ev["visit"],
            "form": ev["form"], "item": ev["item"], "field": ev["field"],
            "old_digest": value_digest(old_salt, ev["old"]),
            "new_digest": value_digest(new_salt, ev["new"]),
            "reason_code": ev["reason_code"], "reason_text": ev["reason_text"],
            "request_id": uow.request_id, "client": uow.client, "prev_hash": prev,
        }
        row["row_hash"] = prev = row_hash(row)
        row["format_version"] = row.pop("v")
        rows.append(row)
        values.append({"seq": seq, "old_salt": old_salt, "old_value": ev["old"],
                       "new_salt": new_salt, "new_value": ev["new"]})
    conn.execute(sa.insert(AuditRecord.__table__), rows)
    conn.execute(sa.insert(AuditValue.__table__), values)
    conn.execute(
        sa.update(ChainHead.__table__).where(ChainHead.__table__.c.id == 1)
        .values(last_seq=seq, last_hash=prev, last_recorded_at=now)
    )
    uow.events.clear()
    return [r["seq"] for r in rows]


# --- verification -------------------------------------------------------------------------


@dataclass
class VerifyResult:
    rows_checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    problems: list[tuple[int, str]] = field(default_factory=list)
    redacted: list[int] = field(default_factory=list)
    #: masked row seq -> (the seq its audit_value names as the redaction, the sides masked)
    redaction_claims: dict[int, tuple[int, set[str]]] = field(default_factory=dict)
    #: rows of a filtered export kept as stubs (seq, prev_hash, row_hash): linked, not readable
    stubs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        return self.problems[0][0] if self.problems else None


def verify_rows(rows: Iterable[Mapping], *, expect_head: tuple[int, str] | None = None,
                stored_head: tuple[int, str] | None = None) -> VerifyResult:
    """Check a stream of rows (ordered by seq) as plain dicts; works on a database or a file.

    Each row needs the HASHED_FIELDS (``format_version`` may stand for ``v``) and ``row_hash``;
    it may carry ``old_value``/``old_salt``/``new_value``/``new_salt``/``redacted_seq``.
    """
    scan = _Scan(expect_head)
    for row in rows:
        if not scan.check(row):
            return scan.result  # the first bad row is the finding; later rows follow from it
    return scan.finish(stored_head)


STUB_FIELDS = frozenset({"seq", "prev_hash", "row_hash"})
PREV_HASH_PROBLEM = "prev_hash does not match the previous row's hash"


def is_stub(row: Mapping) -> bool:
    """A row of a filtered export outside its scope: its seq and hashes only."""
    return len(row) <= len(STUB_FIELDS) and set(row) <= STUB_FIELDS


def _seq_problem(seq, expected_seq) -> str:
    what = "missing rows before it" if seq > expected_seq else "out of order or duplicated"
    return f"seq {seq} where {expected_seq} was expected ({what})"


class _Scan:
    """A check along the chain: what the next row must link to, and what was seen so far.

    ``verify_rows`` runs one over all rows. ``verify_db`` runs one per range of seqs (possibly in
    other processes), each anchored at its own first row, and joins them in order: the first row
    of each range is then checked against the end of the range before, so the findings are those
    of one scan over all rows.
    """

    def __init__(self, expect_head: tuple[int, str] | None = None, *, anchored: bool = True):
        self.result = VerifyResult()
        self.expect_head = expect_head
        self.expected_seq, self.prev = (1, GENESIS_HASH) if anchored else (None, None)
        #: (seq, prev_hash, row_hash) of the first row of an unanchored scan
        self.first: tuple | None = None
        self.hash_at_expected = None
        self.saw_expected = False
        self.redactions: dict[int, str] = {}  # seq of a redaction record -> the seq it masks
        self.redacted_sides: set[tuple[str, str]] = set()  # (masked seq, "old"/"new") recorded
        self.stub_seqs: set[str] = set()

    def check(self, row: Mapping) -> bool:
        """The reference check of one row; False once a problem is found."""
        stub = is_stub(row)
        if not stub and "v" not in row:
            row = {**row, "v": row.get("format_version")}
        result = self.result
        seq = row["seq"]
        if self.expected_seq is None:  # unanchored: ``join`` checks this row's link
            self.first = (seq, row["prev_hash"], row["row_hash"])
            self.expected_seq, self.prev = seq, row["prev_hash"]
        result.rows_checked += 1
        if seq != self.expected_seq:
            result.problems.append((seq, _seq_problem(seq, self.expected_seq)))
        elif row["prev_hash"] != self.prev:
            result.problems.append((seq, PREV_HASH_PROBLEM))
        elif stub:
            result.stubs += 1  # outside an export's scope: only its place in the chain is kept
            self.stub_seqs.add(str(seq))
        elif row_hash(row) != row["row_hash"]:
            result.problems.append((seq, "row content does not match its row_hash"))
        else:
            _check_values(row, result)
            if row["action"] == REDACTION_ACTION:
                self.redactions[seq] = row["entity_id"]
                self.redacted_sides.add((row["entity_id"], row["field"]))
        self.expected_seq, self.prev = seq + 1, row["row_hash"]
        if self.expect_head is not None and seq == self.expect_head[0]:
            self.hash_at_expected, self.saw_expected = row["row_hash"], True
        result.head_seq, result.head_hash = seq, row["row_hash"]
        return not result.problems

    def join(self, part: _Scan) -> bool:
        """Go on with an unanchored scan of the rows that follow; False once a problem is found."""
        if part.first is None:
            return True  # no rows in its range
        result = self.result
        seq, prev_hash, first_hash = part.first
        if seq != self.expected_seq or prev_hash != self.prev:
            result.rows_checked += 1
            result.problems.append((seq, _seq_problem(seq, self.expected_seq)
                                    if seq != self.expected_seq else PREV_HASH_PROBLEM))
            result.head_seq, result.head_hash = seq, first_hash
            return False
        found = part.result
        result.rows_checked += found.rows_checked
        result.problems += found.problems
        result.redacted += found.redacted
        result.redaction_claims.update(found.redaction_claims)
        result.stubs += found.stubs
        result.head_seq, result.head_hash = found.head_seq, found.head_hash
        self.redactions.update(part.redactions)
        self.redacted_sides |= part.redacted_sides
        self.stub_seqs |= part.stub_seqs
        if part.saw_expected:
            self.hash_at_expected, self.saw_expected = part.hash_at_expected, True
        self.expected_seq, self.prev = part.expected_seq, part.prev
        return not result.problems

    def finish(self, stored_head: tuple[int, str] | None) -> VerifyResult:
        """The checks once every row is read: masked values, the stored and the published head."""
        result = self.result
        for seq in result.redacted:  # a masked value must name a recorded redaction of itself
            named, sides = result.redaction_claims[seq]
            if str(named) in self.stub_seqs:
                continue  # the redaction is outside a filtered export: its link is all we have
            if self.redactions.get(named) != str(seq) or any(
                    (str(seq), side) not in self.redacted_sides for side in sides):
                result.problems.append((seq, "value masked without a recorded redaction"))
                return result
        head = (result.head_seq, result.head_hash)
        if stored_head is not None and stored_head != head:
            result.problems.append((stored_head[0],
                                    f"chain head says seq {stored_head[0]} but the trail ends at "
                                    f"seq {head[0]} (rows removed or rewritten at the end)"))
        if self.expect_head is not None:
            exp_seq, exp_hash = self.expect_head
            if exp_seq > result.head_seq:
                result.problems.append((exp_seq, f"published head seq {exp_seq} is missing"))
            elif self.hash_at_expected != exp_hash:
                result.problems.append((exp_seq, f"row {exp_seq} differs from the published head "
                                                 "(the chain was rewritten from there on)"))
        return result


def _check_values(row: Mapping, result: VerifyResult) -> None:
    if "old_value" not in row and "new_value" not in row:
        return
    for side in ("old", "new"):
        value, salt, digest = row.get(f"{side}_value"), row.get(f"{side}_salt"), row[f"{side}_digest"]
        if value is None and salt is None and digest is not None:
            if row.get("redacted_seq"):
                if row["seq"] not in result.redaction_claims:
                    result.redacted.append(row["seq"])
                claim = result.redaction_claims.setdefault(row["seq"], (row["redacted_seq"], set()))
                claim[1].add(side)
                continue
            result.problems.append((row["seq"], f"{side} value missing without a redaction"))
            return
        if value_digest(salt, value) != digest:
            result.problems.append((row["seq"], f"kept {side} value does not match its digest"))
            return


# --- verification of the stored trail, fast -------------------------------------------------

#: the hashed fields in sorted order: a dict built in this order is already canonically sorted
_SORTED_FIELDS = tuple(sorted(HASHED_FIELDS))
_KEPT_FIELDS = ("old_salt", "old_value", "new_salt", "new_value", "redacted_seq")
#: one row as ``verify_db`` reads it: the hashed fields, the row's hash, its kept values
_DB_FIELDS = _SORTED_FIELDS + ("row_hash", *_KEPT_FIELDS)
(_AT, _SEQ, _PREV, _ACTION, _OLD_DIGEST, _NEW_DIGEST, _ROW_HASH, _OLD_SALT, _OLD_VALUE, _NEW_SALT,
 _NEW_VALUE) = (_DB_FIELDS.index(k) for k in (
    "recorded_at", "seq", "prev_hash", "action", "old_digest", "new_digest", "row_hash",
    "old_salt", "old_value", "new_salt", "new_value"))
_COLUMNS = ", ".join("t.format_version" if k == "v" else f"v.{k}" if k in _KEPT_FIELDS else f"t.{k}"
                     for k in _DB_FIELDS)
#: the range bounds the values too: each query then reads only its range of both tables, whatever
#: the planner's statistics (a freshly restored database has none)
_RANGE_SQL = (f"SELECT {_COLUMNS} FROM audit_trail t LEFT JOIN audit_value v "  # noqa: S608 (constant names)
              "ON v.seq = t.seq AND v.seq > %(lo)s AND v.seq <= %(hi)s "
              "WHERE t.seq > %(lo)s AND t.seq <= %(hi)s ORDER BY t.seq")
#: PostgreSQL types whose values psycopg gives as int, str or datetime (see _scan_db_rows)
_PLAIN_TYPES = frozenset({"int2", "int4", "int8", "text", "varchar", "timestamptz"})
#: rows per range of seqs: one query, one task of a worker process
RANGE_ROWS = 20_000


def _scan_db_rows(scan: _Scan, rows: Iterable[tuple], fast: bool = True) -> bool:
    """Check rows read as tuples (in the order of _DB_FIELDS); False once a problem is found.

    The usual row - linked to the one before, its hash and its kept values matching, not a
    redaction - is proven here without the reference's per-row dict copies, and with one time
    formatting per run of rows sharing a time stamp (a transaction's). Any other row goes through
    ``_Scan.check``, so what is reported is exactly what ``verify_rows`` reports. ``fast`` is
    False when a column is not of its usual type (orjson is the canonical writer only for int,
    str and null): then every row goes through the reference.
    """
    sha, dumps, fields, redact = hashlib.sha256, orjson.dumps, _SORTED_FIELDS, REDACTION_ACTION
    expected, prev = scan.expected_seq, scan.prev
    expect_seq = scan.expect_head[0] if scan.expect_head is not None else None
    last_at = last_text = row = None
    checked = 0
    content = dict.fromkeys(fields)  # refilled for each row: its keys stay in sorted order
    fill = content.update
    for row in rows:
        seq, at = row[_SEQ], row[_AT]
        if at != last_at:
            last_at, last_text = at, format_time(at) if isinstance(at, datetime) else at
        fill(zip(fields, row, strict=False))  # the hashed fields come first
        content["recorded_at"] = last_text
        old, new = row[_OLD_VALUE], row[_NEW_VALUE]
        if (fast and seq == expected and row[_PREV] == prev and row[_ACTION] != redact
                and sha(dumps(content)).hexdigest() == row[_ROW_HASH]
                and (row[_OLD_DIGEST] is None if old is None else row[_OLD_DIGEST]
                     == sha(f"{row[_OLD_SALT]}:{old}".encode()).hexdigest())
                and (row[_NEW_DIGEST] is None if new is None else row[_NEW_DIGEST]
                     == sha(f"{row[_NEW_SALT]}:{new}".encode()).hexdigest())):
            checked += 1
            expected, prev = seq + 1, row[_ROW_HASH]
            if seq == expect_seq:
                scan.hash_at_expected, scan.saw_expected = prev, True
            continue
        scan.result.rows_checked += checked
        checked = 0
        scan.expected_seq, scan.prev = expected, prev
        if not scan.check(dict(zip(_DB_FIELDS, row, strict=True))):
            return False
        expected, prev = scan.expected_seq, scan.prev
    scan.result.rows_checked += checked
    scan.expected_seq, scan.prev = expected, prev
    if row is not None:
        scan.result.head_seq, scan.result.head_hash = row[_SEQ], row[_ROW_HASH]
    return True


def _scan_range(conn, bounds: tuple[int, int], expect_head) -> _Scan:
    """Check the rows with ``lo < seq <= hi``, anchored at the first of them.

    The cyclic garbage collector is paused meanwhile: the scan makes no cycles, and its passes
    over the many short-lived row tuples took a third of the time of reading them.
    """
    from psycopg.pq import version as pq_version

    scan = _Scan(expect_head, anchored=False)
    collecting = gc.isenabled()
    gc.disable()
    try:
        with conn.cursor(binary=True) as cur:
            # in chunks of rows: the server sends the next ones while these are checked (libpq
            # before 17 streams only row by row)
            chunk = 1000 if pq_version() >= 170000 else 1
            rows = cur.stream(_RANGE_SQL, {"lo": bounds[0], "hi": bounds[1]}, size=chunk)
            try:
                first = next(rows, None)
                if first is not None:
                    fast = all(getattr(cur.adapters.types.get(c.type_code), "name", None)
                               in _PLAIN_TYPES for c in cur.description)
                    _scan_db_rows(scan, itertools.chain((first,), rows), fast)
            finally:
                rows.close()  # after an early finding: the rest of the range is not read
    finally:
        if collecting:
            gc.enable()
    return scan


#: a worker process's connection inside the snapshot being verified (or why it has none)
_worker_conn = None


def _start_worker(conninfo: str, snapshot: str) -> None:
    from psycopg import sql

    global _worker_conn
    try:
        _worker_conn = _snapshot_connection(conninfo)
        _worker_conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(snapshot))
    except Exception as e:  # raised by its first task: a failed initializer only breaks the pool
        _worker_conn = e


def _worker_scan(bounds: tuple[int, int], expect_head) -> _Scan:
    if isinstance(_worker_conn, Exception):
        raise _worker_conn
    return _scan_range(_worker_conn, bounds, expect_head)


def _snapshot_connection(conninfo: str):
    """A read-only connection whose whole transaction sees one snapshot.

    Its planner reads a range by walking both primary keys in seq order (a merge join, no sort)
    also without statistics, as in a database just restored, where it would otherwise hash and
    sort at twice the cost.
    """
    import psycopg

    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute("SET enable_hashjoin = off")
    conn.execute("SET enable_bitmapscan = off")
    conn.autocommit = False
    conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
    return conn


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def verify_db(session, *, expect_head: tuple[int, str] | None = None, workers: int | None = None,
              range_rows: int = RANGE_ROWS) -> VerifyResult:
    """``verify_rows`` of the stored trail against its stored head: the same findings, faster.

    On PostgreSQL the rows are read as plain tuples (not through the ORM's per-row types), the
    rows and the head in one snapshot (they agree even while others append), by ranges of seqs
    that worker processes check in parallel when the trail is long: each has its own connection
    importing that snapshot, and the ranges are joined in order. This reads what is committed;
    a session bound to one connection (a test's rolled-back transaction) and SQLite keep the
    plain path through the session.
    """
    bind = session.get_bind()
    if bind.dialect.name != "postgresql" or not isinstance(bind, sa.Engine):
        return verify_rows(iter_db_rows(session), expect_head=expect_head,
                           stored_head=stored_head(session))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    conninfo = bind.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with _snapshot_connection(conninfo) as conn:
        head = conn.execute("SELECT last_seq, last_hash FROM audit_chain_head WHERE id = 1").fetchone()
        if head is None:
            raise LookupError("audit_chain_head has no row")
        low, high = conn.execute("SELECT min(seq), max(seq) FROM audit_trail").fetchone()
        ranges = [] if low is None else [
            (lo, min(lo + range_rows, high)) for lo in range(low - 1, high, range_rows)]
        workers = min(workers or _cpus(), len(ranges))
        stored = (int(head[0]), head[1])
        # fork only from a single-threaded process (a CLI run): a lock held by another thread
        # would stay taken in the child (the executor forks all its workers before its thread)
        if workers > 1 and threading.active_count() == 1 and \
                "fork" in multiprocessing.get_all_start_methods():
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                     initializer=_start_worker,
                                     initargs=(conninfo, snapshot)) as pool:
                parts = [pool.submit(_worker_scan, bounds, expect_head) for bounds in ranges]
                try:
                    return join_scans((part.result() for part in parts), expect_head, stored)
                finally:  # after an early finding, the ranges not started are not read
                    pool.shutdown(cancel_futures=True)
        return join_scans((_scan_range(conn, bounds, expect_head) for bounds in ranges),
                          expect_head, stored)


def join_scans(parts: Iterable[_Scan], expect_head: tuple[int, str] | None,
               stored_head: tuple[int, str] | None) -> VerifyResult:
    """The findings of unanchored scans of consecutive rows, as one ``verify_rows`` of them all."""
    scan = _Scan(expect_head)
    for part in parts:
        if not scan.join(part):
            return scan.result  # the first bad row is the finding; the rest is not read
    return scan.finish(stored_head)


def scan_tuples(rows: Iterable[tuple], expect_head: tuple[int, str] | None = None, *,
                fast: bool = True) -> _Scan:
    """An unanchored scan of rows given as tuples in the order of ``_DB_FIELDS``."""
    scan = _Scan(expect_head, anchored=False)
    _scan_db_rows(scan, rows, fast)
    return scan


def iter_db_rows(session, batch: int = 5000) -> Iterator[dict]:
    """Stream the trail with its values, ordered by seq, in keyset-paginated batches."""
    trail, values = AuditRecord.__table__, AuditValue.__table__
    cols = [trail] + [values.c.old_salt, values.c.old_value, values.c.new_salt,
                      values.c.new_value, values.c.redacted_seq]
    last = 0
    while True:
        stmt = (sa.select(*cols).select_from(trail.outerjoin(values, values.c.seq == trail.c.seq))
                .where(trail.c.seq > last).order_by(trail.c.seq).limit(batch))
        chunk = session.execute(stmt).mappings().all()
        if not chunk:
            return
        yield from chunk
        last = chunk[-1]["seq"]


def stored_head(session) -> tuple[int, str]:
    head = session.execute(sa.select(ChainHead.last_seq, ChainHead.last_hash)).one()
    return int(head[0]), head[1]
