"""The requirements catalogue (ecrf/validation/requirements.py) and the marks that trace each
requirement to the tests that show it.

The catalogue holds every requirement of 21 CFR Part 11, EU Annex 11, the EMA 2023 guideline,
ICH E6(R3), ALCOA++ and the GDPR once, well formed, with a status and an explanation. A test
shows a requirement by carrying ``@pytest.mark.requirement(ID, ...)`` (on itself, its class or
its module); tests/conftest.py copies the IDs into the test's JUnit properties, and an unknown
ID fails the collection of its file. Every requirement the software claims, fully or in part,
is carried by at least one test of the default run (not browser, slow or PostgreSQL-only), so
that one run of the suite on either engine can show it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from lxml import etree

from ecrf.validation.requirements import (
    CATALOGUE,
    REQUIREMENTS,
    SOURCES,
    STATUSES,
    Requirement,
    claimed,
)

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

#: what an ID of each source looks like (ASCII, no space: the JUnit property separates by spaces)
ID_FORMS = {
    "21 CFR Part 11": r"P11-\d+[a-z0-9]*(?:[-/][a-z0-9]+)*",
    "EU GMP Annex 11": r"A11-\d+(?:\.\d+)?(?:[-/]\d+(?:\.\d+)?)?",
    "EMA 2023 guideline": r"EMA-\d+",
    "ICH E6(R3)": r"E6-\d+(?:\.\d+)+(?:[a-z](?:-[a-z]+)?|\([a-z](?:,[a-z])*\)|/\d+(?:\.\d+)+)?",
    "ALCOA++": r"ALCOA-(?:attributable|legible|contemporaneous|original|accurate|complete|"
               r"consistent|enduring|available|traceable)",
    "GDPR": r"GDPR-[1-6]",
}
#: the number of checkable statements of each source in the regulations (sections 2.1 to 2.6)
PER_SOURCE = {"21 CFR Part 11": 28, "EU GMP Annex 11": 15, "EMA 2023 guideline": 12,
              "ICH E6(R3)": 20, "ALCOA++": 10, "GDPR": 6}
#: tests outside the default run (`make test-sqlite` / `test-postgres` on both engines)
NOT_IN_EVERY_RUN = {"browser", "slow", "postgres_only"}


def well_formed(requirement: Requirement) -> bool:
    form = ID_FORMS.get(requirement.source)
    return form is not None and re.fullmatch(form, requirement.id, re.ASCII) is not None


# --- the catalogue ---------------------------------------------------------------------------


def test_each_id_is_listed_once_and_the_dictionary_holds_them_in_document_order():
    ids = [r.id for r in CATALOGUE]
    assert len(set(ids)) == len(ids)
    assert list(REQUIREMENTS) == ids
    assert all(REQUIREMENTS[i] is r for i, r in zip(ids, CATALOGUE, strict=True))


def test_every_statement_of_the_regulations_is_in_the_catalogue():
    counted = {source: sum(r.source == source for r in CATALOGUE) for source in SOURCES}
    assert counted == PER_SOURCE
    assert {r.id for r in CATALOGUE if r.source == "GDPR"} == {f"GDPR-{n}" for n in range(1, 7)}
    assert len({r.id for r in CATALOGUE if r.source == "ALCOA++"}) == 10


@pytest.mark.parametrize("requirement", CATALOGUE, ids=lambda r: r.id)
def test_each_id_is_well_formed_for_its_source(requirement):
    assert requirement.source in SOURCES
    assert well_formed(requirement)


@pytest.mark.parametrize(("bad_id", "source"), [
    ("P11-10 a", "21 CFR Part 11"),          # a space would split the JUnit property
    ("A11-12.1\u201312.3", "EU GMP Annex 11"),  # the en dash of the printed range
    ("EMA-3", "ICH E6(R3)"),                 # an ID under another source
    ("ALCOA-attributible", "ALCOA++"),
    ("GDPR-7", "GDPR"),
    ("E6-4.2.2 b", "ICH E6(R3)"),
])
def test_control_a_malformed_id_is_refused_by_the_same_check(bad_id, source):
    assert not well_formed(Requirement(bad_id, source, "text", "claimed", "how"))


@pytest.mark.parametrize("requirement", CATALOGUE, ids=lambda r: r.id)
def test_each_requirement_has_a_valid_status_its_statement_and_how_it_is_met_or_why_not(
        requirement):
    assert requirement.status in STATUSES
    assert requirement.text.strip() and requirement.how.strip()
    assert requirement.how != requirement.text


def test_claimed_lists_the_claimed_and_partial_requirements_in_document_order():
    expected = [r for r in CATALOGUE if r.status in ("claimed", "partial")]
    assert claimed() == expected
    assert {r.status for r in CATALOGUE} == set(STATUSES)  # the catalogue uses each status


def test_the_marker_is_registered_for_strict_markers():
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in options["addopts"]
    assert any(line.startswith("requirement(") for line in options["markers"])


# --- the marks in a pytest run of its own ----------------------------------------------------

MARKED = '''
import pytest

pytestmark = pytest.mark.requirement("P11-10a")


@pytest.mark.requirement("A11-7", "P11-10a")
def test_marked():
    pass


@pytest.mark.requirement("EMA-3")
class TestGroup:
    @pytest.mark.requirement("A11-7")
    def test_in_class(self):
        pass


def test_module_only():
    pass


@pytest.mark.requirement("EMA-2")
@pytest.mark.skip(reason="not run, yet carried")
def test_skipped():
    pass
'''
PLAIN = '''
def test_unmarked():
    pass
'''
UNKNOWN = '''
import pytest


@pytest.mark.requirement("P11-99z")
def test_typo():
    pass


def test_fine():
    pass
'''
UNKNOWN_ON_A_CLASS = '''
import pytest


@pytest.mark.requirement("EMA-3", "EMA-99")
class TestGroup:
    def test_inside(self):
        pass
'''
NO_ID = '''
import pytest


@pytest.mark.requirement
def test_bare():
    pass
'''
BOTH_HOOKS = ("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n"
              "from tests.conftest import pytest_make_collect_report  # noqa: F401\n")
CHECK_ONLY = "from tests.conftest import pytest_make_collect_report  # noqa: F401\n"
COPY_ONLY = "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n"


@pytest.fixture
def suite(pytester):
    """A folder with the project's marker registration and the hooks of tests/conftest.py."""
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]["markers"]
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\naddopts = \"--strict-markers\"\n"
                               f"markers = {json.dumps(markers)}\n")

    def run(conftest: str, **files: str):
        pytester.makeconftest(conftest)
        pytester.makepyfile(**files)
        junit = pytester.path / "junit.xml"
        result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly",
                                    f"--junitxml={junit}")
        return result, junit

    return run


