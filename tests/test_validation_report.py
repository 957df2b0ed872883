"""The traceability report (``ecrf validate report``): from the JUnit XML of a run of the suite,
each requirement the software claims is met only by a passing test and no failing one; the report
names the software, its commit, the date, the machine and the run, as HTML, PDF and JSON.

The catalogue here is a small one of our own (the real one is checked by the validation run
itself); the JUnit files are written by hand in the shape pytest gives them, and one is written
by pytest itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from pypdf import PdfReader

import ecrf
from ecrf import create_app
from ecrf.validation import report
from ecrf.validation.report import report_command

# the trace itself (P11-10a) and what it offers the operator's risk-based validation (A11-1)
pytestmark = pytest.mark.requirement("P11-10a", "A11-1")

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Requirement:
    """The catalogue's interface (ecrf.validation.requirements.Requirement)."""

    id: str
    source: str
    text: str
    status: str
    how: str


CATALOGUE = {r.id: r for r in (
    Requirement("P11-10a", "21 CFR Part 11", "The system is validated and discerns altered records.",
                "claimed", "The audit chain is verified by recomputing every hash."),
    Requirement("P11-10e-1", "21 CFR Part 11", "A computer-generated, time-stamped audit trail.",
                "claimed", "One audit row per changed value, written in the same transaction."),
    Requirement("A11-4", "EU GMP Annex 11", "Validation documentation covers the life cycle.",
                "partial", "The traceability report of each release."),
    Requirement("P11-10i", "21 CFR Part 11", "People who use the system are trained.",
                "operator", "The site trains its staff; the delegation log records who may do what."),
    Requirement("E6-blind", "ICH E6(R3)", "Blinding is preserved.",
                "not applicable", "Open-label single-arm study: no blinding."),
)}

#: a run that shows every claimed requirement: (test, result, requirement IDs)
SHOWN = [
    ("tests.test_audit_verify::test_an_altered_row_is_found", "passed", "P11-10a"),
    ("tests.test_audit_format::test_one_row_per_change", "passed", "P11-10e-1 P11-10a"),
    ("tests.test_validation::test_the_report_is_written", "passed", "A11-4"),
    ("tests.test_delegation::test_the_log_lists_each_delegate", "passed", "P11-10i"),
    ("tests.test_login::test_the_login_page", "passed", ""),
]

OUTCOME = {
    "passed": "",
    "failed": '<failure message="assert 1 == 2">def test(): assert 1 == 2</failure>',
    "error": '<error message="failed on setup with &quot;OperationalError&quot;">trace</error>',
    "skipped": '<skipped type="pytest.skip" message="needs PostgreSQL">skip</skipped>',
    "xfail": '<skipped type="pytest.xfail" message="not built yet" />',
}


def junit_xml(cases, *, database: str | None = None) -> str:
    """A JUnit file as ``pytest --junitxml`` writes it (xunit2), requirement IDs in each test
    case's properties."""
    body = []
    for test, result, ids in cases:
        classname, name = test.split("::")
        properties = (f'<properties><property name="requirements" value="{ids}" /></properties>'
                      if ids else "")
        body.append(f'<testcase classname="{classname}" name="{name}" time="0.010">'
                    f"{properties}{OUTCOME[result]}</testcase>")
    suite_properties = (f'<properties><property name="database" value="{database}" /></properties>'
                        if database else "")
    return ('<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">'
            f'<testsuite name="pytest" errors="0" failures="0" skipped="0" tests="{len(cases)}" '
            'time="1.0" timestamp="2026-03-02T10:15:00.000000+01:00" hostname="ci-runner">'
            f"{suite_properties}{''.join(body)}</testsuite></testsuites>")


def write_junit(path: Path, cases, **kwargs) -> Path:
    path.write_text(junit_xml(cases, **kwargs), encoding="utf-8")
    return path


@pytest.fixture
def catalogue(monkeypatch):
    monkeypatch.setattr(report, "catalogue", lambda: CATALOGUE)
    return CATALOGUE


def run_report(tmp_path: Path, *runs, database: list[str] | None = None):
    """``ecrf validate report`` on one JUnit file per run; returns the result and the JSON."""
    files = [write_junit(tmp_path / f"junit-{n}.xml", cases) for n, cases in enumerate(runs)]
    args = [a for f in files for a in ("--junit", str(f))] + ["-o", str(tmp_path / "out")]
    args += [a for d in database or [] for a in ("--database", d)]
    result = CliRunner().invoke(report_command, args)
    out = tmp_path / "out" / "traceability.json"
    data = json.loads(out.read_text()) if out.exists() else None
    return result, data


