"""The audit trail as JSON lines, for checking away from the system (a regulator's own verifier).

The first line states the export: the chain head it was cut from (last seq and hash), when,
and the filters. Each following line is one audit row in order of seq, with every hashed field,
its hashes, and its kept values with their salts (the format of docs/audit-trail.md). A filtered
export (a site, a time window) keeps the rows outside its scope as stubs - seq, prev_hash,
row_hash - so the chain still links from the first row to the head and any change to a row in
scope is detected. ``verify_file`` checks a file alone, and names the line of a problem.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO

import orjson

from ecrf.audit import chain
from ecrf.database import utcnow

KEPT = ("old_salt", "old_value", "new_salt", "new_value", "redacted_seq")
#: the fields of a row in scope: what is hashed, the hash, and the kept values
FULL_KEYS = frozenset(chain.HASHED_FIELDS) | {"row_hash"} | frozenset(KEPT)


@dataclass(frozen=True)
class Filters:
    site: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def admits(self, row) -> bool:
        if self.site is not None and row["site"] != self.site:
            return False
        at = row["recorded_at"]
        return (self.since is None or at >= self.since) and (self.until is None or at < self.until)

    def as_dict(self) -> dict:
        return {"site": self.site,
                "from": chain.format_time(self.since) if self.since else None,
                "to": chain.format_time(self.until) if self.until else None}


def _full(row) -> dict:
    out = {k: row[k] for k in chain.HASHED_FIELDS if k not in ("v", "recorded_at")}
    out["v"] = row["format_version"]
    out["recorded_at"] = chain.format_time(row["recorded_at"])
    out["row_hash"] = row["row_hash"]
    out.update({k: row[k] for k in KEPT})
    return out


def lines(session, filters: Filters = Filters()) -> Iterator[str]:
    """The export, line by line (streamed from the database in batches)."""
    head_seq, head_hash = chain.stored_head(session)
    header = {"format": chain.FORMAT_VERSION, "head": {"seq": head_seq, "hash": head_hash},
              "exported_at": chain.format_time(utcnow()), "filters": filters.as_dict()}
    yield _json({"export": {**header, "digest": header_digest(header)}}) + "\n"
    for row in chain.iter_db_rows(session):
        if row["seq"] > head_seq:
            break  # appended while exporting: after the head this export states
        content = _full(row) if filters.admits(row) else {
            k: row[k] for k in ("seq", "prev_hash", "row_hash")}
        yield _json(content) + "\n"


def _json(content: dict) -> str:
    """Compact and key-sorted: every byte of a line is part of its content."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def header_digest(header: dict) -> str:
    """SHA-256 of the header's own content (head, time, filters): a changed header is seen."""
    return hashlib.sha256(_json({k: v for k, v in header.items() if k != "digest"})
                          .encode()).hexdigest()


def write(session, out: IO[bytes], filters: Filters = Filters(), progress=None) -> int:
    """Write the export to a binary file; the number of rows written."""
    total = chain.stored_head(session)[0]
    rows = -1
    for line in lines(session, filters):
        out.write(line.encode("utf-8"))
        rows += 1
        if progress is not None and rows % 5000 == 0:
            progress(rows, total)
    return rows


@dataclass
class FileCheck:
    result: chain.VerifyResult
    head: tuple[int, str] | None
    #: (line number, what) of the first problem, if any
    problem: tuple[int, str] | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _as_written(raw: bytes) -> dict | None:
    """The object on a line exactly as the export writes it, else None.

    orjson reads several times faster than json. A line that is byte for byte the canonical JSON
    of what orjson read is one that json reads alike; any other line (not UTF-8, not JSON, an
    integer beyond 64 bits that orjson reads as a float, a line not written by the export) is left
    to json, whose reading and messages are the definition.
    """
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return row if type(row) is dict and chain.canonical_json(row) + b"\n" == raw else None


def verify_file(path: str) -> FileCheck:
    """Check an export from the file alone: JSON, chain, kept values, and the stated head."""
    line_of: dict[int, int] = {}
    head: tuple[int, str] | None = None
    bad: list[tuple[int, str]] = []

    def rows() -> Iterator[dict]:
        nonlocal head
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                row = _as_written(raw)
                if row is None:  # json names what is wrong, if anything
                    try:
                        row = json.loads(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        bad.append((number, "not valid UTF-8"))
                        return
                    except ValueError as e:
                        bad.append((number, f"not valid JSON ({e.msg})"))
                        return
                    if not isinstance(row, dict) or (_json(row) + "\n").encode() != raw:
                        bad.append((number, "the line is not as the export writes it (compact, "
                                            "keys sorted)"))
                        return
                if number == 1 and "export" in row:
                    header = row["export"]
                    if header.get("digest") != header_digest(header):
                        bad.append((1, "the header does not match its digest"))
                        return
                    stated = header.get("head") or {}
                    head = (stated.get("seq"), stated.get("hash"))
                    continue
                if set(row) != FULL_KEYS and set(row) != chain.STUB_FIELDS:
                    bad.append((number, "not an audit row (its fields are not the export's)"))
                    return
                line_of[row["seq"]] = number
                yield row

    try:
        result = chain.verify_rows(rows())
    except (KeyError, TypeError) as e:
        return FileCheck(chain.VerifyResult(), head, (len(line_of) + 1,
                                                      f"a field is missing or malformed ({e})"))
    if bad:
        return FileCheck(result, head, bad[0])
    if head is None:
        return FileCheck(result, head, (1, "the first line does not state the head it was cut from"))
    if not result.ok:
        seq, why = result.problems[0]
        return FileCheck(result, head, (line_of.get(seq, 0), f"seq {seq}: {why}"))
    if head != (result.head_seq, result.head_hash):
        return FileCheck(result, head, (len(line_of) + 1, f"the file ends at seq {result.head_seq}, "
                                                          f"not at the head it states ({head[0]})"))
    return FileCheck(result, head)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def filters_from(options: dict) -> Filters:
    return Filters(options.get("site") or None, _parse_time(options.get("from")),
                   _parse_time(options.get("to")))


def _register_writer() -> None:
    from ecrf.exports.jobs import writer
    from ecrf.extensions import db

    @writer("audit_jsonl")
    def write_audit_jsonl(scope, out, progress, options):
        """The chain export (the scope's site, if any, filters it; stubs keep the chain)."""
        filters = filters_from({**options, "site": options.get("site") or (
            scope.site.code if scope.site is not None else None)})
        write(db.session, out, filters, progress)


_register_writer()
