"""The matrix in docs/compliance.md is the requirements catalogue of the code (no hand edits)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ecrf.validation import requirements
from ecrf.validation.requirements import markdown_matrix

DOC = Path(__file__).resolve().parent.parent / "docs" / "compliance.md"
START, END = "<!-- matrix:start -->", "<!-- matrix:end -->"

pytestmark = pytest.mark.requirement("P11-10k")


def documented_matrix() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, "docs/compliance.md needs both markers"
    return text.split(START, 1)[1].split(END, 1)[0].removeprefix("\n")


def test_the_matrix_in_the_docs_is_the_catalogue_of_the_code():
    assert documented_matrix() == markdown_matrix(), (
        "docs/compliance.md is out of date: paste the output of `ecrf validate matrix` between "
        "the markers")


def test_the_check_fails_when_a_status_changes_without_the_docs(monkeypatch):
    first = requirements.CATALOGUE[0]
    monkeypatch.setattr(requirements, "CATALOGUE",
                        (replace(first, status="partial"), *requirements.CATALOGUE[1:]))
    assert markdown_matrix() != documented_matrix()


def test_every_requirement_is_on_the_page():
    page = documented_matrix()
    assert all(f"| {r.id} |" in page for r in requirements.CATALOGUE)


def test_the_command_prints_the_same_matrix(runner):
    result = runner.invoke(args=["validate", "matrix"])
    assert result.exit_code == 0, result.output
    assert result.output == markdown_matrix()
