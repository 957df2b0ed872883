"""The append-only guards in the database itself, and the least-privilege role of the docs.

The triggers refuse UPDATE/DELETE (and TRUNCATE on PostgreSQL) on ``audit_trail``, DELETE on
``audit_value`` and any UPDATE there other than masking a value for a recorded redaction. A
negative control drops a trigger and shows the very same statement then succeeds. On PostgreSQL
the application role of docs/audit-trail.md (the package file ``ecrf/audit/grants.sql``, which
the docs show unchanged) holds no UPDATE, DELETE or TRUNCATE at all, so even with the triggers
gone it cannot rewrite the trail.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from ecrf import create_app
from ecrf.audit import chain
from ecrf.audit.ddl import GUARD_TRIGGERS, REFUSAL, existing_guards
from ecrf.audit.models import AuditRecord, AuditValue
from ecrf.extensions import db
from ecrf.validation.install import GRANTS_SQL, grant_statements
from tests.factories import Factories

DOCS = Path(__file__).resolve().parent.parent / "docs" / "audit-trail.md"
TRAIL, VALUES = AuditRecord.__table__, AuditValue.__table__
#: the harness's study definition, passed on to an app of the test's own
STUDY_SETTINGS = ("CRF_MODULES", "EXTRA_CRF_MODULES", "SCHEDULE")


@pytest.fixture
def history(fresh_app) -> list[dict]:
    make = Factories()
    make.site("01")
    make.user("alice", role="data_manager")
    make.subject("01")
    db.session.remove()
    rows = _rows()
    assert len(rows) >= 5
    return rows


def _rows() -> list[dict]:
    db.session.remove()
    with db.engine.connect() as conn:
        stmt = sa.select(TRAIL, VALUES.c.new_value, VALUES.c.new_salt, VALUES.c.redacted_seq) \
            .select_from(TRAIL.join(VALUES, VALUES.c.seq == TRAIL.c.seq)).order_by(TRAIL.c.seq)
        return [dict(r) for r in conn.execute(stmt).mappings()]


def _value_row(rows: list[dict]) -> dict:
    return next(r for r in rows if r["new_value"] is not None and r["field"] == "name")


def _refused(statement: str, **params) -> str:
    """Run one statement in its own transaction; it must be refused by a guard."""
    with pytest.raises(DBAPIError) as refused, db.engine.begin() as conn:
        conn.execute(sa.text(statement), params)
    message = str(refused.value.orig)
    assert REFUSAL in message, message
    return message


def _run(statement: str, **params) -> int:
    with db.engine.begin() as conn:
        return conn.execute(sa.text(statement), params).rowcount


#: the same UPDATE for the guarded test and its negative control
TAMPER = "UPDATE audit_trail SET reason_text = 'rewritten' WHERE seq = :seq"


# --- the guards exist at head --------------------------------------------------------------


def test_the_guard_triggers_exist_after_upgrade_to_head(db, engine_name):
    conn = db.session.connection()
    assert existing_guards(conn) == GUARD_TRIGGERS[engine_name]
    assert len(GUARD_TRIGGERS[engine_name]) >= 4


# --- audit_trail ---------------------------------------------------------------------------


@pytest.mark.requirement("P11-10e-2")
def test_update_on_the_audit_trail_is_refused(fresh_app, history):
    seq = history[1]["seq"]
    assert "UPDATE" in _refused(TAMPER, seq=seq)
    assert _rows()[1]["reason_text"] == history[1]["reason_text"] != "rewritten"


@pytest.mark.requirement("P11-10e-2")
def test_delete_on_the_audit_trail_is_refused(fresh_app, history):
    last = history[-1]["seq"]
    _refused("DELETE FROM audit_value WHERE seq = :seq", seq=last)
    assert "DELETE" in _refused("DELETE FROM audit_trail WHERE seq = :seq", seq=last)
    assert [r["seq"] for r in _rows()] == [r["seq"] for r in history]


@pytest.mark.requirement("P11-10e-2")
def test_truncate_on_the_audit_tables_is_refused_on_postgresql(fresh_app, history, engine_name):
    if engine_name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE (DELETE without WHERE is refused by the row trigger)")
    assert "TRUNCATE" in _refused("TRUNCATE audit_trail CASCADE")
    assert "TRUNCATE" in _refused("TRUNCATE audit_value")
    assert len(_rows()) == len(history)


def test_sqlite_delete_without_where_is_refused(fresh_app, history, engine_name):
    if engine_name != "sqlite":
        pytest.skip("the PostgreSQL counterpart is TRUNCATE, tested above")
    _refused("DELETE FROM audit_value")
    _refused("DELETE FROM audit_trail")
    assert len(_rows()) == len(history)


# --- audit_value ---------------------------------------------------------------------------


def test_delete_on_audit_value_is_refused(fresh_app, history):
    seq = _value_row(history)["seq"]
    assert "DELETE" in _refused("DELETE FROM audit_value WHERE seq = :seq", seq=seq)
    assert _value_row(_rows())["new_value"] == _value_row(history)["new_value"]


@pytest.mark.requirement("P11-10e-2")
def test_an_update_that_changes_a_kept_value_is_refused(fresh_app, history):
    row = _value_row(history)
    message = _refused("UPDATE audit_value SET new_value = 'Another name' WHERE seq = :seq",
                       seq=row["seq"])
    assert "only a recorded redaction may mask a value" in message
    # not even with a redaction seq: a redaction masks, it never writes another value
    _refused("UPDATE audit_value SET new_value = 'Another name', redacted_seq = :r WHERE seq = :seq",
             seq=row["seq"], r=history[-1]["seq"])
    # and masking without naming the redaction is refused too
    _refused("UPDATE audit_value SET new_value = NULL, new_salt = NULL WHERE seq = :seq",
             seq=row["seq"])
    assert _value_row(_rows())["new_value"] == row["new_value"]


def test_a_masking_update_with_its_redaction_seq_is_accepted(fresh_app, history):
    row = _value_row(history)
    assert _run("UPDATE audit_value SET new_value = NULL, new_salt = NULL, redacted_seq = :r "
                "WHERE seq = :seq", seq=row["seq"], r=history[-1]["seq"]) == 1
    masked = next(r for r in _rows() if r["seq"] == row["seq"])
    assert masked["new_value"] is None and masked["new_salt"] is None
    assert masked["redacted_seq"] == history[-1]["seq"]


# --- negative control ----------------------------------------------------------------------


@pytest.mark.requirement("P11-10e-2")
def test_negative_control_without_the_trigger_the_same_update_succeeds(fresh_app, history,
                                                                      engine_name):
    seq = history[1]["seq"]
    drop = {"sqlite": "DROP TRIGGER audit_trail_no_update",
            "postgresql": "DROP TRIGGER audit_trail_no_change ON audit_trail"}[engine_name]
    _run(drop)
    with db.engine.connect() as conn:
        assert existing_guards(conn) == GUARD_TRIGGERS[engine_name] - {drop.split()[2]}
    assert _run(TAMPER, seq=seq) == 1
    assert _rows()[1]["reason_text"] == "rewritten"


# --- the least-privilege role of the docs (PostgreSQL) -------------------------------------


def _docs_sql() -> list[str]:
    """The statements of the GRANT block: the package file the docs show and the installation
    check compares the application role with."""
    return grant_statements()


def _docs_block(text: str) -> str:
    """The one ```sql block of the section on roles of docs/audit-trail.md."""
    section = text.split("\n## Least-privilege PostgreSQL roles\n")[1].split("\n## ")[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the section on roles must hold one ```sql block"
    return blocks[0]