def row(data, requirement_id):
    return next(r for r in data["requirements"] if r["id"] == requirement_id)


def replace(cases, test, result):
    return [(t, result if t.startswith(test) else r, ids) for t, r, ids in cases]


# --- when a requirement is met ---------------------------------------------------------------------


def test_a_claimed_requirement_with_a_passing_test_is_met(catalogue, tmp_path):
    result, data = run_report(tmp_path, SHOWN)
    assert result.exit_code == 0, result.output
    assert data["passed"] is True
    met = row(data, "P11-10a")
    assert met["verdict"] == "met" and met["problems"] == []
    assert [t["id"] for t in met["tests"]] == ["tests.test_audit_format::test_one_row_per_change",
                                                "tests.test_audit_verify::test_an_altered_row_is_found"]
    assert data["summary"] == {"met": 3, "not met": 0, "operator": 1, "not applicable": 1}
    assert data["linked_tests"] == 4 and data["totals"] == {"tests": 5, "passed": 5, "failed": 0,
                                                            "skipped": 0}


def test_a_claimed_requirement_without_a_test_fails_the_command(catalogue, tmp_path):
    without = [c for c in SHOWN if "A11-4" not in c[2]]
    result, data = run_report(tmp_path, without)
    assert result.exit_code == 1
    assert "A11-4 (partial): no test" in result.output
    assert row(data, "A11-4")["verdict"] == "not met" and data["passed"] is False
    assert data["summary"]["not met"] == 1


def test_control_the_same_run_with_a_passing_test_of_it_succeeds(catalogue, tmp_path):
    result, _ = run_report(tmp_path, SHOWN)
    assert result.exit_code == 0, result.output
    assert "not met" not in result.output.replace("0 not met", "")


def test_a_failing_test_fails_its_requirement_though_another_passes(catalogue, tmp_path):
    failing = replace(SHOWN, "tests.test_audit_verify", "failed")
    result, data = run_report(tmp_path, failing)
    assert result.exit_code == 1
    shown = row(data, "P11-10a")
    assert [t["result"] for t in shown["tests"]] == ["passed", "failed"]
    assert shown["verdict"] == "not met"
    assert shown["problems"] == ["failing test tests.test_audit_verify::test_an_altered_row_is_found"]
    assert "P11-10a (claimed): failing test tests.test_audit_verify" in result.output
    assert row(data, "P11-10e-1")["verdict"] == "met"  # the passing test still shows its other one


def test_an_error_in_set_up_is_a_failure(catalogue, tmp_path):
    result, data = run_report(tmp_path, replace(SHOWN, "tests.test_validation", "error"))
    assert result.exit_code == 1
    assert row(data, "A11-4")["tests"][0]["result"] == "failed"
    assert "OperationalError" in row(data, "A11-4")["tests"][0]["message"]


@pytest.mark.parametrize("outcome", ["skipped", "xfail"])
def test_skipped_tests_do_not_count_as_passing(catalogue, tmp_path, outcome):
    result, data = run_report(tmp_path, replace(SHOWN, "tests.test_validation", outcome))
    assert result.exit_code == 1
    assert row(data, "A11-4")["problems"] == ["no passing test"]
    assert data["totals"]["skipped"] == 1


def test_control_with_skips_read_as_passes_the_same_run_would_pass(catalogue, tmp_path, monkeypatch):
    reading = report._result
    monkeypatch.setattr(report, "_result", lambda case: ("passed", "") if
                        reading(case)[0] == "skipped" else reading(case))
    result, data = run_report(tmp_path, replace(SHOWN, "tests.test_validation", "skipped"))
    assert result.exit_code == 0 and row(data, "A11-4")["verdict"] == "met"


def test_a_failing_test_of_an_operator_duty_fails_the_report(catalogue, tmp_path):
    """What the software offers to help the operator must work too."""
    result, data = run_report(tmp_path, replace(SHOWN, "tests.test_delegation", "failed"))
    assert result.exit_code == 1
    duty = row(data, "P11-10i")
    assert duty["verdict"] == "operator" and duty["problems"]
    assert data["summary"]["met"] == 3


