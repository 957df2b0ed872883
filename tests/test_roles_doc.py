"""The roles tables in docs/roles.md and docs/security.md are the one generated from
ecrf.access.roles (no hand edits)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ecrf.access import roles
from ecrf.access.roles import markdown_table

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOC = DOCS / "roles.md"
START, END = "<!-- roles:start -->", "<!-- roles:end -->"


def documented_table(text: str) -> str:
    """The text between the markers, without the line break that follows the start marker."""
    assert text.count(START) == 1 and text.count(END) == 1, "docs/roles.md needs both markers once"
    between = text.split(START, 1)[1].split(END, 1)[0]
    return between.removeprefix("\n")


@pytest.mark.parametrize("page", ["roles.md", "security.md"])
def test_the_roles_table_in_the_docs_is_the_one_generated_from_the_code(page):
    assert documented_table((DOCS / page).read_text(encoding="utf-8")) == markdown_table(), (
        f"docs/{page} is out of date: paste the output of `ecrf access table` between the markers")


def test_the_check_fails_when_the_code_changes_without_the_docs(monkeypatch):
    documented = documented_table(DOC.read_text(encoding="utf-8"))
    monitor = roles.ROLES["monitor"]
    changed = {**roles.ROLES, "monitor": replace(
        monitor, permissions=monitor.permissions | {"subject.enrol"})}
    monkeypatch.setattr(roles, "ROLES", changed)
    assert markdown_table() != documented


def test_the_ecrf_access_table_command_prints_the_same_table(runner):
    result = runner.invoke(args=["access", "table"])
    assert result.exit_code == 0, result.output
    assert result.output == markdown_table()