def test_the_docs_show_the_grants_file_of_the_package_unchanged():
    assert _docs_block(DOCS.read_text(encoding="utf-8")) == GRANTS_SQL.read_text(encoding="utf-8")


def test_negative_control_a_grant_edited_in_the_docs_alone_is_noticed():
    docs = DOCS.read_text(encoding="utf-8")
    edited = docs.replace("GRANT SELECT, INSERT ON audit_trail TO ecrf_app;",
                          "GRANT SELECT, INSERT, UPDATE ON audit_trail TO ecrf_app;")
    assert edited != docs
    assert _docs_block(edited) != GRANTS_SQL.read_text(encoding="utf-8")


def test_the_docs_sql_grants_no_delete_or_truncate_and_only_select_insert_on_the_trail():
    statements = _docs_sql()
    grants = [s for s in statements if s.upper().startswith("GRANT")]
    assert grants
    for s in grants:
        if s == "GRANT SELECT, INSERT, UPDATE, DELETE ON procrastinate_workers TO ecrf_app":
            continue  # the job queue's own bookkeeping: a stopping worker deletes its row
        assert not re.search(r"\b(DELETE|TRUNCATE|ALL)\b", s.split(" ON ")[0], re.IGNORECASE), s
    on_trail = [s for s in grants if re.search(r"\baudit_trail\b", s)]
    assert on_trail == ["GRANT SELECT, INSERT ON audit_trail TO ecrf_app"]


