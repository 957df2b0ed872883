"""``ecrf validate install``: the installation and operational check of a production system
(21 CFR 11.10(a), EU Annex 11 §4 and §11, ICH E6(R3) 4.3.3).

Run on the installed system with its own configuration (``ECRF_CONFIG=production``), it checks
what the tests of a source checkout cannot see: that this database is at the package's schema
revision, that its append-only guards exist and refuse a change, that the application's database
role holds exactly the rights of ``ecrf/audit/grants.sql``, that the audit chain verifies, that
the clocks are UTC and agree, and that secrets, cookies and TLS settings are production grade.

Nothing clinical is changed. The guards are tried on a probe row appended inside a transaction
that is rolled back whatever happens, under the chain lock. The one write is the audit record of
the run itself (action ``validate.install``). The run writes a dated report, JSON and PDF, and
exits non-zero when a check failed.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import sqlalchemy as sa
from flask import current_app, render_template
from flask.cli import with_appcontext

from ecrf.audit.ddl import GUARD_TRIGGERS, REFUSAL, existing_guards
from ecrf.extensions import db

ACTION = "validate.install"
REPORT_FORMAT = 1
GRANTS_SQL = Path(__file__).resolve().parent.parent / "audit" / "grants.sql"
TEMPLATE = "validation/install.html"
STYLESHEET = Path(__file__).resolve().parent.parent / "templates" / "validation" / "install.css"
#: the application role as ``grants.sql`` names it; the check applies its GRANTs to the role
#: the application actually connects as
GRANTS_APP_ROLE = "ecrf_app"

PASS, WARNING, FAIL, NOT_APPLICABLE = "pass", "warning", "fail", "not applicable"
STATUS_LABELS = {PASS: "Pass", WARNING: "Warning", FAIL: "Fail",
                 NOT_APPLICABLE: "Not applicable"}

#: seconds the database clock and the app server's clock may differ
CLOCK_TOLERANCE_SECONDS = 5
#: a clock this far past the last audit record is more likely wrong than the study quiet
QUIET_LIMIT = timedelta(days=366)
SECRET_MIN_LENGTH = 32
SECRET_MIN_DISTINCT = 10
#: time zone names PostgreSQL may report for UTC (GMT: the same offset, never a summer time)
UTC_NAMES = {"UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu",
             "GMT", "Etc/GMT", "GMT0", "Etc/GMT0", "Greenwich", "Etc/Greenwich"}
#: rights a table may carry; SELECT, INSERT, UPDATE and REFERENCES also count per column
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
COLUMN_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "REFERENCES"}
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")
#: the one table the application may delete from (the job queue's worker rows)
DELETE_ALLOWED = {"procrastinate_workers"}

SECTIONS = {
    "schema": "Database schema",
    "audit": "Append-only audit trail",
    "role": "Database role",
    "time": "Time",
    "secrets": "Secrets and cookies",
    "tls": "TLS in front",
}


@dataclass
class Check:
    """One line of the report: what was checked, its outcome and why, in one line."""

    id: str
    section: str
    title: str
    status: str
    detail: str


class Failed(Exception):
    """A check's finding that makes it fail; the message is the detail line."""


class Warned(Exception):
    """A check's finding worth a warning, not a failure."""


class NotApplicable(Exception):
    """A check that does not apply to this database engine."""


# --- what is compared --------------------------------------------------------------------------


def grant_statements(text: str | None = None) -> list[str]:
    """The statements of ``grants.sql`` (comments removed, whitespace collapsed)."""
    text = GRANTS_SQL.read_text(encoding="utf-8") if text is None else text
    text = re.sub(r"--[^\n]*", "", text)
    return [" ".join(s.split()) for s in text.split(";") if s.strip()]


@dataclass
class GrantedRights:
    tables: dict[str, set[str]]
    sequences: set[str]


_GRANT = re.compile(rf"^GRANT (?P<privileges>[A-Z, ]+) ON (?P<objects>.+) TO {GRANTS_APP_ROLE}$",
                    re.IGNORECASE)


def granted_rights(statements: list[str] | None = None) -> GrantedRights:
    """What ``grants.sql`` gives the application role: per table, and on every sequence."""
    tables: dict[str, set[str]] = {}
    sequences: set[str] = set()
    for statement in grant_statements() if statements is None else statements:
        found = _GRANT.match(statement)
        if not found:
            continue
        privileges = {p.strip().upper() for p in found["privileges"].split(",")}
        objects = found["objects"]
        if re.match(r"(DATABASE|SCHEMA)\b", objects, re.IGNORECASE):
            continue
        if re.match(r"ALL SEQUENCES IN SCHEMA\b", objects, re.IGNORECASE):
            sequences |= privileges
            continue
        for name in objects.split(","):
            tables.setdefault(name.strip().strip('"'), set()).update(privileges)
    return GrantedRights(tables, sequences)


