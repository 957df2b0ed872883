"""The documented format of the hash chain (format version 1, docs/audit-trail.md) is pinned.

Hand-made sample rows with fixed values give literal canonical bytes and hashes: a change to the
serialisation breaks these tests, as it would break every verifier written from the docs. Then a
verifier written here with ``hashlib`` and ``json`` only (no ecrf import) re-checks a trail exported
from a real database with plain SQL, and so does the verifier printed in the docs, run as a script
of its own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ecrf.audit import chain
from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import Reason
from ecrf.audit.redaction import redact_value
from ecrf.auth.services import system_actor
from ecrf.study.services import change_subject_status

DOCS = Path(__file__).resolve().parent.parent / "docs" / "audit-trail.md"

SALT_1 = "a3f1c2d4e5b60718293a4b5c6d7e8f90"
SALT_2 = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
SALT_3 = "5a5a5a5a0123456789abcdef5a5a5a5a"
DIGEST_SITE_NAME = "c80fde82f67465a4361f04fd99110e4a47bcfc18f5b91f75a7a0299b7c6a0fcd"
DIGEST_SCREENING = "bc4d3998133f0ace0dfa063a78f22ec82367cdd80bb47de5fca04c7687deed17"
DIGEST_WITHDRAWN = "3dfe8241b9bf3369792bbca7f2c0ee100ad82841ac2772b67e93bc65cdd87c3b"

ROW_1 = {
    "v": 1, "seq": 1, "recorded_at": datetime(2026, 1, 15, 9, 30, 0, tzinfo=UTC),
    "user_id": 1, "username": "system", "role": None, "actor_site": None, "grant_id": None,
    "action": "site.create", "entity_type": "site", "entity_id": "1", "site": "01",
    "subject": None, "visit": None, "form": None, "item": None, "field": "name",
    "old_digest": None, "new_digest": DIGEST_SITE_NAME, "reason_code": "system",
    "reason_text": "site created", "request_id": "3f2b8c1e-0d4a-4c57-9a71-5b0f6a2d9e10",
    "client": None, "prev_hash": "0" * 64,
}
HASH_1 = "0f633b920e02dcf2aeb29e6306111a6be6375882b16b90ca3db97e704fbe6379"
CANONICAL_1 = (
    '{"action":"site.create","actor_site":null,"client":null,"entity_id":"1",'
    '"entity_type":"site","field":"name","form":null,"grant_id":null,"item":null,'
    '"new_digest":"c80fde82f67465a4361f04fd99110e4a47bcfc18f5b91f75a7a0299b7c6a0fcd",'
    '"old_digest":null,'
    '"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"reason_code":"system","reason_text":"site created",'
    '"recorded_at":"2026-01-15T09:30:00.000000Z",'
    '"request_id":"3f2b8c1e-0d4a-4c57-9a71-5b0f6a2d9e10","role":null,"seq":1,"site":"01",'
    '"subject":null,"user_id":1,"username":"system","v":1,"visit":null}'
)

ROW_2 = {
    "v": 1, "seq": 2,
    # recorded at UTC+01:00: serialised in UTC
    "recorded_at": datetime(2026, 1, 15, 10, 45, 12, 345678, tzinfo=timezone(timedelta(hours=1))),
    "user_id": 7, "username": "dr.müller", "role": "investigator", "actor_site": "01",
    "grant_id": 3, "action": "subject.update", "entity_type": "subject", "entity_id": "12",
    "site": "01", "subject": "01-012", "visit": None, "form": None, "item": None,
    "field": "status", "old_digest": DIGEST_SCREENING, "new_digest": DIGEST_WITHDRAWN,
    "reason_code": "other", "reason_text": "Retrait du consentement — appel du 14/01",
    "request_id": "9c0d7e52-61b3-4f8a-b2e4-07d1c3a5f6b9", "client": "192.0.2.10",
    "prev_hash": HASH_1,
}
HASH_2 = "5bc54d8eccc159ae6aef37d6baedf73d56a53cbbfdee02b22b7023779cd2880a"
CANONICAL_2 = (
    '{"action":"subject.update","actor_site":"01","client":"192.0.2.10","entity_id":"12",'
    '"entity_type":"subject","field":"status","form":null,"grant_id":3,"item":null,'
    '"new_digest":"3dfe8241b9bf3369792bbca7f2c0ee100ad82841ac2772b67e93bc65cdd87c3b",'
    '"old_digest":"bc4d3998133f0ace0dfa063a78f22ec82367cdd80bb47de5fca04c7687deed17",'
    '"prev_hash":"0f633b920e02dcf2aeb29e6306111a6be6375882b16b90ca3db97e704fbe6379",'
    '"reason_code":"other","reason_text":"Retrait du consentement — appel du 14/01",'
    '"recorded_at":"2026-01-15T09:45:12.345678Z",'
    '"request_id":"9c0d7e52-61b3-4f8a-b2e4-07d1c3a5f6b9","role":"investigator","seq":2,'
    '"site":"01","subject":"01-012","user_id":7,"username":"dr.müller","v":1,"visit":null}'
)

ROW_3 = {
    "v": 1, "seq": 3, "recorded_at": datetime(2026, 1, 15, 9, 45, 12, 345678, tzinfo=UTC),
    "user_id": 7, "username": "dr.müller", "role": None, "actor_site": None, "grant_id": None,
    "action": "auth.logout", "entity_type": "user", "entity_id": "7", "site": None,
    "subject": None, "visit": None, "form": None, "item": None, "field": None,
    "old_digest": None, "new_digest": None, "reason_code": None, "reason_text": None,
    "request_id": "e4a1b2c3-d5e6-47f8-9a0b-1c2d3e4f5a6b", "client": "2001:db8::1",
    "prev_hash": HASH_2,
}
HASH_3 = "f7e381cdbf2d7b9ab56b1e331a1a3988fc8120438875f39a5dc99d0f0a1985f7"
CANONICAL_3 = (
    '{"action":"auth.logout","actor_site":null,"client":"2001:db8::1","entity_id":"7",'
    '"entity_type":"user","field":null,"form":null,"grant_id":null,"item":null,'
    '"new_digest":null,"old_digest":null,'
    '"prev_hash":"5bc54d8eccc159ae6aef37d6baedf73d56a53cbbfdee02b22b7023779cd2880a",'
    '"reason_code":null,"reason_text":null,"recorded_at":"2026-01-15T09:45:12.345678Z",'
    '"request_id":"e4a1b2c3-d5e6-47f8-9a0b-1c2d3e4f5a6b","role":null,"seq":3,"site":null,'
    '"subject":null,"user_id":7,"username":"dr.müller","v":1,"visit":null}'
)

SAMPLES = [(ROW_1, CANONICAL_1, HASH_1), (ROW_2, CANONICAL_2, HASH_2), (ROW_3, CANONICAL_3, HASH_3)]


# --- the format, pinned --------------------------------------------------------------------


def test_the_format_constants():
    assert chain.FORMAT_VERSION == 1
    assert chain.GENESIS_HASH == "0" * 64
    assert chain.HASHED_FIELDS == (
        "v", "seq", "recorded_at", "user_id", "username", "role", "actor_site", "grant_id",
        "action", "entity_type", "entity_id", "site", "subject", "visit", "form", "item",
        "field", "old_digest", "new_digest", "reason_code", "reason_text", "request_id",
        "client", "prev_hash",
    )


@pytest.mark.requirement("EMA-3")
def test_every_column_of_the_trail_is_hashed_except_the_hash_itself():
    columns = {c.name for c in AuditRecord.__table__.columns}
    assert (columns - {"row_hash", "format_version"}) | {"v"} == set(chain.HASHED_FIELDS)


@pytest.mark.requirement("E6-4.2.2d", "ALCOA-consistent")
@pytest.mark.parametrize(("row", "expected", "_hash"), SAMPLES, ids=["row1", "row2", "row3"])
def test_canonical_serialisation_of_the_sample_rows(row, expected, _hash):
    canonical = chain.canonical(row)
    assert canonical == expected.encode("utf-8")
    assert b"\\u" not in canonical  # non-ASCII as itself in UTF-8, never escaped


@pytest.mark.parametrize(("row", "_canonical", "expected"), SAMPLES, ids=["row1", "row2", "row3"])
def test_row_hash_of_the_sample_rows(row, _canonical, expected):
    assert chain.row_hash(row) == expected


@pytest.mark.requirement("ALCOA-consistent")
def test_the_sample_rows_form_a_chain_that_verifies():
    rows = [{**row, "row_hash": expected} for row, _, expected in SAMPLES]
    result = chain.verify_rows(rows)
    assert result.ok and (result.head_seq, result.head_hash) == (3, HASH_3)
    rows[1] = {**rows[1], "reason_text": "Retrait du consentement"}
    assert chain.verify_rows(rows).first_bad_seq == 2


def test_value_digest_is_salted_sha256_of_salt_colon_value():
    assert chain.value_digest(SALT_1, "Hôpital Saint-Éloi") == DIGEST_SITE_NAME
    assert chain.value_digest(SALT_2, "screening") == DIGEST_SCREENING
    assert chain.value_digest(SALT_3, "withdrawn") == DIGEST_WITHDRAWN
    assert chain.value_digest(SALT_1, None) is None  # a missing value has a null digest
    # the salt matters: the same value under another salt has another digest
    assert chain.value_digest(SALT_2, "withdrawn") != DIGEST_WITHDRAWN


def test_the_docs_show_the_pinned_samples():
    docs = DOCS.read_text(encoding="utf-8")
    for _, canonical, expected in SAMPLES:
        assert canonical in docs
        assert f"`row_hash` = `{expected}`" in docs
    assert DIGEST_SITE_NAME in docs and SALT_1 in docs and SALT_2 in docs and SALT_3 in docs
    assert "YYYY-MM-DDTHH:MM:SS.ffffffZ" in docs
    assert ", ".join(f"`{f}`" for f in chain.HASHED_FIELDS) in " ".join(docs.split())


# --- anyone can re-check the chain with a few lines of their own code ----------------------

FIELDS = ("v", "seq", "recorded_at", "user_id", "username", "role", "actor_site", "grant_id", "action",
          "entity_type", "entity_id", "site", "subject", "visit", "form", "item", "field", "old_digest",
          "new_digest", "reason_code", "reason_text", "request_id", "client", "prev_hash")


def independent_verify(export: list[str]) -> str:
    """Only hashlib and json: returns 'SEQ:HASH' of the head, or raises naming the bad seq."""
    import hashlib

    def sha256(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    prev, masked, redactions = "0" * 64, [], set()
    for n, line in enumerate(export, start=1):
        row = json.loads(line)
        body = json.dumps({k: row[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)
        if row["seq"] != n or row["prev_hash"] != prev or sha256(body) != row["row_hash"]:
            raise ValueError(f"chain broken at seq {n}")
        if row["action"] == "audit.redact":
            redactions.add((row["entity_id"], row["field"]))
        for side in ("old", "new"):
            value, digest = row.get(f"{side}_value"), row[f"{side}_digest"]
            if value is None and digest is not None:
                masked.append((str(n), side))
            elif value is not None and sha256(f"{row[side + '_salt']}:{value}") != digest:
                raise ValueError(f"{side} value does not match its digest at seq {n}")
        prev = row["row_hash"]
    for seq, side in masked:
        if (seq, side) not in redactions:
            raise ValueError(f"{side} value masked without a recorded redaction at seq {seq}")
    return f"{len(export)}:{prev}"


def _docs_block(language: str, first_line: str | None = None) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    if first_line is not None:
        blocks = [b for b in blocks if b.startswith(first_line + "\n")]
    assert len(blocks) == 1, (language, first_line)
    return blocks[0]


def _export(db, engine_name: str) -> list[str]:
    """The trail as JSON lines, by the plain-SQL export query of the docs for this engine."""
    query = _docs_block("sql", f"-- export: {engine_name}").strip().rstrip(";")
    lines = db.session.execute(sa.text(query)).scalars().all()
    assert all(isinstance(line, str) for line in lines)
    return lines


@pytest.fixture
def history(make, db):
    """Some committed history, including one recorded redaction; its number of rows."""
    make.site("01")
    make.user("zoe", role="investigator", site="01", full_name="Zoë Çelik")
    subject = make.subject("01")
    make.subject("01")
    change_subject_status(system_actor(), subject, "withdrawn", Reason("other", "consent withdrawn"))
    email = db.session.scalar(sa.select(AuditRecord.seq).where(AuditRecord.field == "email"))
    redact_value(system_actor(), email, "new", Reason("other", "private address"))
    status = db.session.scalar(sa.select(sa.func.max(AuditRecord.seq)).where(
        AuditRecord.field == "status", AuditRecord.old_digest.is_not(None)))
    redact_value(system_actor(), status, "old", Reason("other", "old status entered by mistake"))
    count = db.session.execute(sa.text("SELECT count(*) FROM audit_trail")).scalar_one()
    assert count >= 10
    assert chain.verify_rows(chain.iter_db_rows(db.session)).redacted == [email, status]
    return count


#: the kept values of the sample rows (audit_value), as the docs give them
SAMPLE_VALUES = [
    {"new_salt": SALT_1, "new_value": "Hôpital Saint-Éloi"},
    {"old_salt": SALT_2, "old_value": "screening", "new_salt": SALT_3, "new_value": "withdrawn"},
    {},
]


def test_the_independent_verifier_agrees_with_the_pinned_samples():
    def line(row, expected, values):
        return json.dumps({**row, "recorded_at": chain.format_time(row["recorded_at"]),
                           "row_hash": expected, **values}, ensure_ascii=False)

    lines = [line(r, h, v) for (r, _, h), v in zip(SAMPLES, SAMPLE_VALUES, strict=True)]
    assert independent_verify(lines) == f"3:{HASH_3}"
    broken = list(lines)
    broken[2] = broken[2].replace("auth.logout", "auth.login")
    with pytest.raises(ValueError, match="chain broken at seq 3"):
        independent_verify(broken)
    broken = list(lines)
    broken[1] = broken[1].replace('"withdrawn"', '"included"')
    with pytest.raises(ValueError, match="new value does not match its digest at seq 2"):
        independent_verify(broken)


@pytest.mark.requirement("P11-10a")
def test_an_independent_verifier_rechecks_a_trail_exported_from_the_database(history, db,
                                                                              engine_name):
    export = _export(db, engine_name)
    assert len(export) == history
    assert any("ë" in line for line in export)  # non-ASCII kept as itself through the export
    head = chain.stored_head(db.session)
    assert independent_verify(export) == f"{head[0]}:{head[1]}"
    # the same verifier finds a changed value, a changed row, a value gone, at their seq
    rows = [json.loads(line) for line in export]
    n = next(r["seq"] for r in rows if r["new_value"] == "Zoë Çelik")
    for change, why in (({"new_value": "Zoe Celik"}, "new value does not match its digest"),
                        ({"username": "alice"}, "chain broken"),
                        ({"new_value": None, "new_salt": None},
                         "new value masked without a recorded redaction")):
        tampered = [json.dumps({**r, **change} if r["seq"] == n else r, ensure_ascii=False)
                    for r in rows]
        with pytest.raises(ValueError, match=f"{why} at seq {n}"):
            independent_verify(tampered)


@pytest.mark.requirement("ALCOA-enduring")
def test_the_verifier_printed_in_the_docs_runs_on_its_own(history, db, engine_name, tmp_path):
    script = tmp_path / "verify.py"
    script.write_text(_docs_block("python"), encoding="utf-8")
    assert len(script.read_text().splitlines()) <= 30
    export = _export(db, engine_name)
    good = tmp_path / "trail.jsonl"
    good.write_text("\n".join(export) + "\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-I", str(script), str(good)], capture_output=True,
                         text=True, encoding="utf-8", timeout=60, check=False)
    head = chain.stored_head(db.session)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"OK: {history} rows, head {head[0]}:{head[1]}"
    # a row dropped from the middle of the export
    bad = tmp_path / "dropped.jsonl"
    bad.write_text("\n".join(export[:4] + export[5:]) + "\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-I", str(script), str(bad)], capture_output=True,
                         text=True, encoding="utf-8", timeout=60, check=False)
    assert run.returncode == 1 and "chain broken at seq 5" in run.stderr
    # a value removed without a redaction
    rows = [json.loads(line) for line in export]
    n = next(r["seq"] for r in rows if r["new_value"] == "Zoë Çelik")
    bad = tmp_path / "masked.jsonl"
    bad.write_text("".join(json.dumps({**r, "new_value": None} if r["seq"] == n else r,
                                      ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run = subprocess.run([sys.executable, "-I", str(script), str(bad)], capture_output=True,
                         text=True, encoding="utf-8", timeout=60, check=False)
    assert run.returncode == 1
    assert f"new value masked without a recorded redaction at seq {n}" in run.stderr
    # the other side of a row whose old value was redacted, removed with no redaction of its own
    n = next(r["seq"] for r in rows if r["field"] == "status" and r["old_digest"] and r["redacted_seq"])
    assert next(r for r in rows if r["seq"] == n)["new_value"] == "withdrawn"
    bad.write_text("".join(json.dumps({**r, "new_value": None, "new_salt": None} if r["seq"] == n else r,
                                      ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run = subprocess.run([sys.executable, "-I", str(script), str(bad)], capture_output=True,
                         text=True, encoding="utf-8", timeout=60, check=False)
    assert run.returncode == 1
    assert f"new value masked without a recorded redaction at seq {n}" in run.stderr
