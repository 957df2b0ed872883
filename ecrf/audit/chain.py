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

import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

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


def verify_rows(rows: Iterable[dict], *, expect_head: tuple[int, str] | None = None,
                stored_head: tuple[int, str] | None = None) -> VerifyResult:
    """Check a stream of rows (ordered by seq) as plain dicts; works on a database or a file.

    Each row needs the HASHED_FIELDS (``format_version`` may stand for ``v``) and ``row_hash``;
    it may carry ``old_value``/``old_salt``/``new_value``/``new_salt``/``redacted_seq``.
    """
    result = VerifyResult()
    expected_seq, prev = 1, GENESIS_HASH
    hash_at_expected = None
    redactions: dict[int, str] = {}  # seq of a redaction record -> the seq it masks
    redacted_sides: set[tuple[str, str]] = set()  # (masked seq, "old"/"new") recorded
    stub_seqs: set[str] = set()
    for row in rows:
        row = dict(row)
        if not is_stub(row):
            row.setdefault("v", row.get("format_version"))
        seq = row["seq"]
        result.rows_checked += 1
        if seq != expected_seq:
            what = "missing rows before it" if seq > expected_seq else "out of order or duplicated"
            result.problems.append((seq, f"seq {seq} where {expected_seq} was expected ({what})"))
        elif row["prev_hash"] != prev:
            result.problems.append((seq, "prev_hash does not match the previous row's hash"))
        elif is_stub(row):
            result.stubs += 1  # outside an export's scope: only its place in the chain is kept
            stub_seqs.add(str(seq))
        elif row_hash(row) != row["row_hash"]:
            result.problems.append((seq, "row content does not match its row_hash"))
        else:
            _check_values(row, result)
            if row["action"] == REDACTION_ACTION:
                redactions[seq] = row["entity_id"]
                redacted_sides.add((row["entity_id"], row["field"]))
        expected_seq, prev = seq + 1, row["row_hash"]
        if expect_head is not None and seq == expect_head[0]:
            hash_at_expected = row["row_hash"]
        result.head_seq, result.head_hash = seq, row["row_hash"]
        if result.problems:
            return result  # the first bad row is the finding; later rows follow from it
    for seq in result.redacted:  # a masked value must name a recorded redaction of itself
        named, sides = result.redaction_claims[seq]
        if str(named) in stub_seqs:
            continue  # the redaction is outside a filtered export: its link is all we have
        if redactions.get(named) != str(seq) or any(
                (str(seq), side) not in redacted_sides for side in sides):
            result.problems.append((seq, "value masked without a recorded redaction"))
            return result
    head = (result.head_seq, result.head_hash)
    if stored_head is not None and stored_head != head:
        result.problems.append((stored_head[0],
                                f"chain head says seq {stored_head[0]} but the trail ends at "
                                f"seq {head[0]} (rows removed or rewritten at the end)"))
    if expect_head is not None:
        exp_seq, exp_hash = expect_head
        if exp_seq > result.head_seq:
            result.problems.append((exp_seq, f"published head seq {exp_seq} is missing"))
        elif hash_at_expected != exp_hash:
            result.problems.append((exp_seq, f"row {exp_seq} differs from the published head "
                                             "(the chain was rewritten from there on)"))
    return result


STUB_FIELDS = frozenset({"seq", "prev_hash", "row_hash"})


def is_stub(row: dict) -> bool:
    """A row of a filtered export outside its scope: its seq and hashes only."""
    return set(row) <= STUB_FIELDS


def _check_values(row: dict, result: VerifyResult) -> None:
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