def test_a_failing_test_linked_to_no_requirement_is_listed_not_counted(catalogue, tmp_path):
    result, data = run_report(tmp_path, replace(SHOWN, "tests.test_login", "failed"))
    assert result.exit_code == 0
    assert [t["id"] for t in data["unlinked_failures"]] == ["tests.test_login::test_the_login_page"]
    assert "failing test linked to no requirement: tests.test_login" in result.output
    assert data["totals"]["failed"] == 1


# --- several engines -------------------------------------------------------------------------------


def test_a_test_passing_on_one_engine_and_failing_on_the_other_is_failing(catalogue, tmp_path):
    result, data = run_report(tmp_path, SHOWN, replace(SHOWN, "tests.test_validation", "failed"),
                              database=["SQLite 3.46", "PostgreSQL 16"])
    assert result.exit_code == 1
    test = row(data, "A11-4")["tests"][0]
    assert test["result"] == "failed"
    assert test["runs"] == {"SQLite 3.46": "passed", "PostgreSQL 16": "failed"}
    assert test["message"].startswith("PostgreSQL 16: assert 1 == 2")
    assert data["databases"] == ["SQLite 3.46", "PostgreSQL 16"]
    assert [r["totals"]["failed"] for r in data["runs"]] == [0, 1]


def test_control_if_the_best_result_won_the_same_runs_would_pass(catalogue, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "combined", lambda results: "passed" if "passed" in set(results)
                        else "skipped")
    result, _ = run_report(tmp_path, SHOWN, replace(SHOWN, "tests.test_validation", "failed"),
                           database=["SQLite 3.46", "PostgreSQL 16"])
    assert result.exit_code == 0


def test_a_test_skipped_on_one_engine_and_passing_on_the_other_is_passing(catalogue, tmp_path):
    result, data = run_report(tmp_path, replace(SHOWN, "tests.test_validation", "skipped"), SHOWN,
                              database=["SQLite 3.46", "PostgreSQL 16"])
    assert result.exit_code == 0, result.output
    assert row(data, "A11-4")["tests"][0]["result"] == "passed"


def test_the_engine_comes_from_the_suite_property_unless_named(catalogue, tmp_path):
    path = write_junit(tmp_path / "junit.xml", SHOWN, database="PostgreSQL 16.4")
    assert report.read_junit(path).database == "PostgreSQL 16.4"
    assert report.read_junit(path, "SQLite 3.46").database == "SQLite 3.46"
    unnamed = write_junit(tmp_path / "unnamed.xml", SHOWN)
    assert report.read_junit(unnamed).database == "unknown"


def test_database_names_must_pair_with_the_files(catalogue, tmp_path):
    result, data = run_report(tmp_path, SHOWN, SHOWN, SHOWN, database=["SQLite", "PostgreSQL"])
    assert result.exit_code == 2 and "once for every file" in result.output and data is None


# --- what the catalogue does not know --------------------------------------------------------------


def test_an_id_unknown_to_the_catalogue_is_an_error_and_nothing_is_written(catalogue, tmp_path):
    cases = [*SHOWN, ("tests.test_x::test_y", "passed", "P11-99z")]
    result, data = run_report(tmp_path, cases)
    assert result.exit_code == 1
    assert "unknown to the catalogue: P11-99z (in tests.test_x::test_y)" in result.output
    assert data is None and not (tmp_path / "out" / "traceability.pdf").exists()


