"""``ecrf validate report``: the traceability matrix of one validation run.

From the JUnit XML of one run of the test suite (one file per database engine: ``make validate``
writes them), the report links every requirement of the catalogue
(``ecrf.validation.requirements``) to the tests that show it and their results, and writes it as
``traceability.html``, ``traceability.pdf`` and ``traceability.json`` with what identifies the
run: software version and commit, date (UTC), machine, database engines, each JUnit file's SHA-256
and the test totals.

How results are decided, so that the report cannot read better than the run was:

- a test case is *failed* when its XML holds a ``<failure>`` or an ``<error>`` (an error in
  set-up or tear-down fails the test), *skipped* when it holds ``<skipped>`` (an expected failure,
  xfail, is a skip: it shows nothing works), *passed* otherwise;
- a test found in several files (one per engine) is failed if it failed in any, passed if it
  passed in at least one and failed in none, skipped otherwise: a test passing on SQLite and
  failing on PostgreSQL is failing;
- a requirement the software claims (status ``claimed`` or ``partial``) is met when at least one of
  its tests passed and none failed: a failing test is evidence against it, whatever else passes;
- a failing test linked to an operator's duty (or to a requirement marked not applicable) fails
  the report too: what the software offers to help there does not work.

The files are written first; then the command exits 1 and lists every requirement not met. An ID
in a JUnit file that the catalogue does not know is an error and nothing is written: the run and
the catalogue do not belong together.

The report is English, like the rest of the console's output and the requirement statements: it
is filed with the sponsor's validation documents, it is not a page of the interface. It reads files
only and needs no app or database.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from lxml import etree

import ecrf

#: the package's checkout (when run from one): where ``git rev-parse HEAD`` is asked
CHECKOUT = Path(ecrf.__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "validation"
TEMPLATE = "report.html"
STYLESHEET = TEMPLATES / "report.css"

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
#: the statuses whose requirement must be shown by a passing test (v-common: ``claimed()``)
CLAIMED = ("claimed", "partial")
OPERATOR, NOT_APPLICABLE = "operator", "not applicable"
MET, NOT_MET = "met", "not met"
#: the JUnit property (per test case) that carries the requirement IDs, space-separated
PROPERTY = "requirements"
#: a test-suite property naming the database engine, when the suite records one
DATABASE_PROPERTY = "database"


# --- the JUnit files -------------------------------------------------------------------------------


@dataclass
class Case:
    """One test case as one JUnit file reports it."""

    id: str
    result: str
    requirements: set[str] = field(default_factory=set)
    message: str = ""


@dataclass
class Run:
    """One JUnit file: one pass of the suite on one database engine."""

    file: str
    sha256: str
    database: str
    hostname: str
    started: str
    cases: dict[str, Case]

    def totals(self) -> dict[str, int]:
        return totals(case.result for case in self.cases.values())


def totals(results: Iterable[str]) -> dict[str, int]:
    counts = {"tests": 0, PASSED: 0, FAILED: 0, SKIPPED: 0}
    for result in results:
        counts["tests"] += 1
        counts[result] += 1
    return counts


def combined(results: Iterable[str]) -> str:
    """Failed if any failed, passed if one passed, skipped otherwise."""
    results = set(results)
    if FAILED in results:
        return FAILED
    return PASSED if PASSED in results else SKIPPED


def _result(testcase) -> tuple[str, str]:
    failures = testcase.findall("failure") + testcase.findall("error")
    if failures:
        return FAILED, _first_line(failures[0].get("message") or failures[0].text or "")
    skipped = testcase.find("skipped")
    if skipped is not None:
        return SKIPPED, _first_line(skipped.get("message") or "")
    return PASSED, ""


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _utc(timestamp: str) -> str:
    """pytest writes the start of the run in local time with its offset; the report says UTC."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return timestamp
    if moment.tzinfo is None:
        return timestamp
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def read_junit(path: Path, database: str | None = None) -> Run:
    """Parse one JUnit XML file (a ``<testsuites>`` of one or more ``<testsuite>``, or a bare
    ``<testsuite>``). A test case reported twice (pytest reports a tear-down error apart in some
    versions) keeps its worst result."""
    data = path.read_bytes()
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        raise click.ClickException(f"{path}: not a JUnit XML file ({e})") from e
    if root.tag not in ("testsuite", "testsuites"):
        raise click.ClickException(f"{path}: not a JUnit XML file (root element <{root.tag}>)")
    cases: dict[str, Case] = {}
    hosts, starts, engines = [], [], []
    for suite in root.iter("testsuite"):
        hosts.append(suite.get("hostname") or "")
        starts.append(_utc(suite.get("timestamp") or ""))
        engines += [p.get("value") for p in suite.findall("properties/property")
                    if p.get("name") == DATABASE_PROPERTY]
        for testcase in suite.findall("testcase"):
            classname, name = testcase.get("classname") or "", testcase.get("name") or ""
            case_id = f"{classname}::{name}" if classname else name
            result, message = _result(testcase)
            ids = {i for p in testcase.findall("properties/property") if p.get("name") == PROPERTY
                   for i in (p.get("value") or "").split()}
            if case_id in cases:
                before = cases[case_id]
                result = combined([before.result, result])
                message = before.message if before.result == result else message
                ids |= before.requirements
            cases[case_id] = Case(case_id, result, ids, message)
    return Run(file=path.name, sha256=hashlib.sha256(data).hexdigest(),
               database=database or ", ".join(dict.fromkeys(e for e in engines if e)) or "unknown",
               hostname=", ".join(dict.fromkeys(h for h in hosts if h)) or "unknown",
               started=", ".join(dict.fromkeys(s for s in starts if s)) or "unknown",
               cases=cases)


