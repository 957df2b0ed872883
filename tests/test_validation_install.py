"""``ecrf validate install``: the installation check of a production system.

A production-like installation (the production configuration with production-grade settings,
on PostgreSQL as the least-privileged role of ``ecrf/audit/grants.sql``) passes every check; the
run writes its dated report (JSON and PDF) and is recorded in the audit trail. Then each check
is shown to fail when its condition is broken, one at a time, on a database of the test's own:
a dropped or disabled trigger, a tampered audit row, a database at an older revision, a role with
too many rights, a clock that disagrees or went back, a weak secret, insecure cookies, no TLS
settings. The guards are tried on a probe row that leaves no trace; without the rollback it would.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade
from pypdf import PdfReader

import config
from ecrf import __version__, create_app
from ecrf.audit.ddl import create_guards
from ecrf.audit.models import AuditRecord, AuditValue, ChainHead
from ecrf.audit.viewer import action_label
from ecrf.backup import read_state
from ecrf.extensions import db
from ecrf.validation import install
from tests.factories import Factories

#: a key as `python -c "import secrets; print(secrets.token_urlsafe(40))"` draws it
STRONG_SECRET = "q8Vd1tXkz3LmR0pYfA7cW2nEo5HsJ9uBgT4iKyZ6xQvN-MaPe_"
REDIS_URL = os.environ.get("ECRF_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
#: what a production deployment sets besides the configuration class
PRODUCTION = {"SECRET_KEY": STRONG_SECRET, "RATELIMIT_STORAGE_URI": REDIS_URL, "PROXY_COUNT": 1}
#: the harness's study definition, passed on to the apps of the tests
STUDY_SETTINGS = ("CRF_MODULES", "EXTRA_CRF_MODULES", "SCHEDULE", "EXPORTS_DIR")

ROLE_CHECKS = {"role.attributes", "role.ownership", "role.create", "role.privileges",
               "role.sequences"}
COMMON_CHECKS = {"schema.revision", "audit.triggers", "audit.refusal", "audit.chain",
                 "time.database_zone", "time.server_zone", "time.skew", "time.sane",
                 "config.production", "config.secret_key", "config.cookie_httponly",
                 "config.cookie_samesite", "config.csrf", "config.debug", "config.rate_limits",
                 "tls.scheme", "tls.hsts", "tls.cookie_secure", "tls.proxy"}


# --- the installation under test -----------------------------------------------------------------


@pytest.fixture
def roles(fresh_app, engine_name):
    """PostgreSQL: the roles and GRANTs of grants.sql, under names of the test's own, applied
    to the test's database as its owner; dropped after. SQLite: none."""
    if engine_name != "postgresql":
        yield None
        return
    tag = uuid.uuid4().hex[:8]
    names = {"app": f"ecrf_app_{tag}", "owner": f"ecrf_owner_{tag}"}
    statements = []
    for s in install.grant_statements():
        if s.upper().startswith("CREATE DATABASE"):
            continue  # the test has its database
        s = re.sub(r"\becrf_app\b", names["app"], s)
        s = re.sub(r"\becrf_owner\b", names["owner"], s)
        statements.append(re.sub(r"\bDATABASE ecrf\b", f'DATABASE "{db.engine.url.database}"', s))
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


@pytest.fixture
def production(fresh_app, roles, monkeypatch):
    """Build apps as a deployment does, on the test's database: the production configuration,
    production-grade settings, and on PostgreSQL the application role of grants.sql with the
    owner for migrations. Settings of the environment play no part."""
    for name in config.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    owner_url = fresh_app.config["SQLALCHEMY_DATABASE_URI"]
    app_url = owner_url
    if roles is not None:
        app_url = sa.make_url(owner_url).set(username=roles["app"], password=None) \
            .render_as_string(hide_password=False)
    study = {k: fresh_app.config[k] for k in STUDY_SETTINGS if k in fresh_app.config}
    built = []

    def build(config_name: str = "production", **overrides):
        settings = {"DATABASE_URL": app_url,
                    "MIGRATION_DATABASE_URL": owner_url if roles is not None else None,
                    **study, **PRODUCTION, **overrides}
        app = create_app(config_name, **settings)
        built.append(app)
        return app

    build.owner_url = owner_url
    build.roles = roles
    yield build
    for app in built:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def checks_of(app) -> dict[str, install.Check]:
    with app.app_context():
        return {c.id: c for c in install.run_checks()}


