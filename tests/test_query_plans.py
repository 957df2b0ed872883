"""Every list page's queries are served by an index (PostgreSQL's EXPLAIN).

Each page is requested as the role that uses it, on a small DEMO study; every SELECT it sends is
captured with its parameters (``before_cursor_execute``) and planned again with
``EXPLAIN (FORMAT JSON)`` under ``SET LOCAL enable_seqscan = off``, joins as nested loops (whose
inner side is read once per outer row: through an index on the join key, if there is one). The
planner then reads a table sequentially only when no index can serve the statement, whatever the
table's size: the check does not depend on the few rows of the test database.

On a large table, a plan fails when it reads the table sequentially (``Seq Scan``). Two reads
are expected: a statement that takes every row of one table (no condition, no join: nothing for
an index to narrow), and on a study-wide role's pages the reads of ``STUDY_WIDE_READS``
(conditions that keep most rows, or a value computed per row).

A plan may go through a whole index instead: a condition on a column other than the index's
first one, a walk in index order that filters every row, or a walk for each row of a join. On a
few rows that can be the planner's cheapest choice even where a selective index exists, so the
index is replaced (inside a savepoint) by a hash index on its first column, which serves look-ups
on that column but cannot be read whole, and the statement is planned again: until it is served
by an index, or it reads a large table sequentially and fails, saying which whole reads led there.

Large tables grow with the subjects, their data, the audit trail or the use of the system. The
others hold a few rows per site, user or study (``site``, ``user``, ``grant``,
``study_definition``, ``sdv_plan``, ``delegation_entry``, ``closure_state``, ``subject_counter``,
``password_history``, ``audit_chain_head``): PostgreSQL reads them whole faster than through an
index, and a page may.

The negative controls drop an index a list relies on (the audit viewer's user filter, a site's
exports) and show that the check then fails. PostgreSQL only: on SQLite the
module is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from ecrf.extensions import db as _db

pytestmark = pytest.mark.postgres_only

#: tables that grow with subjects, data, the audit trail or use (see the module docstring)
LARGE_TABLES = frozenset({
    "item_value", "audit_trail", "audit_value", "audit_review", "form_instance", "subject",
    "data_query", "query_message", "item_verification", "signature", "submission",
    "screening_entry", "export_job", "api_token", "user_session",
})
JOINS = frozenset({"Nested Loop", "Hash Join", "Merge Join"})
#: what a study-wide role's page reads whole by design: conditions that keep most rows (an index
#: would not narrow them) or a value computed per row; (table, filter as a pattern, why)
STUDY_WIDE_READS = (
    ("subject", r"\(inclusion_date IS NOT NULL\)", "every included subject: the enrolment plot"),
    ("subject", r"\(\(inclusion_date IS NOT NULL\) AND \(\(status\)::text = ANY "
                r"\('\{included,completed,withdrawn\}'::text\[\]\)\)\)",
     "every followed subject: the forms missing of the whole study"),
    ("form_instance", r"\(visit_repeat = 1\)",
     "the forms of every followed subject (nearly all forms are of the visit's first time)"),
    ("subject", r"\(COALESCE\(\(SubPlan \d+\), created_at\) [<>]=? '[^']+'::timestamp with time "
                r"zone\)",
     "the API's since/until on a subject's last change, a maximum over its audit records "
     "(found by index, subject by subject): no column holds it"),
)
STUDY_WIDE_ROLES = frozenset({"datamanager", "auditor"})
#: whole index reads replaced, at most, before a statement is declared unservable
MAX_ROUNDS = 8
#: sequential scans only where nothing else can read the table; joins as nested loops, whose
#: inner side is then read once per outer row: through an index on the join key if there is one
PLANNER_OFF = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")
DEMO_SUBJECTS = 8


@pytest.fixture
def postgres(engine_name):
    if engine_name != "postgresql":
        pytest.skip("needs PostgreSQL's EXPLAIN (SQLite's planner has no such settings)")


# --- capturing and planning ----------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    page: str
    sql: str
    parameters: object
    #: sent for a role that sees the whole study (its pages may read STUDY_WIDE_READS whole)
    study_wide: bool = False


@contextmanager
def captured(page: str, username: str) -> Iterator[list[Statement]]:
    """The SELECTs sent to the database while the block runs, with their parameters."""
    found: list[Statement] = []

    def grab(_conn, _cursor, statement, parameters, _context, executemany):
        if not executemany and statement.lstrip().upper().startswith(("SELECT", "WITH")):
            found.append(Statement(page, statement, parameters, username in STUDY_WIDE_ROLES))

    engine = _db.engine
    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        yield found
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)


class Planner:
    """EXPLAIN on the test's own connection, inside savepoints (settings and drops undone)."""

    def __init__(self):
        self.raw = _db.session.connection().connection.driver_connection
        self._leading: dict[str, str] = {}

    @contextmanager
    def savepoint(self, name: str) -> Iterator[None]:
        self.raw.execute(f"SAVEPOINT {name}")
        try:
            yield
        finally:
            self.raw.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.raw.execute(f"RELEASE SAVEPOINT {name}")

    def plan(self, statement: Statement) -> dict:
        with self.savepoint("query_plan"):
            for name in PLANNER_OFF:
                self.raw.execute(f"SET LOCAL {name} = off")
            with self.raw.cursor() as cursor:
                cursor.execute("EXPLAIN (FORMAT JSON) " + statement.sql, statement.parameters)
                return cursor.fetchone()[0][0]["Plan"]

    def leading_column(self, index: str) -> str:
        if index not in self._leading:
            self._leading[index] = self.raw.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE c.relname = %s", (index,)).fetchone()[0]
        return self._leading[index]

    def drop_index(self, name: str) -> None:
        """Inside the current transaction or savepoint: its rollback brings the index back. The
        index of a primary key or unique constraint goes with its constraint (and the foreign
        keys that rely on it)."""
        constraint = self.raw.execute(
            "SELECT c.conrelid::regclass::text, c.conname FROM pg_constraint c "
            "JOIN pg_class i ON i.oid = c.conindid "
            "WHERE i.relname = %s AND c.contype IN ('p', 'u')", (name,)).fetchone()
        if constraint:
            self.raw.execute(f'ALTER TABLE {constraint[0]} DROP CONSTRAINT "{constraint[1]}" CASCADE')
        else:
            self.raw.execute(f'DROP INDEX "{name}"')

    def take_away_whole_reads(self, name: str) -> None:
        """Replace an index by a hash index on its first column: look-ups by that column (a
        join key, a value) stay possible, reading the whole index or walking it in order not."""
        table, column = self.raw.execute(
            "SELECT t.relname, a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_class t ON t.oid = i.indrelid "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE c.relname = %s", (name,)).fetchone()
        self.drop_index(name)
        self.raw.execute(f'CREATE INDEX "{name}" ON "{table}" USING hash ("{column}")')


def nodes(plan: dict, parent: dict | None = None) -> Iterator[dict]:
    """Every node of a plan (subplans included), each with ``parent``: its parent's node type."""
    yield {**plan, "parent": parent["Node Type"] if parent else None}
    for child in plan.get("Plans", ()):
        yield from nodes(child, plan)


def uses_leading_column(planner: Planner, node: dict, alias: str) -> bool:
    """Whether the index condition constrains the index's first column (else: a full read)."""
    column = re.escape(planner.leading_column(node["Index Name"]))
    return re.search(rf"(?<![\w.])(?:{re.escape(alias)}\.)?{column}\b", node["Index Cond"]) \
        is not None


def by_design(node: dict, statement: Statement) -> bool:
    """A study-wide page's read of a whole table that no index would narrow."""
    return statement.study_wide and any(
        node["Relation Name"] == table and re.fullmatch(pattern, node.get("Filter", ""))
        for table, pattern, _why in STUDY_WIDE_READS)


def sequential_reads(plan: dict, statement: Statement) -> list[str]:
    """Sequential reads of large tables, but for a statement that takes every row of one table."""
    joined = any(n["Node Type"] in JOINS for n in nodes(plan))
    return [f"Seq Scan on {n['Relation Name']}" + (f" (Filter: {n['Filter']})" if "Filter" in n
                                                    else " (joined)")
            for n in nodes(plan) if n["Node Type"] == "Seq Scan"
            and n["Relation Name"] in LARGE_TABLES and (joined or "Filter" in n)
            and not by_design(n, statement)]


def whole_index_reads(planner: Planner, plan: dict) -> dict[str, str]:
    """Index reads on large tables that go through the whole index: a condition without the
    index's first column, or no condition and a filter on every row or a read per joined row."""
    found = {}
    for node in nodes(plan):
        if node.get("Relation Name") not in LARGE_TABLES:
            continue
        alias, kind = node["Alias"], node["Node Type"]
        if kind == "Bitmap Heap Scan":
            for index in nodes(node):
                if index["Node Type"] == "Bitmap Index Scan" and "Index Cond" in index \
                        and not uses_leading_column(planner, index, alias):
                    found[index["Index Name"]] = f"reads all of {index['Index Name']} for " \
                                                 f"{index['Index Cond']}"
        elif kind in ("Index Scan", "Index Only Scan"):
            if "Index Cond" in node and not uses_leading_column(planner, node, alias):
                found[node["Index Name"]] = f"reads all of {node['Index Name']} for " \
                                            f"{node['Index Cond']}"
            elif "Index Cond" not in node and "Filter" in node:
                found[node["Index Name"]] = f"walks all of {node['Index Name']} filtering " \
                                            f"{node['Filter']}"
            elif "Index Cond" not in node and node["parent"] == "Nested Loop" \
                    and node.get("Parent Relationship") == "Inner":
                found[node["Index Name"]] = f"walks all of {node['Index Name']} for each " \
                                            "joined row"
    return found


def problems(planner: Planner, statement: Statement) -> list[str]:
    """Why the statement is not served by an index on a large table (empty: it is).

    A whole index read may be the planner's cheapest choice on the test's few rows while a
    selective index exists: such an index is replaced, inside a savepoint, by one that serves
    only look-ups on its first column, and the statement planned again, until it is served or
    has to read a large table sequentially.
    """
    taken: dict[str, str] = {}
    with planner.savepoint("query_plan_indexes"):
        for _ in range(MAX_ROUNDS):
            plan = planner.plan(statement)
            scans = sequential_reads(plan, statement)
            if scans:
                return [scan + "".join(f"; before, it {why}" for why in taken.values())
                        for scan in scans]
            whole = whole_index_reads(planner, plan)
            if not whole:
                return []
            for index, why in whole.items():
                planner.take_away_whole_reads(index)
                taken[index] = why
    return [f"still reads whole indexes after {MAX_ROUNDS} rounds: {taken}"]


def check(statements: list[Statement]) -> list[str]:
    """Every distinct statement planned once; the problems, each with its page and SQL."""
    planner = Planner()
    seen: set[str] = set()
    report = []
    for statement in statements:
        if statement.sql in seen:
            continue
        seen.add(statement.sql)
        for problem in problems(planner, statement):
            sql = " ".join(statement.sql.split())
            report.append(f"{statement.page}: {problem}\n    {sql[:600]}")
    return report


# --- the study and its pages ---------------------------------------------------------------------


@pytest.fixture
def study(postgres, app, db, client):
    """A small DEMO study (two sites, one user per role, subjects with data, queries, SDV and
    signatures), plus what the demo does not make: screening entries, exports, API tokens."""
    from ecrf.api import tokens
    from ecrf.auth.services import get_user, system_actor
    from ecrf.casebook.models import FormInstance
    from ecrf.database import utcnow
    from ecrf.demo import load_demo
    from ecrf.exports.models import ExportJob
    from ecrf.study.models import Site, Subject
    from ecrf.study.services import log_screening

    load_demo(DEMO_SUBJECTS, echo=lambda *_: None)
    site = db.session.scalar(sa.select(Site).where(Site.code == "01"))
    subject = db.session.scalar(sa.select(Subject).where(
        Subject.site_id == site.id, Subject.inclusion_date.is_not(None)).order_by(Subject.code))
    log_screening(system_actor(), site, screened_on=utcnow().date(), age=40, sex="F",
                  reason_not_included="declined")
    dm = get_user("datamanager")
    for code in ("01", "02", None):
        db.session.add(ExportJob(kind="datasets", site_code=code, requested_by_id=dm.id,
                                 requested_at=utcnow(), state="done", progress=100))
    db.session.commit()
    api_tokens = {name: tokens.create_token(get_user(name), "plans")[1]
                  for name in ("datamanager", "investigator")}
    form = db.session.scalar(sa.select(FormInstance.id).where(
        FormInstance.subject_id == subject.id, FormInstance.crf_key == "sofa_daily",
        FormInstance.visit_key == "D1"))
    return {"subject": subject.code, "site_id": site.id, "form_id": form, "tokens": api_tokens}


def visit(app, client, study, username: str, urls: list[str]) -> list[Statement]:
    """Log ``username`` in (a DEMO user), then GET each page; every SELECT sent, by page."""
    password = app.config["DEMO_PASSWORD"]
    response = client.post("/auth/login", data={"username": username, "password": password})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    statements = []
    for url in urls:
        url = url.format(**study)
        with captured(f"GET {url} as {username}", username) as found:
            response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        statements += found
    return statements


def call_api(client, study, username: str, urls: list[str]) -> list[Statement]:
    headers = {"Authorization": f"Bearer {study['tokens'][username]}"}
    statements = []
    for url in urls:
        url = url.format(**study)
        with captured(f"GET {url} with {username}'s API token", username) as found:
            response = client.get(url, headers=headers)
        assert response.status_code == 200, (url, response.status_code)
        statements += found
    return statements


FORM = "/subjects/{subject}/visits/D1/1/forms/sofa_daily/1"

#: the list pages of each role, with the filters their pages offer
PAGES = {
    "investigator": [
        "/", "/subjects/", "/subjects/?site=01", "/subjects/?included=1", "/subjects/{subject}",
        "/subjects/{subject}/casebook", FORM, FORM + "/items/platelets/history",
        "/queries/", "/queries/?state=open", "/queries/?state=unresolved&age=%3E7",
        "/queries/?subject={subject}", "/queries/?crf=sofa_daily", "/missing-forms",
        "/missing-forms?state=overdue&visit=D1", "/sign-off", "/exports/",
        "/subjects/screening-log", "/account/api-tokens/",
    ],
    "monitor": [
        "/", "/sdv/", "/sdv/?site={site_id}", "/queries/?state=answered",
        "/queries/?form={form_id}&item=platelets", "/subjects/{subject}/casebook",
    ],
    "datamanager": [
        "/", "/subjects/", "/queries/", "/queries/?site={site_id}&state=open&age=0-7",
        "/missing-forms", "/sign-off", "/exports/", "/closure", "/delegation/",
        "/delegation/sites/{site_id}", "/audit/review", "/audit/review?state=all&site=01",
        "/audit/review?flag=out_of_hours&state=reviewed",
    ],
    "auditor": [
        "/audit/", "/audit/?page=2", "/audit/?user=investigator", "/audit/?action=item.update",
        "/audit/?date_from=2026-01-01&date_to=2026-12-31", "/audit/?site=02",
        "/audit/?subject={subject}",
        "/audit/?subject={subject}&visit=D1&form=sofa_daily&item=platelets",
        "/audit/?user=monitor&action=query.create&date_from=2026-01-01",
    ],
}
API = {
    "datamanager": [
        "/api/v1/subjects", "/api/v1/subjects?site=01&status=included&page=2&per_page=2",
        "/api/v1/subjects?since=2026-01-01T00:00:00Z", "/api/v1/subjects/{subject}/forms",
        "/api/v1/subjects/{subject}/forms?visit=D1&crf=sofa_daily&since=2026-01-01T00:00:00Z",
        "/api/v1/audit", "/api/v1/audit?after_seq=100&limit=20", "/api/v1/audit?subject={subject}",
        "/api/v1/audit?site=01&action=item.create&since=2026-01-01T00:00:00Z",
    ],
    "investigator": ["/api/v1/subjects", "/api/v1/subjects/{subject}/forms"],
}


def assert_served(statements: list[Statement]) -> None:
    assert statements, "no statement captured"
    report = check(statements)
    assert not report, f"{len(report)} statement(s) not served by an index:\n" + "\n".join(report)


@pytest.mark.parametrize("username", list(PAGES))
def test_every_list_page_of_a_role_is_served_by_indexes(app, client, study, username):
    assert_served(visit(app, client, study, username, PAGES[username]))


@pytest.mark.parametrize("username", list(API))
def test_every_api_list_endpoint_is_served_by_indexes(client, study, username):
    assert_served(call_api(client, study, username, API[username]))


@pytest.mark.parametrize(("username", "url", "index", "found"), [
    ("auditor", "/audit/?user=investigator", "ix_audit_trail_username",
     "Seq Scan on audit_trail (Filter: ((username)::text = 'investigator'::text))"),
    ("investigator", "/exports/", "ix_export_job_site_code",
     "Seq Scan on export_job (Filter: ((site_code)::text = '01'::text))"),
])
def test_negative_control_without_the_index_of_a_list_the_check_fails(app, client, study, username,
                                                                       url, index, found):
    statements = visit(app, client, study, username, [url])
    assert check(statements) == []
    Planner().drop_index(index)  # until the test's transaction is rolled back
    report = check(statements)
    assert report and all(found in line for line in report), "\n".join(report)