KNOWN_SECRETS = {"change-me", "changeme", "secret", "secret-key", "your-secret-key", "dev", "test"}


def known_default_secrets() -> set[str]:
    """The keys shipped in the configuration classes (development, test) and common placeholders."""
    import config as config_module

    return KNOWN_SECRETS | {c.SECRET_KEY for c in config_module.CONFIGS.values() if c.SECRET_KEY}


# --- the checks --------------------------------------------------------------------------------


def app_now() -> datetime:
    """The app server's clock (one place, so that a test can move it)."""
    return datetime.now(UTC)


@dataclass
class Target:
    """Where the checks look: the app's engine and, if configured, the migrations' owner."""

    engine: sa.Engine
    owner_engine: sa.Engine | None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


def _error_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _listed(items: list[str], limit: int = 6, separator: str = ", ") -> str:
    """A list for a one-line detail: the first few, then how many more."""
    shown = separator.join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _schema_revision(target: Target) -> str:
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from ecrf import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS_DIR)
    script = ScriptDirectory.from_config(cfg)
    heads = set(script.get_heads())
    with target.engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if len(heads) != 1:
        raise Failed(f"the package has {len(heads)} migration heads ({', '.join(sorted(heads))})")
    head = next(iter(heads))
    if current == heads:
        doc = " ".join((script.get_revision(head).doc or "").split())
        title = re.split(r"[:.](?:\s|$)", doc)[0]
        return f"at the package's head {head}" + (f" ({title})" if title else "")
    if not current:
        raise Failed(f"no schema revision recorded; the package's head is {head}: "
                     "run `ecrf db upgrade`")
    known = {r.revision for r in script.walk_revisions()}
    shown = ", ".join(sorted(current))
    if current - known:
        raise Failed(f"database at {shown}, unknown to this version of the software "
                     f"(head {head}): the database is newer than the software")
    raise Failed(f"database at {shown}, the package's head is {head}: run `ecrf db upgrade`")


def _trigger_state(target: Target) -> str:
    expected = GUARD_TRIGGERS[target.dialect]
    with target.engine.connect() as conn:
        present = existing_guards(conn)
        disabled: set[str] = set()
        replica = False
        if target.dialect == "postgresql":
            disabled = set(conn.exec_driver_sql(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'D' "
                "AND tgrelid IN ('audit_trail'::regclass, 'audit_value'::regclass)").scalars())
            # as a replica, a session fires no ordinary trigger
            replica = conn.exec_driver_sql("SHOW session_replication_role").scalar_one() == "replica"
    problems = []
    if expected - present:
        problems.append("missing: " + ", ".join(sorted(expected - present)))
    if disabled & expected:
        problems.append("disabled: " + ", ".join(sorted(disabled & expected)))
    if replica:
        problems.append("the application's sessions run with session_replication_role = replica")
    if problems:
        raise Failed("; ".join(problems))
    return f"{len(expected)} triggers present and enabled: {', '.join(sorted(expected))}"


#: PostgreSQL's SQLSTATE for a statement the role's rights refuse (whatever the server's language)
INSUFFICIENT_PRIVILEGE = "42501"
#: what the guards must refuse, tried on the probe row
PROBES = (
    ("UPDATE audit_trail", "UPDATE audit_trail SET reason_text = 'installation check' WHERE seq = :seq"),
    ("DELETE audit_trail", "DELETE FROM audit_trail WHERE seq = :seq"),
    ("UPDATE audit_value", "UPDATE audit_value SET new_value = 'installation check' WHERE seq = :seq"),
    ("DELETE audit_value", "DELETE FROM audit_value WHERE seq = :seq"),
)


def _end_probe(transaction: sa.RootTransaction) -> None:
    """Whatever the probe did, none of it stays."""
    transaction.rollback()