def failed(checks: dict[str, install.Check]) -> set[str]:
    return {k for k, c in checks.items() if c.status == install.FAIL}


def invoke(app, output: Path, *args: str):
    with app.app_context():
        return app.test_cli_runner().invoke(args=["validate", "install", "-o", str(output), *args])


def owner_sql(*statements: str, **params) -> None:
    """As the owner of the test's database (the fresh app's own connection)."""
    db.session.remove()
    with db.engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement), params)


def state() -> dict:
    """Row counts of every table, the chain head and the schema revision, read as the owner."""
    db.session.remove()
    with db.engine.connect() as conn:
        return read_state(conn)


def the_report(output: Path) -> tuple[dict, Path]:
    (json_path,) = output.glob("install-check-*.json")
    return json.loads(json_path.read_text(encoding="utf-8")), json_path.with_suffix(".pdf")


# --- a production installation passes ---------------------------------------------------------


def test_a_production_installation_passes_every_check(production, engine_name, tmp_path):
    result = invoke(production(), tmp_path)
    assert result.exit_code == 0, result.output
    assert "Result: pass: " in result.output
    report, _pdf = the_report(tmp_path)
    checks = {c["id"]: c for c in report["checks"]}
    if engine_name == "postgresql":
        assert set(checks) == COMMON_CHECKS | ROLE_CHECKS
        assert {c["status"] for k, c in checks.items() if k != "time.server_zone"} == {"pass"}
        # the guards refused as the application role (by its rights) and as the owner (by the
        # triggers themselves, which the owner's rights would not stop)
        assert f"as the application role {production.roles['app']}" in checks["audit.refusal"]["detail"]
        assert "as the owner role" in checks["audit.refusal"]["detail"]
        assert re.search(r"as the owner role \w+: 4 by the triggers", checks["audit.refusal"]["detail"])
    else:
        assert set(checks) == COMMON_CHECKS | {"role"}
        assert checks["role"] == {"id": "role", "section": "role", "title": "Database role",
                                  "status": "not applicable",
                                  "detail": "not applicable (no database roles)"}
        assert checks["time.database_zone"]["status"] == "not applicable"
        assert {c["status"] for k, c in checks.items()
                if k not in ("role", "time.database_zone", "time.server_zone")} == {"pass"}
        assert "on SQLite: 4 by the triggers" in checks["audit.refusal"]["detail"]
    # the app server's own zone is the host's: a warning elsewhere than UTC, never a failure
    assert checks["time.server_zone"]["status"] in ("pass", "warning")
    assert report["result"] == "pass" and report["counts"]["fail"] == 0