def junit_requirements(junit: Path) -> dict[str, str | None]:
    """For each test case of a JUnit file, its ``requirements`` property (None without)."""
    found = {}
    for case in etree.parse(str(junit)).getroot().iter("testcase"):
        values = [p.get("value") for p in case.iter("property") if p.get("name") == "requirements"]
        assert len(values) <= 1
        found[f"{case.get('classname')}.{case.get('name')}"] = values[0] if values else None
    return found


def test_the_ids_of_a_test_its_class_and_its_module_land_in_its_junit_properties(suite):
    result, junit = suite(BOTH_HOOKS, test_marked=MARKED, test_plain=PLAIN)
    result.assert_outcomes(passed=4, skipped=1)
    assert junit_requirements(junit) == {
        "test_marked.test_marked": "A11-7 P11-10a",             # sorted, each once
        "test_marked.TestGroup.test_in_class": "A11-7 EMA-3 P11-10a",
        "test_marked.test_module_only": "P11-10a",
        "test_marked.test_skipped": "EMA-2 P11-10a",            # the report sees it was not run
        "test_plain.test_unmarked": None,
    }


def test_control_without_the_hook_the_junit_file_carries_no_requirement(suite):
    result, junit = suite(CHECK_ONLY, test_marked=MARKED, test_plain=PLAIN)
    result.assert_outcomes(passed=4, skipped=1)
    assert set(junit_requirements(junit).values()) == {None}