def probe_guards(engine: sa.Engine) -> dict[str, str]:
    """Append a probe row under the chain lock and try each statement of ``PROBES`` on it, each
    in a savepoint, in one transaction that is rolled back. Per statement: ``guard`` (refused by
    an append-only trigger), ``privilege`` (refused by the role's rights), ``accepted``, or
    ``other: <error>`` (refused by something else, e.g. a foreign key)."""
    from ecrf.audit.models import AuditRecord, AuditValue, ChainHead

    outcomes: dict[str, str] = {}
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            head = ChainHead.__table__
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
                conn.execute(sa.select(head.c.last_seq).where(head.c.id == 1).with_for_update())
            # SQLite: the transaction began with BEGIN IMMEDIATE, the database's write lock
            trail = AuditRecord.__table__
            seq = (conn.execute(sa.select(sa.func.max(trail.c.seq))).scalar() or 0) + 1
            system = conn.execute(sa.text('SELECT id FROM "user" WHERE username = :u'),
                                  {"u": "system"}).scalar_one()
            conn.execute(sa.insert(trail).values(
                seq=seq, recorded_at=datetime.now(UTC), format_version=1, user_id=system,
                username="system", action=ACTION, entity_type="probe", entity_id=None,
                reason_code="system", reason_text="installation check probe, rolled back",
                prev_hash="0" * 64, row_hash=secrets.token_hex(32)))
            conn.execute(sa.insert(AuditValue.__table__).values(
                seq=seq, new_salt=secrets.token_hex(16), new_value="probe"))
            for label, statement in PROBES:
                savepoint = conn.begin_nested()
                try:
                    count = conn.execute(sa.text(statement), {"seq": seq}).rowcount
                    outcomes[label] = "accepted" if count else "other: no row matched"
                except sa.exc.DBAPIError as e:
                    message = str(e.orig)
                    if REFUSAL in message:
                        outcomes[label] = "guard"
                    elif getattr(e.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE \
                            or "permission denied" in message.lower():
                        outcomes[label] = "privilege"
                    else:
                        outcomes[label] = "other: " + _error_line(e)
                finally:
                    if savepoint.is_active:
                        savepoint.rollback()
        finally:
            _end_probe(transaction)
    return outcomes


def _role_name(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT current_user").scalar_one()


def _trigger_refusal(target: Target) -> str:
    if target.dialect != "postgresql":
        tried = [("", target.engine)]  # SQLite: one file, no roles
    else:
        tried = [(f" as the application role {_role_name(target.engine)}", target.engine)]
        if target.owner_engine is not None:
            tried.append((f" as the owner role {_role_name(target.owner_engine)}",
                          target.owner_engine))
    problems, refused = [], []
    for who, engine in tried:
        outcomes = probe_guards(engine)
        for label, outcome in outcomes.items():
            if outcome == "accepted":
                problems.append(f"{label} accepted{who}")
            elif outcome.startswith("other"):
                problems.append(f"{label}{who} refused, but not by a guard ({outcome[7:]})")
        by = {k: sum(1 for o in outcomes.values() if o == k) for k in ("guard", "privilege")}
        refused.append(f"{who.strip() or 'on SQLite'}: {by['guard']} by the triggers"
                       + (f", {by['privilege']} by privileges" if who else ""))
    if problems:
        raise Failed("; ".join(problems))
    return (f"{len(PROBES)} UPDATE/DELETE statements on a probe audit row (in a transaction "
            "rolled back) refused " + "; ".join(refused))


def _audit_chain(_target: Target) -> str:
    from ecrf.audit import chain

    try:
        result = chain.verify_db(db.session)
    finally:
        db.session.remove()
    if not result.ok:
        seq, why = result.problems[0]
        raise Failed(f"FAILED at seq {seq}: {why}")
    redacted = f", {len(result.redacted)} values masked by a recorded redaction" \
        if result.redacted else ""
    return f"{result.rows_checked} rows checked, head {result.head_seq}:{result.head_hash}{redacted}"


# --- the database role (PostgreSQL) ---


def _require_postgresql(target: Target) -> None:
    if target.dialect != "postgresql":
        raise NotApplicable("not applicable (no database roles)")


def _role_attributes(target: Target) -> str:
    _require_postgresql(target)
    with target.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user").one()
    flags = dict(zip(("SUPERUSER", "CREATEROLE", "CREATEDB", "REPLICATION", "BYPASSRLS"), row[1:],
                     strict=True))
    held = [name for name, on in flags.items() if on]
    if held:
        raise Failed(f"{row[0]} is {', '.join(held)}")
    return f"{row[0]}: not a superuser; no CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS"


def _role_ownership(target: Target) -> str:
    _require_postgresql(target)
    with target.engine.connect() as conn:
        owned = conn.exec_driver_sql(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
            "AND pg_has_role(current_user, c.relowner, 'MEMBER') ORDER BY c.relname").scalars().all()
        role = conn.exec_driver_sql("SELECT current_user").scalar_one()
    if owned:
        raise Failed(f"{role} owns (or is a member of the owner of) {len(owned)} relations "
                     f"({_listed(owned)}): it could drop the triggers")
    return f"{role} owns no table or sequence of the schema (nor is a member of their owner)"


def _role_create(target: Target) -> str:
    _require_postgresql(target)
    with target.engine.connect() as conn:
        role, schema, on_schema, on_database = conn.exec_driver_sql(
            "SELECT current_user, current_schema(), "
            "has_schema_privilege(current_user, current_schema(), 'CREATE'), "
            "has_database_privilege(current_user, current_database(), 'CREATE')").one()
    held = ([f"CREATE on schema {schema}"] if on_schema else []) + \
        (["CREATE on the database"] if on_database else [])
    if held:
        raise Failed(f"{role} holds {' and '.join(held)}")
    return f"{role} holds no CREATE on schema {schema} or on the database"


def _table_rights(conn: sa.Connection) -> dict[str, set[str]]:
    """The rights ``current_user`` holds on every table of the schema, through any role it
    belongs to; a right on one column counts (UPDATE of one column of the trail is a rewrite)."""
    columns = ", ".join(
        f"{'has_any_column_privilege' if p in COLUMN_PRIVILEGES else 'has_table_privilege'}"
        f"(current_user, c.oid, '{p}')" for p in TABLE_PRIVILEGES)
    rows = conn.exec_driver_sql(
        f"SELECT c.relname, {columns} FROM pg_class c "  # noqa: S608 (constant names)
        "WHERE c.relnamespace = current_schema()::regnamespace "
        "AND c.relkind IN ('r', 'p', 'v', 'm', 'f')").all()
    return {name: {p for p, on in zip(TABLE_PRIVILEGES, flags, strict=True) if on}
            for name, *flags in rows}


def _role_privileges(target: Target) -> str:
    _require_postgresql(target)
    expected = granted_rights().tables
    with target.engine.connect() as conn:
        role = conn.exec_driver_sql("SELECT current_user").scalar_one()
        held = _table_rights(conn)
    forbidden, differences = [], []
    for name in sorted(held):
        rights, wanted = held[name], expected.get(name, set())
        if {"DELETE", "TRUNCATE"} & rights and name not in DELETE_ALLOWED:
            forbidden.append(f"{'/'.join(sorted({'DELETE', 'TRUNCATE'} & rights))} on {name}")
        if name == "audit_trail" and "UPDATE" in rights:
            forbidden.append("UPDATE on audit_trail")
        if rights != wanted:
            extra, missing = sorted(rights - wanted), sorted(wanted - rights)
            differences.append(name + " " + " ".join(
                [f"+{p}" for p in extra] + [f"-{p}" for p in missing]))
    if forbidden or differences:
        forbidden.sort(key=lambda f: not f.endswith(("audit_trail", "audit_value")))  # these first
        found = ([f"holds {_listed(forbidden, 4)}"] if forbidden else []) + \
            [f"differs from grants.sql on {len(differences)} tables: "
             f"{_listed(differences, 4, '; ')}"]
        raise Failed(f"{role} " + "; ".join(found))
    return f"{role}: the rights on all {len(held)} tables are exactly those of grants.sql"


def _role_sequences(target: Target) -> str:
    _require_postgresql(target)
    wanted = granted_rights().sequences
    with target.engine.connect() as conn:
        role = conn.exec_driver_sql("SELECT current_user").scalar_one()
        columns = ", ".join(f"has_sequence_privilege(current_user, c.oid, '{p}')"
                            for p in SEQUENCE_PRIVILEGES)
        rows = conn.exec_driver_sql(
            f"SELECT c.relname, {columns} FROM pg_class c "  # noqa: S608 (constant names)
            "WHERE c.relnamespace = current_schema()::regnamespace "
            "AND c.relkind = 'S' ORDER BY c.relname").all()
    differences = []
    for name, *flags in rows:
        rights = {p for p, on in zip(SEQUENCE_PRIVILEGES, flags, strict=True) if on}
        if rights != wanted:
            differences.append(f"{name}: {', '.join(sorted(rights)) or 'none'}")
    if differences:
        raise Failed(f"{role} should hold {', '.join(sorted(wanted))} on every sequence; holds "
                     + _listed(differences, 3, "; "))
    return f"{role}: {', '.join(sorted(wanted))} on all {len(rows)} sequences, nothing more"


# --- time ---


def _database_zone(target: Target) -> str:
    if target.dialect != "postgresql":
        raise NotApplicable("not applicable (SQLite has no session time zone; the application "
                            "writes UTC)")
    with target.engine.connect() as conn:
        zone = conn.exec_driver_sql("SHOW TimeZone").scalar_one()
    if zone not in UTC_NAMES:
        raise Failed(f"the database session's time zone is {zone}: set it to UTC "
                     "(ALTER DATABASE ... SET TimeZone = 'UTC')")
    return f"the database session's time zone is {zone}"


def _server_zone(_target: Target) -> str:
    local = datetime.now().astimezone()
    offset = local.utcoffset() or timedelta(0)
    if offset:
        raise Warned(f"the app server's local time zone is {local.tzname()} (UTC{local:%z}); ecrf "
                     "records UTC regardless, but the server's logs use local time")
    return f"the app server's local time zone is {local.tzname()} (UTC+0000)"


def _database_now(conn: sa.Connection) -> datetime:
    if conn.dialect.name == "postgresql":
        return conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one().astimezone(UTC)
    text = conn.exec_driver_sql("SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now')").scalar_one()
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _clock_skew(target: Target) -> str:
    with target.engine.connect() as conn:
        before = app_now()
        database = _database_now(conn)
        after = app_now()
    middle = before + (after - before) / 2
    skew = (database - middle).total_seconds()
    tolerance = CLOCK_TOLERANCE_SECONDS + (after - before).total_seconds() / 2
    if abs(skew) > tolerance:
        raise Failed(f"the database clock is {skew:+.1f} s from the app server's "
                     f"(at most {CLOCK_TOLERANCE_SECONDS} s allowed)")
    return f"the database clock is {skew:+.3f} s from the app server's " \
           f"(at most {CLOCK_TOLERANCE_SECONDS} s allowed)"


def _clock_sane(target: Target) -> str:
    from ecrf.audit.chain import format_time
    from ecrf.audit.models import AuditRecord, ChainHead

    with target.engine.connect() as conn:
        database = _database_now(conn)
        last_row = conn.execute(sa.select(sa.func.max(AuditRecord.recorded_at))).scalar()
        head = conn.execute(sa.select(ChainHead.last_recorded_at)).scalar()
    now = app_now()
    stamps = [t.replace(tzinfo=UTC) if t.tzinfo is None else t for t in (last_row, head) if t]
    if not stamps:
        return f"no audit record yet; clocks read {format_time(database)} (database)"
    last = max(stamps)
    late = [name for name, clock in (("database", database), ("app server", now)) if clock < last]
    if late:
        raise Failed(f"the {' and the '.join(late)} clock{'s read' if len(late) > 1 else ' reads'} "
                     f"a time before the last audit record ({format_time(last)}): the clock went back")
    if min(database, now) - last > QUIET_LIMIT:
        raise Warned(f"the clocks read more than {QUIET_LIMIT.days} days after the last audit "
                     f"record ({format_time(last)}): check that the clock is not far ahead")
    return f"the clocks read after the last audit record ({format_time(last)}), " \
           f"{(database - last).total_seconds() / 86400:.1f} days later"


# --- configuration ---


def _config(name: str):
    return current_app.config.get(name)


def _production(_target: Target) -> str:
    env_name = _config("ENV_NAME")
    if env_name != "production":
        raise Failed(f"the configuration is {env_name!r}, not 'production': set ECRF_CONFIG=production")
    return "ECRF_CONFIG is production"


def _secret_key(_target: Target) -> str:
    key = _config("SECRET_KEY")
    if not key:
        raise Failed("SECRET_KEY is not set")
    key = key.decode("latin-1") if isinstance(key, bytes) else str(key)
    if key in known_default_secrets():
        raise Failed("SECRET_KEY is a known default (shipped in the code or a placeholder)")
    if len(key) < SECRET_MIN_LENGTH:
        raise Failed(f"SECRET_KEY has {len(key)} characters; at least {SECRET_MIN_LENGTH} needed")
    if len(set(key)) < SECRET_MIN_DISTINCT:
        raise Failed(f"SECRET_KEY uses only {len(set(key))} distinct characters; it looks made by "
                     "hand, not drawn at random")
    return f"SECRET_KEY set explicitly, {len(key)} characters, not a known default"


def _flag(name: str, wanted: bool, why: str) -> Callable[[Target], str]:
    def check(_target: Target) -> str:
        value = _config(name)
        if bool(value) is not wanted:
            raise Failed(f"{name} is {value!r}: {why}")
        return f"{name} is {value!r}"
    return check


def _samesite(_target: Target) -> str:
    value = _config("SESSION_COOKIE_SAMESITE")
    if value not in ("Strict", "Lax"):
        raise Failed(f"SESSION_COOKIE_SAMESITE is {value!r}: Strict or Lax expected")
    return f"SESSION_COOKIE_SAMESITE is {value!r}"


def _not_debug(_target: Target) -> str:
    on = [name for name in ("DEBUG", "TESTING") if _config(name)]
    if on:
        raise Failed(f"{' and '.join(on)} on: never in production")
    return "DEBUG and TESTING are off"


def _rate_limits(_target: Target) -> str:
    if not _config("RATELIMIT_ENABLED"):
        raise Failed("RATELIMIT_ENABLED is off: password checks are not rate-limited")
    uri = str(_config("RATELIMIT_STORAGE_URI") or "")
    scheme = uri.split("://", 1)[0]
    if not uri or scheme == "memory":
        raise Failed(f"RATELIMIT_STORAGE_URI is {uri!r}: the counts must live in a store every "
                     "app server shares (redis://...)")
    return f"rate limits counted in a shared {scheme}:// store"


def _url_scheme(_target: Target) -> str:
    value = _config("PREFERRED_URL_SCHEME")
    if value != "https":
        raise Failed(f"PREFERRED_URL_SCHEME is {value!r}: https expected")
    return "PREFERRED_URL_SCHEME is 'https'"


def _hsts(_target: Target) -> str:
    seconds = _config("HSTS_SECONDS") or 0
    if seconds <= 0:
        raise Failed("HSTS_SECONDS is 0: no Strict-Transport-Security header is sent")
    return f"Strict-Transport-Security max-age={seconds}"


def _proxy(_target: Target) -> str:
    count = _config("PROXY_COUNT") or 0
    if count <= 0:
        raise Warned("PROXY_COUNT is 0: a TLS proxy is expected in front; with one, set "
                     "ECRF_PROXY_COUNT or every client shares the proxy's address")
    return f"PROXY_COUNT is {count}: the X-Forwarded-* headers of {count} proxy hop(s) are trusted"


#: (id, section, title, function); the function returns the detail of a pass or raises
CHECKS: tuple[tuple[str, str, str, Callable[[Target], str]], ...] = (
    ("schema.revision", "schema", "Schema at the latest migration", _schema_revision),
    ("audit.triggers", "audit", "Append-only triggers present and enabled", _trigger_state),
    ("audit.refusal", "audit", "The triggers refuse an UPDATE and a DELETE of an audit row",
     _trigger_refusal),
    ("audit.chain", "audit", "The audit chain verifies", _audit_chain),
    ("role.attributes", "role", "Not a superuser, cannot create roles or databases",
     _role_attributes),
    ("role.ownership", "role", "Owns no table", _role_ownership),
    ("role.create", "role", "No CREATE on the schema or the database", _role_create),
    ("role.privileges", "role", "Rights on the tables exactly as in grants.sql",
     _role_privileges),
    ("role.sequences", "role", "Rights on the sequences exactly as in grants.sql",
     _role_sequences),
    ("time.database_zone", "time", "The database session's time zone is UTC", _database_zone),
    ("time.server_zone", "time", "The app server's time zone", _server_zone),
    ("time.skew", "time", "The database and app server clocks agree", _clock_skew),
    ("time.sane", "time", "The clock is after the last audit record and not far ahead",
     _clock_sane),
    ("config.production", "secrets", "Production configuration", _production),
    ("config.secret_key", "secrets", "Secret key explicit, long and not a known default",
     _secret_key),
    ("config.cookie_httponly", "secrets", "Session cookie hidden from scripts (HttpOnly)",
     _flag("SESSION_COOKIE_HTTPONLY", True, "scripts could read the session cookie")),
    ("config.cookie_samesite", "secrets", "Session cookie SameSite Strict or Lax", _samesite),
    ("config.csrf", "secrets", "CSRF protection on",
     _flag("WTF_CSRF_ENABLED", True, "forms are not protected against cross-site requests")),
    ("config.debug", "secrets", "Debug and testing modes off", _not_debug),
    ("config.rate_limits", "secrets", "Rate limits counted in a shared store", _rate_limits),
    ("tls.scheme", "tls", "Links are made with https", _url_scheme),
    ("tls.hsts", "tls", "Strict-Transport-Security sent", _hsts),
    ("tls.cookie_secure", "tls", "Session cookie sent over HTTPS only (Secure)",
     _flag("SESSION_COOKIE_SECURE", True, "the session cookie would also travel over plain HTTP")),
    ("tls.proxy", "tls", "The TLS proxy in front is trusted", _proxy),
)


def _run_one(check_id: str, section: str, title: str, function, target: Target) -> Check:
    try:
        status, detail = PASS, function(target)
    except Failed as e:
        status, detail = FAIL, str(e)
    except Warned as e:
        status, detail = WARNING, str(e)
    except NotApplicable as e:
        status, detail = NOT_APPLICABLE, str(e)
    except Exception as e:  # noqa: BLE001 (a check that cannot run is a failed check)
        status, detail = FAIL, "could not be checked: " + _error_line(e)
    return Check(check_id, section, title, status, detail)


@contextmanager
def _target() -> Iterator[Target]:
    from config import normalise_database_url
    from ecrf.database import configure_engine

    engine = db.engine
    owner_url = current_app.config.get("MIGRATION_DATABASE_URL")
    owner = None
    if owner_url and engine.dialect.name == "postgresql":
        url = sa.make_url(normalise_database_url(owner_url))
        if url != engine.url:
            owner = sa.create_engine(url, poolclass=sa.pool.NullPool)
            configure_engine(owner)
    try:
        yield Target(engine, owner)
    finally:
        if owner is not None:
            owner.dispose()


def run_checks() -> list[Check]:
    """Every check, in order, on the current app's configuration and database."""
    db.session.remove()  # SQLite: no transaction of this process holds the write lock meanwhile
    with _target() as target:
        checks = []
        for check_id, section, title, function in CHECKS:
            if section == "role" and target.dialect != "postgresql":
                if not any(c.section == "role" for c in checks):
                    checks.append(Check("role", section, "Database role", NOT_APPLICABLE,
                                        "not applicable (no database roles)"))
                continue
            checks.append(_run_one(check_id, section, title, function, target))
            db.session.remove()
    return checks


# --- the report --------------------------------------------------------------------------------


def counts(checks: list[Check]) -> dict[str, int]:
    return {status: sum(1 for c in checks if c.status == status) for status in STATUS_LABELS}


def outcome(checks: list[Check]) -> str:
    return FAIL if any(c.status == FAIL for c in checks) else PASS


def summary_line(checks: list[Check]) -> str:
    n = counts(checks)
    failed = [c.id for c in checks if c.status == FAIL]
    return (f"{outcome(checks)}: {n[PASS]} pass, {n[WARNING]} warning, {n[FAIL]} fail, "
            f"{n[NOT_APPLICABLE]} not applicable" + (f"; failed: {', '.join(failed)}" if failed else ""))


def software_commit() -> str:
    """``git rev-parse HEAD`` in a source checkout, else ``ECRF_COMMIT`` (set by the deployment)."""
    checkout = Path(__file__).resolve().parent.parent.parent
    if (checkout / ".git").exists():
        try:
            done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout,  # noqa: S603, S607
                                  capture_output=True, text=True, timeout=10, check=False)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return os.environ.get("ECRF_COMMIT") or "unknown"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _database_facts() -> dict:
    url = db.engine.url
    facts = {"engine": url.get_backend_name(),
             "url": url.set(drivername=url.get_backend_name(), password=None).render_as_string()}
    try:
        with db.engine.connect() as conn:
            if url.get_backend_name() == "postgresql":
                facts["server_version"] = conn.exec_driver_sql("SHOW server_version").scalar_one()
                facts["role"] = conn.exec_driver_sql("SELECT current_user").scalar_one()
            else:
                facts["server_version"] = conn.exec_driver_sql("SELECT sqlite_version()").scalar_one()
    except sa.exc.SQLAlchemyError as e:
        facts["error"] = _error_line(e)
    return facts


def _stamp(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def _report_name(output: Path, started: datetime) -> str:
    name, n = f"install-check-{_stamp(started)}", 1
    while (output / f"{name}.json").exists() or (output / f"{name}.pdf").exists():
        n += 1
        name = f"install-check-{_stamp(started)}-{n}"
    return name


def record(actor, operator: str | None, name: str, checks: list[Check], commit: str) -> int:
    """The run in the audit trail: by the system account or the named operator; its seq."""
    from ecrf import __version__
    from ecrf.audit.reasons import Reason
    from ecrf.audit.unit_of_work import unit_of_work

    who = f"{_os_user()}@{socket.gethostname()}"
    reason = Reason("administrative", f"installation check by {who}") if operator \
        else Reason.system(f"installation check by {who}")
    recorded: list[int] = []
    with unit_of_work(actor, reason) as uow:
        uow.record("validate.install", "validation", name,
                   new=f"{summary_line(checks)} (version {__version__}, commit {commit}, "
                       f"report {name})")
        uow.after_append.append(lambda _session, seqs: recorded.extend(seqs))
    return recorded[0]


def _refuse_urls(url: str, *args, **kwargs):
    raise ValueError(f"the installation report fetches no resource ({url[:80]})")


def render_pdf(report: dict) -> bytes:
    import weasyprint  # heavy: imported when the report is written

    from ecrf.study import settings

    sections = []
    for key, title in SECTIONS.items():
        rows = [c for c in report["checks"] if c["section"] == key]
        if rows:
            sections.append((title, rows))
    html = render_template(TEMPLATE, report=report, sections=sections, study=settings.STUDY["name"],
                           status_labels=STATUS_LABELS)
    stylesheet = weasyprint.CSS(filename=str(STYLESHEET), url_fetcher=_refuse_urls)
    return weasyprint.HTML(string=html, url_fetcher=_refuse_urls).write_pdf(stylesheets=[stylesheet])


def _write(path: Path, content: bytes) -> None:
    part = path.with_name(f".{path.name}.part")
    part.write_bytes(content)
    os.replace(part, path)


def _operator_actor(username: str):
    """A named operator: an active account holding ``users.manage`` (the administrator)."""
    from ecrf.access.grants import Access
    from ecrf.auth.services import get_user

    user = get_user(username)
    if user is None or user.is_system or not user.is_active:
        raise click.ClickException(f"No active user {username!r}.")
    access = Access.for_user(user, "users.manage")
    if not access:
        raise click.ClickException(f"{username} does not hold the permission users.manage.")
    return access.actor()


@click.command("install")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="The folder the dated report (JSON and PDF) is written to.")
@click.option("--as", "as_user", metavar="USERNAME", default=None,
              help="The operator who runs the check (an administrator); default: the system account.")
@with_appcontext
def install_command(output: Path, as_user: str | None):
    """Check this installation (schema, append-only guards, database role, audit chain, clocks,
    secrets, cookies, TLS) without changing clinical data; write a dated report and record the
    run in the audit trail. Exits non-zero when a check failed."""
    from ecrf import __version__
    from ecrf.audit.chain import format_time
    from ecrf.auth.services import system_actor

    output.mkdir(parents=True, exist_ok=True)
    if not os.access(output, os.W_OK):
        raise click.ClickException(f"Cannot write to {output}.")
    try:
        actor = _operator_actor(as_user) if as_user else system_actor()
    except (sa.exc.SQLAlchemyError, RuntimeError) as e:
        raise click.ClickException(f"The account to record the check under cannot be read: "
                                   f"{_error_line(e)}") from None
    finally:
        db.session.remove()
    started = app_now()
    checks = run_checks()
    finished = app_now()
    commit = software_commit()
    name = _report_name(output, started)
    report = {
        "report": "install-check",
        "format_version": REPORT_FORMAT,
        "name": name,
        "started_at": format_time(started),
        "finished_at": format_time(finished),
        "software": {"name": "ecrf", "version": __version__, "commit": commit},
        "machine": {"hostname": socket.gethostname(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "os_user": _os_user()},
        "configuration": current_app.config.get("ENV_NAME"),
        "database": _database_facts(),
        "operator": actor.username,
        "result": outcome(checks),
        "counts": counts(checks),
        "checks": [asdict(c) for c in checks],
    }
    try:
        report["recorded_as_seq"] = record(actor, as_user, name, checks, commit)
    except Exception as e:  # noqa: BLE001 (the report is written even when the record fails)
        report["recorded_as_seq"] = None
        report["record_error"] = _error_line(e)
    finally:
        db.session.remove()
    json_path, pdf_path = output / f"{name}.json", output / f"{name}.pdf"
    _write(json_path, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    _write(pdf_path, render_pdf(report))

    for c in checks:
        click.echo(f"{c.status.upper():15} {c.id:24} {c.detail}")
    click.echo(f"Result: {summary_line(checks)}")
    click.echo(f"Report: {json_path}")
    click.echo(f"Report: {pdf_path}")
    if report["recorded_as_seq"] is not None:
        click.echo(f"Recorded in the audit trail as seq {report['recorded_as_seq']} "
                   f"({ACTION}, by {actor.username}).")
    else:
        click.echo(f"NOT recorded in the audit trail: {report['record_error']}", err=True)
    if outcome(checks) == FAIL or report["recorded_as_seq"] is None:
        sys.exit(1)