def test_the_report_is_dated_json_and_pdf_and_the_run_is_in_the_audit_trail(production, tmp_path):
    before = state()
    result = invoke(production(), tmp_path)
    assert result.exit_code == 0, result.output
    report, pdf_path = the_report(tmp_path)
    assert re.fullmatch(r"install-check-\d{8}T\d{6}Z", report["name"])
    assert pdf_path.name == f"{report['name']}.pdf" and pdf_path.is_file()
    assert report["software"] == {"name": "ecrf", "version": __version__,
                                  "commit": install.software_commit()}
    if (Path(install.__file__).resolve().parents[2] / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", report["software"]["commit"])
    assert report["machine"]["hostname"] == socket.gethostname()
    assert report["configuration"] == "production" and report["operator"] == "system"
    assert "password" not in json.dumps(report["database"]).lower()
    started = datetime.fromisoformat(report["started_at"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - started).total_seconds()) < 120
    assert report["name"] == f"install-check-{started:%Y%m%dT%H%M%SZ}"
    # the PDF: the same run, every check with its outcome
    assert pdf_path.read_bytes().startswith(b"%PDF-")
    text = " ".join(page.extract_text() for page in PdfReader(pdf_path).pages)
    text = " ".join(text.split())
    assert "Installation check" in text and report["software"]["commit"] in text
    assert f"recorded as seq {report['recorded_as_seq']}" in text
    for check in report["checks"]:
        assert check["id"] in text
    # one audit record of the run: the only write
    after = state()
    assert after["audit"]["rows"] == before["audit"]["rows"] + 1
    assert {k: v for k, v in after["tables"].items() if k not in ("audit_trail", "audit_value",
                                                                   "audit_chain_head")} \
        == {k: v for k, v in before["tables"].items() if k not in ("audit_trail", "audit_value",
                                                                    "audit_chain_head")}
    row = db.session.scalars(sa.select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
    assert row.seq == report["recorded_as_seq"] == after["audit"]["last_seq"]
    assert (row.action, row.entity_type, row.entity_id) == ("validate.install", "validation",
                                                           report["name"])
    assert (row.username, row.reason_code) == ("system", "system")
    value = db.session.get(AuditValue, row.seq).new_value
    assert value.startswith("pass: ") and " 0 fail" in value and report["name"] in value
    assert action_label("validate.install") == "Installation checked"
    db.session.remove()
    app = production()
    with app.app_context():
        verify = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert verify.exit_code == 0, verify.output


def test_a_named_administrator_runs_it_and_no_one_else(production, tmp_path):
    make = Factories()
    make.user("it-admin", role="admin")
    make.site("01")
    make.user("site-investigator", role="investigator", site="01")
    db.session.remove()
    app = production()
    rows = state()["audit"]["rows"]
    for who, why in (("site-investigator", "does not hold the permission users.manage"),
                     ("nobody", "No active user 'nobody'"), ("system", "No active user 'system'")):
        refused = invoke(app, tmp_path / who, "--as", who)
        assert refused.exit_code != 0 and why in refused.output, refused.output
        assert not list((tmp_path / who).glob("install-check-*"))
    assert state()["audit"]["rows"] == rows
    result = invoke(app, tmp_path / "ok", "--as", "it-admin")
    assert result.exit_code == 0, result.output
    report, _pdf = the_report(tmp_path / "ok")
    row = db.session.get(AuditRecord, report["recorded_as_seq"])
    assert (row.username, row.role, row.reason_code) == ("it-admin", "admin", "administrative")
    assert report["operator"] == "it-admin"


# --- the guard probe leaves no trace ------------------------------------------------------------


def test_trying_the_guards_leaves_no_trace(production):
    before = state()
    checks = checks_of(production())
    assert checks["audit.refusal"].status == install.PASS
    assert state() == before


def test_negative_control_without_the_rollback_the_probe_row_would_stay(production, monkeypatch):
    before = state()
    monkeypatch.setattr(install, "_end_probe", lambda transaction: transaction.commit())
    checks_of(production())
    after = state()
    assert after != before
    assert after["audit"]["rows"] > before["audit"]["rows"]


# --- each check fails when its condition is broken ---------------------------------------------


@pytest.mark.requirement("P11-10e-2")
def test_a_dropped_trigger_is_missing_and_the_update_it_guarded_goes_through(production,
                                                                           engine_name):
    trigger = {"sqlite": "audit_trail_no_update", "postgresql": "audit_trail_no_change"}[engine_name]
    owner_sql(f"DROP TRIGGER {trigger}" + (" ON audit_trail" if engine_name == "postgresql" else ""))
    before = state()
    checks = checks_of(production())
    assert failed(checks) == {"audit.triggers", "audit.refusal"}
    assert checks["audit.triggers"].detail == f"missing: {trigger}"
    # PostgreSQL: the application role is still stopped by its rights; the owner is not
    assert "UPDATE audit_trail accepted" in checks["audit.refusal"].detail
    assert state() == before  # accepted, and rolled back all the same


@pytest.mark.requirement("P11-10e-2")
def test_a_disabled_trigger_fails_on_postgresql(production, engine_name):
    if engine_name != "postgresql":
        pytest.skip("SQLite triggers cannot be disabled, only dropped")
    owner_sql("ALTER TABLE audit_value DISABLE TRIGGER audit_value_mask_only")
    checks = checks_of(production())
    assert failed(checks) == {"audit.triggers", "audit.refusal"}
    assert checks["audit.triggers"].detail == "disabled: audit_value_mask_only"
    # the application role may UPDATE audit_value (to mask a redacted value): only the trigger
    # stood between it and rewriting a kept value
    assert "UPDATE audit_value accepted as the application role" in checks["audit.refusal"].detail


@pytest.mark.requirement("P11-10a")
def test_a_tampered_audit_row_fails_the_chain_check(production, engine_name):
    make = Factories()
    make.site("01")
    make.user("alice", role="data_manager")
    seq = db.session.scalar(sa.select(sa.func.max(AuditRecord.seq))) - 1
    db.session.remove()
    trigger = {"sqlite": "audit_trail_no_update", "postgresql": "audit_trail_no_change"}[engine_name]
    owner_sql(f"DROP TRIGGER {trigger}" + (" ON audit_trail" if engine_name == "postgresql" else ""),
              "UPDATE audit_trail SET reason_text = 'rewritten' WHERE seq = :seq", seq=seq)
    with db.engine.begin() as conn:
        create_guards(conn)  # the guards back: only the chain shows what happened
    checks = checks_of(production())
    assert failed(checks) == {"audit.chain"}
    assert checks["audit.chain"].detail.startswith(f"FAILED at seq {seq}: ")


@pytest.mark.requirement("A11-10")
def test_a_database_at_an_older_revision_fails(production):
    db.session.remove()
    head = state()["alembic_revision"]
    downgrade(revision="-1")
    older = state()["alembic_revision"]
    assert older != head
    checks = checks_of(production())
    assert failed(checks) == {"schema.revision"}
    assert checks["schema.revision"].detail == \
        f"database at {older}, the package's head is {head}: run `ecrf db upgrade`"


def test_a_database_newer_than_the_software_fails(production):
    owner_sql("UPDATE alembic_version SET version_num = 'f00dfacef00d'")
    checks = checks_of(production())
    assert failed(checks) == {"schema.revision"}
    assert "unknown to this version of the software" in checks["schema.revision"].detail


@pytest.mark.requirement("P11-10e-2")
@pytest.mark.parametrize(("grant", "check", "finding"), [
    ("GRANT DELETE ON audit_trail TO {app}", "role.privileges", "holds DELETE on audit_trail"),
    ("GRANT UPDATE (reason_text) ON audit_trail TO {app}", "role.privileges",
     "holds UPDATE on audit_trail"),
    ("GRANT DELETE ON subject TO {app}", "role.privileges", "holds DELETE on subject"),
    ("REVOKE INSERT ON item_value FROM {app}", "role.privileges", "item_value -INSERT"),
    ("GRANT CREATE ON SCHEMA public TO {app}", "role.create", "holds CREATE on schema public"),
    ("GRANT UPDATE ON ALL SEQUENCES IN SCHEMA public TO {app}", "role.sequences", "UPDATE, USAGE"),
    ("ALTER ROLE {app} CREATEROLE", "role.attributes", "is CREATEROLE"),
])
def test_a_role_with_other_rights_than_grants_sql_fails(production, engine_name, grant, check,
                                                         finding):
    if engine_name != "postgresql":
        pytest.skip("database roles are PostgreSQL's")
    owner_sql(grant.format(app=production.roles["app"]))
    checks = checks_of(production())
    assert failed(checks) == {check}
    assert finding in checks[check].detail


def test_the_application_connecting_as_the_owner_fails(production, engine_name):
    if engine_name != "postgresql":
        pytest.skip("database roles are PostgreSQL's")
    checks = checks_of(production(DATABASE_URL=production.owner_url))
    assert {"role.attributes", "role.ownership", "role.privileges"} <= failed(checks)
    assert "could drop the triggers" in checks["role.ownership"].detail


def test_no_database_role_check_on_sqlite(production, engine_name):
    if engine_name != "sqlite":
        pytest.skip("PostgreSQL has roles: tested above")
    checks = checks_of(production())
    assert checks["role"].status == install.NOT_APPLICABLE
    assert not ROLE_CHECKS & set(checks)


@pytest.mark.requirement("E6-4.2.2d")
def test_a_database_session_not_in_utc_fails_on_postgresql(production, engine_name):
    if engine_name != "postgresql":
        pytest.skip("SQLite has no session time zone")
    owner_sql(f'ALTER DATABASE "{db.engine.url.database}" SET TimeZone = \'Europe/Paris\'')
    checks = checks_of(production())  # new connections: the database's setting applies
    assert failed(checks) == {"time.database_zone"}
    assert "Europe/Paris" in checks["time.database_zone"].detail


@pytest.mark.requirement("E6-4.2.2d")
def test_an_app_server_clock_off_by_a_minute_fails(production, monkeypatch):
    real = install.app_now
    monkeypatch.setattr(install, "app_now", lambda: real() + timedelta(seconds=60))
    checks = checks_of(production())
    assert failed(checks) == {"time.skew"}
    assert re.fullmatch(r"the database clock is -(59|60)\.\d s from the app server's "
                        r"\(at most 5 s allowed\)", checks["time.skew"].detail)


@pytest.mark.requirement("E6-4.2.2d")
def test_a_clock_before_the_last_audit_record_fails(production):
    db.session.remove()
    with db.engine.begin() as conn:  # the last record an hour ahead: the clock went back
        conn.execute(sa.update(ChainHead.__table__).values(
            last_recorded_at=datetime.now(UTC) + timedelta(hours=1)))
    checks = checks_of(production())
    assert failed(checks) == {"time.sane"}
    assert checks["time.sane"].detail.startswith(
        "the database and the app server clocks read a time before the last audit record")


def test_a_clock_years_after_the_last_audit_record_is_a_warning(production):
    db.session.remove()
    with db.engine.begin() as conn:
        conn.execute(sa.update(ChainHead.__table__).values(
            last_recorded_at=datetime.now(UTC) - timedelta(days=800)))
    checks = checks_of(production())
    assert not failed(checks)
    assert checks["time.sane"].status == install.WARNING


@pytest.fixture
def paris():
    """The app server's local time zone set to Paris for the test, then back."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "Europe/Paris")
        time.tzset()
        yield
    time.tzset()


def test_an_app_server_in_local_time_is_a_warning(production, paris):
    checks = checks_of(production())
    assert checks["time.server_zone"].status == install.WARNING
    assert not failed(checks)


@pytest.mark.requirement("E6-4.3.3")
@pytest.mark.parametrize(("secret", "finding"), [
    (None, "SECRET_KEY is not set"),
    (config.DevelopmentConfig.SECRET_KEY, "SECRET_KEY is a known default"),
    (config.TestConfig.SECRET_KEY, "SECRET_KEY is a known default"),
    ("change-me", "SECRET_KEY is a known default"),
    ("Xk3-vQ9z_LmR2pYt", "SECRET_KEY has 16 characters; at least 32 needed"),
    ("ab" * 24, "SECRET_KEY uses only 2 distinct characters"),
])
def test_a_weak_secret_key_fails(production, secret, finding):
    checks = checks_of(production(SECRET_KEY=secret))
    assert failed(checks) == {"config.secret_key"}
    assert checks["config.secret_key"].detail.startswith(finding)
    assert STRONG_SECRET not in json.dumps([c.detail for c in checks.values()])


@pytest.mark.requirement("E6-4.3.3")
@pytest.mark.parametrize(("setting", "check"), [
    ({"SESSION_COOKIE_SECURE": False}, "tls.cookie_secure"),
    ({"SESSION_COOKIE_HTTPONLY": False}, "config.cookie_httponly"),
    ({"SESSION_COOKIE_SAMESITE": None}, "config.cookie_samesite"),
    ({"SESSION_COOKIE_SAMESITE": "None"}, "config.cookie_samesite"),
    ({"WTF_CSRF_ENABLED": False}, "config.csrf"),
    ({"DEBUG": True}, "config.debug"),
    ({"TESTING": True}, "config.debug"),
    ({"RATELIMIT_ENABLED": False}, "config.rate_limits"),
    ({"PREFERRED_URL_SCHEME": "http"}, "tls.scheme"),
    ({"HSTS_SECONDS": 0}, "tls.hsts"),
])
def test_an_insecure_setting_fails_its_check_and_only_it(production, setting, check):
    checks = checks_of(production(**setting))
    assert failed(checks) == {check}
    (name,) = setting
    assert name in checks[check].detail or check == "config.debug"


def test_no_proxy_in_front_is_a_warning_not_a_failure(production):
    checks = checks_of(production(PROXY_COUNT=0))
    assert not failed(checks)
    assert checks["tls.proxy"].status == install.WARNING


def test_the_development_configuration_fails_as_a_production_system(production):
    checks = checks_of(production("development", SECRET_KEY=config.DevelopmentConfig.SECRET_KEY,
                                  RATELIMIT_STORAGE_URI="memory://"))
    assert {"config.production", "config.secret_key", "config.rate_limits", "tls.scheme",
            "tls.hsts", "tls.cookie_secure"} <= failed(checks)
    assert "ECRF_CONFIG=production" in checks["config.production"].detail


def test_a_failed_check_exits_non_zero_and_is_still_reported_and_recorded(production, tmp_path):
    result = invoke(production(SECRET_KEY="short"), tmp_path)
    assert result.exit_code == 1, result.output
    assert re.search(r"^FAIL +config\.secret_key +SECRET_KEY has 5 characters", result.output, re.M)
    report, pdf_path = the_report(tmp_path)
    assert report["result"] == "fail" and pdf_path.is_file()
    value = db.session.get(AuditValue, report["recorded_as_seq"]).new_value
    assert value.startswith("fail: ") and "failed: config.secret_key" in value


def test_a_run_that_cannot_be_recorded_says_so_and_fails(production, tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT INTO audit_trail ...", {}, Exception("server closed"))

    monkeypatch.setattr(install, "record", unreachable)
    rows = state()["audit"]["rows"]
    result = invoke(production(), tmp_path)
    assert result.exit_code == 1
    assert "NOT recorded in the audit trail: OperationalError: server closed" in result.output
    report, pdf_path = the_report(tmp_path)
    assert report["result"] == "pass" and report["recorded_as_seq"] is None
    assert report["record_error"] == "OperationalError: server closed" and pdf_path.is_file()
    assert state()["audit"]["rows"] == rows


# --- what the role check compares with ---------------------------------------------------------


def test_the_rights_of_grants_sql_as_the_check_reads_them():
    rights = install.granted_rights()
    assert rights.tables["audit_trail"] == {"SELECT", "INSERT"}
    assert rights.tables["audit_value"] == rights.tables["item_value"] == {"SELECT", "INSERT",
                                                                            "UPDATE"}
    assert rights.tables["alembic_version"] == {"SELECT"}
    assert [t for t, r in rights.tables.items() if "DELETE" in r] == ["procrastinate_workers"]
    assert rights.sequences == {"USAGE"}
    edited = install.GRANTS_SQL.read_text(encoding="utf-8").replace(
        "GRANT SELECT, INSERT ON audit_trail", "GRANT SELECT, INSERT, DELETE ON audit_trail")
    assert install.granted_rights(install.grant_statements(edited)).tables["audit_trail"] \
        == {"SELECT", "INSERT", "DELETE"}