def test_an_unknown_or_missing_id_fails_the_collection_of_its_file(suite):
    result, _junit = suite(BOTH_HOOKS, test_typo=UNKNOWN, test_class_typo=UNKNOWN_ON_A_CLASS,
                           test_bare=NO_ID, test_plain=PLAIN)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=3)
    output = result.stdout.str()
    assert "ERROR collecting test_typo.py" in output and "unknown requirement ID 'P11-99z'" in output
    assert "ERROR collecting test_class_typo.py" in output and "'EMA-99'" in output
    assert "ERROR collecting test_bare.py" in output and "names its IDs as arguments" in output
    assert "ERROR collecting test_plain.py" not in output


def test_control_without_the_check_the_same_typos_collect_and_pass(suite):
    result, _junit = suite(COPY_ONLY, test_typo=UNKNOWN, test_class_typo=UNKNOWN_ON_A_CLASS,
                           test_bare=NO_ID, test_plain=PLAIN)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=5)


# --- every claimed requirement has its tests in the suite ------------------------------------

TRACE_PLUGIN = '''
import json
import os


def pytest_collection_finish(session):
    tests = {item.nodeid: {"requirements": dict(item.user_properties).get("requirements", "").split(),
                           "markers": sorted({m.name for m in item.iter_markers()})}
             for item in session.items}
    with open(os.environ["ECRF_REQUIREMENT_TRACE"], "w", encoding="utf-8") as out:
        json.dump(tests, out)
'''


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> dict[str, dict]:
    """The whole suite collected as ``make test`` collects it, in a process of its own: each
    test's requirement IDs (from the JUnit properties the conftest sets) and its marks."""
    folder = tmp_path_factory.mktemp("trace")
    (folder / "requirement_trace.py").write_text(TRACE_PLUGIN)
    out = folder / "trace.json"
    env = {**os.environ, "ECRF_REQUIREMENT_TRACE": str(out),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "requirement_trace",
                           str(ROOT / "tests")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


def untested(requirements: list[Requirement], tests: dict[str, dict]) -> list[str]:
    """The requirements no test of the default run carries."""
    carried = {i for test in tests.values() if not NOT_IN_EVERY_RUN & set(test["markers"])
               for i in test["requirements"]}
    return [r.id for r in requirements if r.id not in carried]


def test_the_whole_suite_is_collected_with_its_requirements(trace):
    assert len(trace) > 1000
    marked = trace["tests/test_unit_of_work.py::test_a_change_outside_the_unit_of_work_raises"]
    assert {"EMA-2", "P11-10e-1"} <= set(marked["requirements"])
    assert marked["requirements"] == sorted(set(marked["requirements"]))


@pytest.mark.requirement("P11-10a")
def test_every_claimed_requirement_is_shown_by_a_test_of_the_default_run(trace):
    assert untested(claimed(), trace) == []


def test_control_a_claimed_requirement_that_loses_its_last_test_is_reported(trace):
    for requirement in claimed():
        without = {node: {**test, "requirements": [i for i in test["requirements"]
                                                   if i != requirement.id]}
                   for node, test in trace.items()}
        assert untested(claimed(), without) == [requirement.id]


def test_control_a_requirement_shown_only_by_browser_or_postgresql_tests_is_reported(trace):
    requirement = REQUIREMENTS["P11-10a"]
    shown_only_elsewhere = {node: {**test, "markers": [*test["markers"], "browser"]}
                            if requirement.id in test["requirements"] else test
                            for node, test in trace.items()}
    assert untested([requirement], shown_only_elsewhere) == [requirement.id]
    for mark in ("postgres_only", "slow"):
        elsewhere = {node: {**test, "markers": [mark]} for node, test in trace.items()}
        assert untested([requirement], elsewhere) == [requirement.id]