# --- the matrix ------------------------------------------------------------------------------------


@dataclass
class TestResult:
    """A test of the merged runs: its result over every engine and its result on each."""

    id: str
    result: str
    runs: dict[str, str]
    requirements: list[str]
    message: str = ""


@dataclass
class Row:
    """One requirement of the catalogue and what the run shows of it."""

    id: str
    source: str
    text: str
    status: str
    how: str
    #: "met" / "not met" for a claimed or partial requirement, else the status
    verdict: str
    tests: list[TestResult]
    #: why the requirement fails the report (empty when it does not)
    problems: list[str]


def merge(runs: Sequence[Run]) -> dict[str, TestResult]:
    """The tests of every run, each with its combined result."""
    labels = _labels(runs)
    merged: dict[str, TestResult] = {}
    for run, label in zip(runs, labels, strict=True):
        for case in run.cases.values():
            test = merged.setdefault(case.id, TestResult(case.id, SKIPPED, {}, []))
            test.runs[label] = case.result
            test.requirements = sorted(set(test.requirements) | case.requirements)
            if case.result == FAILED and not test.message:
                test.message = f"{label}: {case.message}" if len(runs) > 1 else case.message
    for test in merged.values():
        test.result = combined(test.runs.values())
    return merged


def _labels(runs: Sequence[Run]) -> list[str]:
    """Each run's name in the matrix: its database engine, else its file, unique."""
    labels = [run.database if run.database != "unknown" else run.file for run in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({run.file})" for label, run in zip(labels, runs, strict=True)]
    return labels


def unknown_ids(tests: Mapping[str, TestResult], catalogue: Mapping[str, Any]) -> dict[str, list[str]]:
    """ID -> the tests that name it, for every ID the catalogue lacks."""
    unknown: dict[str, list[str]] = {}
    for test in tests.values():
        for requirement in test.requirements:
            if requirement not in catalogue:
                unknown.setdefault(requirement, []).append(test.id)
    return unknown


def matrix(tests: Mapping[str, TestResult], catalogue: Mapping[str, Any]) -> list[Row]:
    """One row per requirement, in the catalogue's order."""
    by_requirement: dict[str, list[TestResult]] = {}
    for test in tests.values():
        for requirement in test.requirements:
            by_requirement.setdefault(requirement, []).append(test)
    rows = []
    for requirement in catalogue.values():
        linked = sorted(by_requirement.get(requirement.id, []), key=lambda t: t.id)
        results = [t.result for t in linked]
        failing = [t.id for t in linked if t.result == FAILED]
        problems = [f"failing test {test_id}" for test_id in failing]
        if requirement.status in CLAIMED:
            if PASSED not in results:
                problems.insert(0, "no passing test" if linked else "no test")
            verdict = NOT_MET if problems else MET
        else:
            verdict = requirement.status
        rows.append(Row(requirement.id, requirement.source, requirement.text, requirement.status,
                        requirement.how, verdict, linked, problems))
    return rows


def summary(rows: Sequence[Row]) -> dict[str, int]:
    counts = {MET: 0, NOT_MET: 0, OPERATOR: 0, NOT_APPLICABLE: 0}
    for row in rows:
        counts[row.verdict] = counts.get(row.verdict, 0) + 1
    return counts


# --- what identifies the run -----------------------------------------------------------------------


def _git(*args: str, root: Path) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        # --no-optional-locks: reading the state of a checkout never rewrites its index
        done = subprocess.run([git, "--no-optional-locks", "-C", str(root), *args],  # noqa: S603
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def software_commit(root: Path | None = None) -> tuple[str, bool | None]:
    """The commit of the software and whether tracked files differ from it: from git in a
    checkout, else from ``ECRF_COMMIT`` (set by the deployment), else "unknown"."""
    root = root or CHECKOUT
    if (root / ".git").exists():
        commit = _git("rev-parse", "HEAD", root=root)
        if commit:
            changes = _git("status", "--porcelain", "--untracked-files=no", root=root)
            return commit, None if changes is None else bool(changes)
    return os.environ.get("ECRF_COMMIT") or "unknown", None


def machine() -> dict[str, str]:
    return {"hostname": socket.gethostname(), "os": platform.platform(),
            "python": f"{platform.python_implementation()} {platform.python_version()}"}


def build(runs: Sequence[Run], catalogue: Mapping[str, Any], *,
          now: datetime | None = None) -> dict[str, Any]:
    """Everything the report shows, as plain data (the JSON file is exactly this)."""
    tests = merge(runs)
    unknown = unknown_ids(tests, catalogue)
    if unknown:
        listed = "; ".join(f"{i} (in {', '.join(sorted(ts)[:3])}{', ...' if len(ts) > 3 else ''})"
                           for i, ts in sorted(unknown.items()))
        raise click.ClickException(f"requirement IDs unknown to the catalogue: {listed}")
    rows = matrix(tests, catalogue)
    commit, local_changes = software_commit()
    labels = _labels(runs)
    return {
        "software": {"name": "ecrf", "version": ecrf.__version__, "commit": commit,
                     "local_changes": local_changes},
        "generated_at": f"{(now or datetime.now(UTC)).astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}",
        "machine": machine(),
        "databases": labels,
        "runs": [{"label": label, "file": run.file, "sha256": run.sha256, "database": run.database,
                  "hostname": run.hostname, "started": run.started, "totals": run.totals()}
                 for run, label in zip(runs, labels, strict=True)],
        "totals": totals(t.result for t in tests.values()),
        "linked_tests": sum(1 for t in tests.values() if t.requirements),
        "summary": summary(rows),
        "passed": not any(row.problems for row in rows),
        "requirements": [asdict(row) for row in rows],
        "unlinked_failures": [asdict(t) for t in sorted(tests.values(), key=lambda t: t.id)
                              if t.result == FAILED and not t.requirements],
    }


# --- the files -------------------------------------------------------------------------------------


@functools.cache
def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: the stylesheet is inlined, nothing is fetched."""
    return _environment().get_template(TEMPLATE).render(
        report=report, css=STYLESHEET.read_text(encoding="utf-8"),
        CLAIMED=CLAIMED, OPERATOR=OPERATOR, NOT_APPLICABLE=NOT_APPLICABLE)


def _refuse_urls(url: str, *args, **kwargs):
    """The report fetches nothing: no web font, no image, no stylesheet by URL."""
    raise ValueError(f"the traceability report fetches no resource ({url[:80]})")


def render_pdf(html: str) -> bytes:
    import weasyprint  # heavy: imported when a PDF is made

    return weasyprint.HTML(string=html, url_fetcher=_refuse_urls).write_pdf()


def write(report: Mapping[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    html = render_html(report)
    paths = [directory / "traceability.html", directory / "traceability.pdf",
             directory / "traceability.json"]
    paths[0].write_text(html, encoding="utf-8")
    paths[1].write_bytes(render_pdf(html))
    paths[2].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths


def catalogue() -> Mapping[str, Any]:
    """The requirements the report is checked against (read at run time)."""
    from ecrf.validation.requirements import REQUIREMENTS

    return REQUIREMENTS


def _databases(files: Sequence[Path], names: Sequence[str]) -> list[str | None]:
    if not names:
        return [None] * len(files)
    if len(names) == 1:
        return [names[0]] * len(files)
    if len(names) != len(files):
        raise click.UsageError("give --database once for every file, or once for all, "
                               f"not {len(names)} times for {len(files)} files")
    return list(names)


@click.command("report")
@click.option("--junit", "junit_files", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JUnit XML of a run of the suite (pytest --junitxml); repeat it for each "
                   "database engine: a test failing on one engine is failing.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for traceability.html, .pdf and .json.")
@click.option("--database", "databases", multiple=True,
              help="The database engine of the run (e.g. 'PostgreSQL 16.4'): once for all files, "
                   "or once per --junit in the same order. Default: the file's 'database' "
                   "property.")
def report_command(junit_files: tuple[Path, ...], output: Path, databases: tuple[str, ...]):
    """Traceability matrix (requirement -> tests -> result) from a run of the test suite.

    Exits 1, after writing the report, when a requirement the software claims has no passing
    test or has a failing test.
    """
    runs = [read_junit(path, database)
            for path, database in zip(junit_files, _databases(junit_files, databases), strict=True)]
    report = build(runs, catalogue())
    for path in write(report, output):
        click.echo(f"wrote {path}")
    counts = report["summary"]
    tests = report["totals"]
    click.echo(f"Requirements: {counts[MET]} met, {counts[NOT_MET]} not met, {counts[OPERATOR]} "
               f"operator duties, {counts[NOT_APPLICABLE]} not applicable. Tests: {tests['tests']}, "
               f"{tests[PASSED]} passed, {tests[FAILED]} failed, {tests[SKIPPED]} skipped.")
    for test in report["unlinked_failures"]:
        click.echo(f"warning: failing test linked to no requirement: {test['id']}", err=True)
    failing = [row for row in report["requirements"] if row["problems"]]
    if failing:
        click.echo("Requirements not met:", err=True)
        for row in failing:
            click.echo(f"  {row['id']} ({row['status']}): {'; '.join(row['problems'])}", err=True)
        raise click.exceptions.Exit(1)