@pytest.fixture
def least_privilege(fresh_app, engine_name):
    """Roles and grants exactly as docs/audit-trail.md says, under unique names; dropped after."""
    if engine_name != "postgresql":
        pytest.skip("roles and GRANTs are PostgreSQL's; SQLite has no users")
    tag = uuid.uuid4().hex[:8]
    names = {"app": f"ecrf_app_{tag}", "owner": f"ecrf_owner_{tag}"}
    database = db.engine.url.database
    statements = []
    for s in _docs_sql():
        if s.upper().startswith("CREATE DATABASE"):
            continue  # the test has its database already
        s = re.sub(r"\becrf_app\b", names["app"], s)
        s = re.sub(r"\becrf_owner\b", names["owner"], s)
        statements.append(re.sub(r"\bDATABASE ecrf\b", f'DATABASE "{database}"', s))
    assert any(s.startswith(f"CREATE ROLE {names['app']}") for s in statements), statements
    db.session.remove()
    try:
        with db.engine.begin() as conn:
            for s in statements:
                conn.exec_driver_sql(s)
        yield names
    finally:
        db.session.remove()
        with db.engine.begin() as conn:
            for role in names.values():
                if conn.exec_driver_sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'").first():
                    conn.exec_driver_sql(f"DROP OWNED BY {role}")
                    conn.exec_driver_sql(f"DROP ROLE {role}")