def test_a_file_that_is_not_junit_is_refused(catalogue, tmp_path):
    (tmp_path / "junit.xml").write_text("<html><body>no</body></html>")
    result = CliRunner().invoke(report_command, ["--junit", str(tmp_path / "junit.xml"),
                                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "not a JUnit XML file" in result.output


# --- the files -------------------------------------------------------------------------------------


def git_head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.requirement("P11-10k")
def test_html_pdf_and_json_name_the_software_the_commit_the_date_and_the_machine(catalogue, tmp_path):
    before = datetime.now(UTC).replace(microsecond=0)
    result, data = run_report(tmp_path, SHOWN, database=["SQLite 3.46"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert data["software"]["version"] == ecrf.__version__
    assert data["software"]["commit"] == git_head()
    generated = datetime.strptime(data["generated_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= generated <= datetime.now(UTC)
    assert data["machine"]["hostname"] and data["machine"]["python"].endswith(
        ".".join(map(str, sys.version_info[:3])))
    run = data["runs"][0]
    junit = tmp_path / "junit-0.xml"
    assert run["sha256"] == hashlib.sha256(junit.read_bytes()).hexdigest()
    assert run["hostname"] == "ci-runner" and run["started"] == "2026-03-02 09:15:00 UTC"
    assert run["totals"] == {"tests": 5, "passed": 5, "failed": 0, "skipped": 0}

    html = (out / "traceability.html").read_text()
    for fact in (ecrf.__version__, git_head(), data["generated_at"], data["machine"]["hostname"],
                 "SQLite 3.46", run["sha256"], "P11-10a", "The audit chain is verified",
                 "Open-label single-arm study"):
        assert fact in html
    assert "http://" not in html and "https://" not in html  # nothing to fetch

    pdf = PdfReader(io.BytesIO((out / "traceability.pdf").read_bytes()))
    text = " ".join(page.extract_text() for page in pdf.pages)
    for requirement_id in CATALOGUE:
        assert requirement_id in text
    assert ecrf.__version__ in text and git_head()[:12] in text and data["generated_at"] in text
    assert f"Page 1 of {len(pdf.pages)}" in text


def test_the_pdf_lists_what_is_not_met(catalogue, tmp_path):
    result, _ = run_report(tmp_path, replace(SHOWN, "tests.test_audit_verify", "failed"))
    assert result.exit_code == 1
    pdf = PdfReader(io.BytesIO((tmp_path / "out" / "traceability.pdf").read_bytes()))
    text = " ".join(page.extract_text() for page in pdf.pages)
    assert "Requirements not met" in text and "failing test" in text


def test_outside_a_checkout_the_commit_comes_from_the_deployment(tmp_path, monkeypatch):
    monkeypatch.setenv("ECRF_COMMIT", "0123abcd")
    assert report.software_commit(tmp_path) == ("0123abcd", None)
    monkeypatch.delenv("ECRF_COMMIT")
    assert report.software_commit(tmp_path) == ("unknown", None)
    assert report.software_commit(ROOT)[0] == git_head()


def test_the_command_is_ecrf_validate_report(catalogue, tmp_path):
    junit = write_junit(tmp_path / "junit.xml", SHOWN)
    app = create_app("test", DATABASE_URL="sqlite://")
    result = app.test_cli_runner().invoke(args=["validate", "report", "--junit", str(junit),
                                                "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "traceability.pdf").read_bytes().startswith(b"%PDF")


# --- the JUnit file pytest writes ------------------------------------------------------------------

SUITE = '''
import pytest

@pytest.mark.requirement("P11-10a", "A11-4")
def test_shown():
    pass

@pytest.mark.requirement("P11-10e-1")
def test_broken():
    assert 1 == 2

@pytest.mark.requirement("P11-10e-1")
def test_later():
    pytest.skip("not yet")
'''

#: how tests/conftest.py copies the markers' IDs into the JUnit properties
PLUGIN = '''
def pytest_configure(config):
    config.addinivalue_line("markers", "requirement(*ids): requirements a test shows")

def pytest_collection_modifyitems(items):
    for item in items:
        ids = {i for m in item.iter_markers("requirement") for i in m.args}
        if ids:
            item.user_properties.append(("requirements", " ".join(sorted(ids))))
'''


def test_the_junit_file_written_by_pytest_is_read(catalogue, tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_example.py").write_text(SUITE)
    (suite / "conftest.py").write_text(PLUGIN)
    (suite / "pytest.ini").write_text("[pytest]\n")
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "-p", "no:randomly", f"--junitxml={junit}", str(suite)],
                   cwd=suite, capture_output=True, check=False)
    cases = report.read_junit(junit).cases
    assert {c.id: (c.result, sorted(c.requirements)) for c in cases.values()} == {
        "test_example::test_shown": ("passed", ["A11-4", "P11-10a"]),
        "test_example::test_broken": ("failed", ["P11-10e-1"]),
        "test_example::test_later": ("skipped", ["P11-10e-1"]),
    }
    result = CliRunner().invoke(report_command, ["--junit", str(junit), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert ("P11-10e-1 (claimed): no passing test; failing test test_example::test_broken"
            in result.output)
