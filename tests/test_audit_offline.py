"""Offline verification: the audit trail exported as JSON lines is checked from the file alone;
a filtered export keeps the rows outside its scope as stubs so the chain still links; the export
states the head it was cut from; any changed byte is detected and its line named."""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from ecrf.audit import chain
from ecrf.audit.export import Filters, verify_file, write
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.database import utcnow
from ecrf.extensions import db

DOCS = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def trail(make):
    """Two sites with a subject each and a saved form: a few hundred audit rows."""
    for site in ("01", "02"):
        saved = save_form(system_actor(), make.subject(site), "toy_vitals", Slot("D1"),
                          Submitted({"weight": "70", "fever": "N", "comment": "Café crème"}))
        assert saved.ok, saved.errors


def _export(tmp_path, filters: Filters | None = None, name="trail.jsonl") -> Path:
    path = tmp_path / name
    with path.open("wb") as out:
        write(db.session, out, filters or Filters())
    return path


@pytest.mark.requirement("P11-10b", "P11-10e-3", "A11-17")
def test_a_whole_export_verifies_from_the_file_alone_and_states_its_head(trail, tmp_path):
    path = _export(tmp_path)
    found = verify_file(str(path))
    assert found.ok, found.problem
    head = chain.stored_head(db.session)
    assert found.head == head and found.result.rows_checked == head[0]
    assert found.result.stubs == 0
    header = json.loads(path.read_text(encoding="utf-8").splitlines()[0])["export"]
    assert header["head"] == {"seq": head[0], "hash": head[1]} and header["filters"]["site"] is None


@pytest.mark.requirement("P11-10e-3")
def test_a_site_export_keeps_other_sites_rows_as_linked_stubs(trail, tmp_path):
    path = _export(tmp_path, Filters(site="01"))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    full = [r for r in rows if "action" in r]
    stubs = [r for r in rows if "action" not in r]
    assert full and stubs and all(r["site"] == "01" for r in full)
    assert all(set(r) == {"seq", "prev_hash", "row_hash"} for r in stubs)
    assert not any("02-" in json.dumps(r) for r in stubs)  # nothing of site 02 but the hashes
    found = verify_file(str(path))
    assert found.ok, found.problem
    assert found.result.stubs == len(stubs) and found.result.rows_checked == len(rows)


@pytest.mark.requirement("P11-10e-3")
def test_a_time_window_export_keeps_rows_outside_it_as_stubs(trail, tmp_path):
    future = Filters(since=utcnow() + timedelta(days=1))
    path = _export(tmp_path, future)
    found = verify_file(str(path))
    assert found.ok and found.result.stubs == found.result.rows_checked


def _flip(data: bytes, position: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 0x01
    return bytes(changed)


@pytest.mark.requirement("P11-10a")
def test_any_changed_byte_is_detected_and_its_line_named(trail, tmp_path):
    path = _export(tmp_path, Filters(site="01"))
    data = path.read_bytes()
    line_starts = [0] + [m.end() for m in re.finditer(b"\n", data)][:-1]
    rng = random.Random(11)
    positions = sorted(rng.sample(range(len(data) - 1), 150)) + [
        data.index(b'"head"') + 10, data.index(b'"row_hash"') + 15, data.index(b"Caf") + 3]
    for position in positions:
        if data[position:position + 1] == b"\n":
            continue
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(_flip(data, position))
        found = verify_file(str(bad))
        line = sum(1 for start in line_starts if start <= position)
        assert not found.ok, f"byte {position} changed and not detected"
        assert found.problem[0] in (line, line + 1), (position, line, found.problem)


def test_negative_control_the_untouched_copy_verifies(trail, tmp_path):
    path = _export(tmp_path)
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(path.read_bytes())
    assert verify_file(str(copy)).ok


@pytest.mark.requirement("P11-10a")
def test_removing_a_line_or_cutting_the_end_is_named(trail, tmp_path):
    path = _export(tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    without = tmp_path / "without.jsonl"
    without.write_text("".join(lines[:5] + lines[6:]), encoding="utf-8")
    found = verify_file(str(without))
    assert not found.ok and "seq 6" in found.problem[1]
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:-3]), encoding="utf-8")
    assert not verify_file(str(cut)).ok  # the stated head is missing


def test_rows_appended_after_the_head_are_not_in_the_export(trail, make, tmp_path):
    lines = []
    out = io.BytesIO()
    generator = __import__("ecrf.audit.export", fromlist=["lines"]).lines(db.session)
    lines.append(next(generator))  # the head is read now
    make.user("late-comer")  # more rows appended meanwhile
    lines.extend(generator)
    for line in lines:
        out.write(line.encode())
    path = tmp_path / "cut-at-head.jsonl"
    path.write_bytes(out.getvalue())
    found = verify_file(str(path))
    assert found.ok and found.result.head_seq == found.head[0] < chain.stored_head(db.session)[0]


@pytest.mark.requirement("P11-10a")
def test_the_cli_exports_and_verifies_and_names_a_changed_byte(trail, runner, make, tmp_path):
    make.user("ada", role="auditor")
    out = tmp_path / "cli.jsonl"
    done = runner.invoke(args=["audit", "export", "--site", "01", "--as", "ada", "-o", str(out)])
    assert done.exit_code == 0, done.output
    checked = runner.invoke(args=["audit", "verify", "--file", str(out)])
    assert checked.exit_code == 0 and "Chain OK" in checked.output, checked.output
    data = out.read_bytes()
    out.write_bytes(_flip(data, data.index(b'"reason_text"') + 16))
    failed = runner.invoke(args=["audit", "verify", "--file", str(out)])
    assert failed.exit_code == 1 and re.search(r"FAILED at line \d+", failed.output)


@pytest.mark.requirement("P11-10e-3")
def test_the_cli_export_is_an_audit_record_and_needs_audit_view(trail, runner, make, tmp_path):
    from tests.factories import audit_rows

    make.user("mon", role="monitor", site="01")
    refused = runner.invoke(args=["audit", "export", "--as", "mon", "-o", str(tmp_path / "x")])
    assert refused.exit_code != 0 and "audit.view" in refused.output
    make.user("ada", role="auditor")
    assert runner.invoke(args=["audit", "export", "--as", "ada", "-o",
                               str(tmp_path / "y.jsonl")]).exit_code == 0
    [done] = audit_rows(action="export.done")
    assert done.username == "ada" and "sha256:" in done.value.new_value


def _readme_verifier() -> str:
    text = DOCS.read_text(encoding="utf-8")
    return re.search(r"## Checking an audit export offline.*?```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.requirement("ALCOA-enduring")
def test_the_readme_verifier_accepts_an_export_and_rejects_a_changed_one(trail, tmp_path):
    script = tmp_path / "verify.py"
    script.write_text(_readme_verifier(), encoding="utf-8")
    path = _export(tmp_path, Filters(site="02"))
    ok = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stdout + ok.stderr
    data = path.read_bytes()
    path.write_bytes(_flip(data, data.index(b'"username"') + 13))
    bad = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "line" in (bad.stdout + bad.stderr)