def _as_role(role: str, statement, **params) -> list:
    """One transaction under ``role``; the rows it returns, if any."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL ROLE {role}")
        assert conn.exec_driver_sql("SELECT current_user").scalar_one() == role
        if isinstance(statement, str):
            statement = sa.text(statement)
        result = conn.execute(statement, params) if params else conn.execute(statement)
        return result.all() if result.returns_rows else []


@pytest.mark.requirement("P11-10e-2")
def test_the_application_role_of_the_docs_cannot_rewrite_the_trail_even_without_triggers(
        fresh_app, history, least_privilege):
    app_role = least_privilege["app"]
    db.session.remove()
    with db.engine.begin() as conn:  # the owner removes every guard: only privileges are left
        conn.exec_driver_sql("ALTER TABLE audit_trail DISABLE TRIGGER USER")
        conn.exec_driver_sql("ALTER TABLE audit_value DISABLE TRIGGER USER")
        assert existing_guards(conn) == GUARD_TRIGGERS["postgresql"]  # still there, but disabled
        assert conn.exec_driver_sql(
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D' "
            "AND tgrelid IN ('audit_trail'::regclass, 'audit_value'::regclass)").scalar_one() == 0
    # what the application does: read and append
    assert len(_as_role(app_role, "SELECT seq FROM audit_trail")) == len(history)
    last = {k: v for k, v in history[-1].items() if k in TRAIL.c}
    _as_role(app_role, TRAIL.insert().values(**{**last, "seq": last["seq"] + 1,
                                                 "prev_hash": last["row_hash"], "row_hash": "f" * 64}))
    assert len(_as_role(app_role, "SELECT seq FROM audit_trail")) == len(history) + 1
    # what it cannot do, triggers or not
    seq = history[1]["seq"]
    for statement in (TAMPER, "DELETE FROM audit_trail WHERE seq = :seq",
                      "TRUNCATE audit_trail CASCADE", "DELETE FROM audit_value WHERE seq = :seq",
                      "TRUNCATE audit_value", "DELETE FROM audit_chain_head",
                      "TRUNCATE audit_chain_head"):
        with pytest.raises(DBAPIError, match="permission denied"):
            _as_role(app_role, statement, **({"seq": seq} if ":seq" in statement else {}))
    assert _rows()[1]["reason_text"] == history[1]["reason_text"]
    # negative control: the owner (the test's own role) is not so limited
    assert _run(TAMPER, seq=seq) == 1
    assert _rows()[1]["reason_text"] == "rewritten"


def test_the_docs_grants_cover_every_table_of_the_application(fresh_app, least_privilege):
    app_role = least_privilege["app"]
    expected = {name: {"SELECT", "INSERT", "UPDATE"} for name in db.metadata.tables}
    for insert_only in ("audit_trail", "signature", "query_message", "audit_review"):
        expected[insert_only] = {"SELECT", "INSERT"}
    for queue_table in ("procrastinate_jobs", "procrastinate_events",
                        "procrastinate_periodic_defers"):
        expected[queue_table] = {"SELECT", "INSERT", "UPDATE"}
    expected["procrastinate_workers"] = {"SELECT", "INSERT", "UPDATE", "DELETE"}
    checked = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
    with db.engine.connect() as conn:
        held = {
            name: {p for p in checked if conn.execute(
                sa.text("SELECT has_table_privilege(:r, :t, :p)"),
                {"r": app_role, "t": f'"{name}"', "p": p}).scalar_one()}
            for name in expected
        }
        sequences = conn.exec_driver_sql(
            "SELECT c.relname FROM pg_class c WHERE c.relkind = 'S'").scalars().all()
        assert sequences
        for sequence in sequences:
            assert conn.execute(sa.text("SELECT has_sequence_privilege(:r, :s, 'USAGE')"),
                                {"r": app_role, "s": sequence}).scalar_one(), sequence
    assert held == expected


def test_the_application_runs_as_the_role_of_the_docs(fresh_app, history, least_privilege):
    """Every table the application writes is covered by the grants of the docs."""
    url = db.engine.url.set(username=least_privilege["app"], password=None)
    study = {k: fresh_app.config[k] for k in STUDY_SETTINGS if k in fresh_app.config}
    app = create_app("test", DATABASE_URL=url.render_as_string(hide_password=False), **study)
    with app.app_context():
        try:
            assert db.session.execute(sa.text("SELECT current_user")).scalar_one() \
                == least_privilege["app"]
            make = Factories()
            make.site("02")
            make.user("bob", role="investigator", site="02")
            subject = make.subject("02")
            assert subject.code == "02-001"
            rows = list(chain.iter_db_rows(db.session))
            assert len(rows) > len(history)
            assert chain.verify_rows(rows, stored_head=chain.stored_head(db.session)).ok
            db.session.remove()
            result = app.test_cli_runner().invoke(args=["audit", "verify"])
            assert result.exit_code == 0, result.output
            # a web export, queued by the app and run by the worker, both as this role
            from ecrf.access.grants import Access
            from ecrf.exports import jobs

            app.config.update(EXPORTS_RUN_INLINE=False, EXPORTS_DIR=fresh_app.config["EXPORTS_DIR"])
            dm = make.user("dm-role", role="data_manager")
            job = jobs.request(Access.for_user(dm, "audit.view").actor(), "audit_jsonl", jobs.Scope())
            db.session.remove()
            result = app.test_cli_runner().invoke(args=["export", "worker", "--once"])
            assert result.exit_code == 0, result.output
            assert db.session.get(jobs.ExportJob, job.id).state == "done"
        finally:
            db.session.remove()
            db.engine.dispose()
