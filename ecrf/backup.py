"""Backups that can be proven restorable (EU Annex 11 §7.2, 21 CFR 11.10(c), ICH E6(R3) 4.2.3).

``ecrf backup -o DIR`` writes a copy of the whole database and, next to it, a manifest stating
what the copy holds: its SHA-256, the schema revision, the number of rows of every table and the
head of the audit chain. The manifest is read from the very state that was copied (PostgreSQL:
the same exported snapshot as ``pg_dump``; SQLite: the copy itself), so a restore can be held
against it row count for row count. ``ecrf backup restore`` refuses any database that is not
empty, and ``ecrf backup check`` verifies the chain of a restored database and compares it with
the manifest. The backup itself is recorded in the audit trail with the file's SHA-256.
"""

from __future__ import annotations

import getpass
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import click
import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Session

from config import normalise_database_url
from ecrf.audit import chain
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.database import utcnow
from ecrf.extensions import db

MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
#: where Debian and Ubuntu install each PostgreSQL version's client programs
POSTGRESQL_BIN_DIRS = "/usr/lib/postgresql/*/bin"


class BackupError(RuntimeError):
    """A backup, restore or check that cannot be done or does not hold; the message says why."""


# --- what a database holds ---------------------------------------------------------------------


def read_state(conn: sa.Connection) -> dict:
    """Schema revision, audit chain head and the row count of every table, as seen by ``conn``."""
    tables = sorted(sa.inspect(conn).get_table_names())
    counts = {name: conn.execute(sa.select(sa.func.count()).select_from(sa.table(name)))
              .scalar_one() for name in tables}
    revision = (conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
                if "alembic_version" in counts else None)
    head = (conn.execute(sa.text("SELECT last_seq, last_hash FROM audit_chain_head WHERE id = 1"))
            .one_or_none() if "audit_chain_head" in counts else None)
    return {
        "alembic_revision": revision,
        "audit": {"rows": counts.get("audit_trail"),
                  "last_seq": int(head[0]) if head else None,
                  "last_hash": head[1] if head else None},
        "tables": counts,
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- PostgreSQL client programs ------------------------------------------------------------------


def _major(version_num: int) -> tuple[int, int]:
    """A major version from ``server_version_num``: (15, 0) for 150020, (9, 6) for 90624."""
    return (version_num // 10000, 0) if version_num >= 100000 else \
        (version_num // 10000, version_num // 100 % 100)


def _show(major: tuple[int, int]) -> str:
    return f"{major[0]}.{major[1]}" if major[0] < 10 else str(major[0])


def tool_version(path: str) -> tuple[int, int]:
    """The major version a PostgreSQL client program reports (``pg_dump (PostgreSQL) 15.20``)."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True,  # noqa: S603
                         check=False).stdout
    found = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if found is None:
        raise BackupError(f"{path} --version did not state a PostgreSQL version: {out.strip()!r}")
    first, second = int(found[1]), int(found[2] or 0)
    return (first, second) if first < 10 else (first, 0)


def find_tool(name: str, at_least: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """The newest ``name`` on PATH or in /usr/lib/postgresql/*/bin, refused if older than
    ``at_least``: an older pg_dump cannot read a newer server's catalog correctly."""
    candidates = [p for p in [shutil.which(name), *sorted(glob.glob(f"{POSTGRESQL_BIN_DIRS}/{name}"))]
                  if p and os.access(p, os.X_OK)]
    if not candidates:
        raise BackupError(f"{name} was not found on PATH or in {POSTGRESQL_BIN_DIRS}: install the "
                          "PostgreSQL client programs.")
    found = sorted(((tool_version(p), p) for p in dict.fromkeys(candidates)), reverse=True)
    version, path = found[0]
    if version < at_least:
        seen = ", ".join(f"{p} ({_show(v)})" for v, p in found)
        raise BackupError(f"{name} {_show(version)} is older than PostgreSQL {_show(at_least)}, "
                          f"which it must read or write (found: {seen}). Install the PostgreSQL "
                          f"{_show(at_least)} client programs (e.g. postgresql-client-"
                          f"{_show(at_least)}).")
    return path, version


def _libpq(url: sa.URL) -> tuple[str, dict[str, str]]:
    """A connection string for the PostgreSQL programs, and the environment holding its password
    (never on the command line, where other accounts of the host can read it)."""
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return url.set(drivername="postgresql", password=None).render_as_string(), env


def _shown(url: sa.URL) -> str:
    """A database URL as an operator writes it, without its password."""
    return url.set(drivername=url.get_backend_name()).render_as_string()


def _server_major(conn: sa.Connection) -> tuple[int, int]:
    return _major(int(conn.execute(sa.text("SHOW server_version_num")).scalar_one()))


# --- writing a backup ----------------------------------------------------------------------------


@dataclass
class Backup:
    path: Path
    manifest_path: Path
    manifest: dict


def _engine(url: str | sa.URL) -> sa.Engine:
    from ecrf.database import configure_engine

    engine = sa.create_engine(normalise_database_url(url) if isinstance(url, str) else url,
                              poolclass=sa.pool.NullPool)
    configure_engine(engine)
    return engine


def _private_file(path: Path) -> int:
    """Create ``path`` for writing, readable by its owner only (it holds the whole study)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _final_name(folder: Path, stem: str, suffix: str) -> Path:
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists() or Path(f"{path}{MANIFEST_SUFFIX}").exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def _pg_dump(tool: str, url: sa.URL, out_fd: int, snapshot: str | None) -> None:
    """``pg_dump -Fc`` of the database into ``out_fd``, inside ``snapshot`` when given."""
    target, env = _libpq(url)
    command = [tool, "--format=custom", "--no-password", f"--dbname={target}"]
    if snapshot:
        command.append(f"--snapshot={snapshot}")
    done = subprocess.run(command, stdout=out_fd, stderr=subprocess.PIPE, env=env,  # noqa: S603
                          check=False)
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed: {done.stderr.decode(errors='replace').strip()}")


def _sqlite_copy(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy of the pages even while the app writes (a writer
    that commits during the copy makes it start again)."""
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def create_backup(output: Path, *, echo=click.echo) -> Backup:
    """Back up the app's database into ``output`` (a folder), with its manifest; record it."""
    from ecrf.auth.services import system_actor

    url = db.engine.url
    owner = current_app.config.get("MIGRATION_DATABASE_URL")
    output.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = utcnow()
    db.session.remove()  # nothing of this process holds a lock on the source meanwhile
    if url.get_backend_name() == "postgresql":
        # the owner role reads every table and sequence; the application role may not
        source_url = sa.make_url(normalise_database_url(owner)) if owner else url
        final = _final_name(output, f"{url.database}-{stamp:%Y%m%dT%H%M%SZ}", ".dump")
        state, described = _backup_postgresql(source_url, final)
    elif url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        final = _final_name(output, f"{Path(url.database).stem}-{stamp:%Y%m%dT%H%M%SZ}", ".sqlite")
        state, described = _backup_sqlite(Path(url.database), final)
    else:
        raise BackupError(f"No backup for the database {_shown(url)}: PostgreSQL or a "
                          "SQLite file only.")
    size, digest = final.stat().st_size, file_sha256(final)
    audit = state["audit"]
    recorded: list[int] = []
    with unit_of_work(system_actor(), Reason.system(f"backup by {_who()}")) as uow:
        uow.record("backup.create", "backup", final.name,
                   new=f"{final.name} {size} bytes sha256:{digest} "
                       f"head {audit['last_seq']}:{audit['last_hash']}")
        uow.after_append.append(lambda _session, seqs: recorded.extend(seqs))
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "file": final.name,
        "size": size,
        "sha256": digest,
        "created_at": chain.format_time(stamp),
        "recorded_as_seq": recorded[0] if recorded else None,
        **described,
        **state,
    }
    manifest_path = Path(f"{final}{MANIFEST_SUFFIX}")
    _write_json(manifest_path, manifest)
    for line in summary(manifest):
        echo(line)
    echo(f"Backup: {final}")
    echo(f"Manifest: {manifest_path}")
    return Backup(final, manifest_path, manifest)


def _write_json(path: Path, content: dict) -> None:
    part = path.with_name(f".{path.name}.part")
    fd = _private_file(part)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)
    _sync(path.parent)


@contextmanager
def _partial(final: Path) -> Iterator[Path]:
    """A private temporary file beside ``final``, renamed to it only once complete and synced:
    a failed or interrupted backup leaves nothing that looks like a backup."""
    part = final.with_name(f".{final.name}.part")
    os.close(_private_file(part))
    try:
        yield part
        _sync(part)
        os.replace(part, final)
        _sync(final.parent)
    finally:
        with suppress(FileNotFoundError):
            part.unlink()


def _backup_postgresql(url: sa.URL, final: Path) -> tuple[dict, dict]:
    engine = _engine(url)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            conn.execute(sa.text("SET TRANSACTION READ ONLY"))
            server = _server_major(conn)
            tool, version = find_tool("pg_dump", server)
            # one snapshot for the manifest and the dump: what the one says, the other holds
            snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
            state = read_state(conn)
            server_version = conn.execute(sa.text("SHOW server_version")).scalar_one()
            with _partial(final) as part:
                fd = os.open(part, os.O_WRONLY)
                try:
                    _pg_dump(tool, url, fd, snapshot)
                finally:
                    os.close(fd)
            conn.rollback()
    finally:
        engine.dispose()
    return state, {"engine": "postgresql", "database": url.database,
                   "server_version": server_version, "format": "pg_dump custom archive (-Fc)",
                   "tool": f"pg_dump {_show(version)}", "tool_version": list(version)}


def _backup_sqlite(source: Path, final: Path) -> tuple[dict, dict]:
    with _partial(final) as part:
        _sqlite_copy(source, part)
        engine = _engine(f"sqlite:///{part}")
        try:
            with engine.connect() as conn:  # the manifest is read from the copy itself
                state = read_state(conn)
        finally:
            engine.dispose()
    return state, {"engine": "sqlite", "database": source.name, "server_version": sqlite3.sqlite_version,
                   "format": "SQLite database file (online backup API)", "tool": "sqlite3"}


def summary(manifest: dict) -> list[str]:
    audit = manifest["audit"]
    tables = manifest["tables"]
    return [
        f"Engine: {manifest['engine']} {manifest.get('server_version', '')}".rstrip(),
        f"Schema revision: {manifest['alembic_revision']}",
        f"Audit rows: {audit['rows']}",
        f"Head: {audit['last_seq']}:{audit['last_hash']}",
        f"Tables: {len(tables)}, rows: {sum(tables.values())}",
        f"SHA-256: {manifest['sha256']} ({manifest['size']} bytes)",
    ]


# --- checking and restoring ---------------------------------------------------------------------


def load_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BackupError(f"Cannot read the manifest {path}: {e}") from None
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise BackupError(f"{path} is not a backup manifest of version {MANIFEST_VERSION}.")
    return manifest


def check_file(manifest_path: Path, manifest: dict, backup_file: Path | None = None) -> list[str]:
    """What is wrong with the backup file, by its size and SHA-256 in the manifest."""
    path = backup_file or manifest_path.with_name(manifest["file"])
    if not path.is_file():
        return [f"the backup file {path} is missing"]
    problems = []
    if path.stat().st_size != manifest["size"]:
        problems.append(f"the backup file has {path.stat().st_size} bytes, the manifest says "
                        f"{manifest['size']}")
    if file_sha256(path) != manifest["sha256"]:
        problems.append("the backup file's SHA-256 differs from the manifest's: it was changed or "
                        "damaged after it was written")
    return problems


def check_database(url: str, manifest: dict, *, echo=click.echo) -> list[str]:
    """Verify the audit chain of the database at ``url`` and compare it with the manifest."""
    target = sa.make_url(normalise_database_url(url))
    if target.get_backend_name() == "sqlite" and not Path(target.database or "").is_file():
        return [f"no SQLite database file {target.database}"]
    engine = _engine(target)
    try:
        with engine.connect() as conn:
            state = read_state(conn)
        if "audit_trail" not in state["tables"]:
            return ["the database holds no audit trail"]
        with Session(engine) as session:
            result = chain.verify_db(session)
    finally:
        engine.dispose()
    echo(f"Rows checked: {result.rows_checked}")
    echo(f"Head: {result.head_seq}:{result.head_hash}")
    problems = [f"audit chain FAILED at seq {seq}: {why}" for seq, why in result.problems[:1]]
    expected = manifest["audit"]
    if (result.head_seq, result.head_hash) != (expected["last_seq"], expected["last_hash"]):
        problems.append(f"the chain ends at {result.head_seq}:{result.head_hash}, the manifest "
                        f"says {expected['last_seq']}:{expected['last_hash']}")
    if state["audit"] != expected:
        problems.append(f"audit rows and head {state['audit']} differ from the manifest's "
                        f"{expected}")
    if state["alembic_revision"] != manifest["alembic_revision"]:
        problems.append(f"schema revision {state['alembic_revision']} differs from the manifest's "
                        f"{manifest['alembic_revision']}")
    found, stated = state["tables"], manifest["tables"]
    for name in sorted(set(found) | set(stated)):
        if found.get(name) != stated.get(name):
            problems.append(f"table {name}: {found.get(name, 'missing')} rows, the manifest says "
                            f"{stated.get(name, 'no such table')}")
    return problems


#: schemas named pg_* (catalog, toast, temporary) and information_schema belong to the system
_POSTGRESQL_OBJECTS = """
SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname !~ '^(pg_|information_schema$)')
     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname !~ '^(pg_|information_schema$)')
"""


def _objects_in(conn: sa.Connection) -> int:
    """Tables, views, sequences and functions a database already holds outside the system."""
    if conn.dialect.name == "postgresql":
        return conn.execute(sa.text(_POSTGRESQL_OBJECTS)).scalar_one()
    return conn.execute(sa.text("SELECT count(*) FROM sqlite_master")).scalar_one()


def restore(backup_file: Path, manifest_path: Path, into: str, *, no_owner: bool = False,
            echo=click.echo) -> list[str]:
    """Restore a checked backup into an empty database, then check it against the manifest."""
    manifest = load_manifest(manifest_path)
    problems = check_file(manifest_path, manifest, backup_file)
    if problems:
        raise BackupError("Refused: " + "; ".join(problems) + ".")
    target = sa.make_url(normalise_database_url(into))
    engine_name = "postgresql" if target.get_backend_name() == "postgresql" else \
        target.get_backend_name()
    if engine_name != manifest["engine"]:
        raise BackupError(f"Refused: a {manifest['engine']} backup cannot be restored into "
                          f"{engine_name}.")
    if engine_name == "postgresql":
        _restore_postgresql(backup_file, target, manifest, no_owner)
    else:
        _restore_sqlite(backup_file, target)
    echo(f"Restored {backup_file.name} into {_shown(target)}")
    return check_database(into, manifest, echo=echo)


def _refuse_unless_empty(url: sa.URL) -> None:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            found = _objects_in(conn)
    finally:
        engine.dispose()
    if found:
        raise BackupError(f"Refused: the database {_shown(url)} is not empty ({found} "
                          "objects). Restore only into a new, empty database, never over one in "
                          "use.")


def _restore_postgresql(backup_file: Path, target: sa.URL, manifest: dict, no_owner: bool) -> None:
    _refuse_unless_empty(target)
    # an archive is read by a pg_restore at least as new as the pg_dump that wrote it
    tool, _ = find_tool("pg_restore", tuple(manifest["tool_version"]))
    conninfo, env = _libpq(target)
    command = [tool, "--exit-on-error", "--single-transaction", "--no-password",
               f"--dbname={conninfo}"]
    if no_owner:
        command += ["--no-owner", "--no-privileges"]
    done = subprocess.run([*command, str(backup_file)], capture_output=True, env=env,  # noqa: S603
                          check=False)
    if done.returncode != 0:
        raise BackupError(f"pg_restore failed (nothing was restored): "
                          f"{done.stderr.decode(errors='replace').strip()}")
    engine = _engine(target)
    try:  # a restored database has no planner statistics yet
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))
    finally:
        engine.dispose()


def _restore_sqlite(backup_file: Path, target: sa.URL) -> None:
    if target.database in (None, "", ":memory:"):
        raise BackupError("Restore into a SQLite file: sqlite:///path/to/file.sqlite")
    path = Path(target.database)
    if path.exists() and path.stat().st_size:
        _refuse_unless_empty(target)
    for suffix in ("-journal", "-wal"):
        if Path(f"{path}{suffix}").exists():
            raise BackupError(f"Refused: {path}{suffix} exists; the database may be in use.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _partial(path) as part:
        _sqlite_copy(backup_file, part)


# --- the commands --------------------------------------------------------------------------------


def _fail_on(problems: list[str]) -> None:
    for problem in problems:
        click.echo(f"MISMATCH: {problem}", err=True)
    if problems:
        raise click.ClickException("The restored database does not match the backup's manifest.")
    click.echo("Restore check OK: the chain verifies, same head, same counts in every table.")


@click.group("backup", invoke_without_command=True,
             help="Back up the database with a manifest (-o DIR); check and restore backups.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The folder the backup and its manifest are written to.")
@click.pass_context
def backup_cli(ctx, output):
    if ctx.invoked_subcommand is not None:
        if output is not None:
            raise click.UsageError("-o/--output is for the backup itself, not for "
                                   f"{ctx.invoked_subcommand}.")
        return
    if output is None:
        raise click.UsageError("Say where to write the backup: ecrf backup -o DIR.")
    try:
        create_backup(output)
    except (BackupError, sa.exc.OperationalError) as e:
        raise click.ClickException(str(e)) from None


@backup_cli.command("check")
@click.argument("manifest_path", metavar="MANIFEST",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--database", "database_url", default=None, metavar="URL",
              help="Also verify this (restored) database and compare it with the manifest.")
def backup_check(manifest_path, database_url):
    """Check a backup file against its manifest, and a restored database against both."""
    try:
        manifest = load_manifest(manifest_path)
        for line in summary(manifest):
            click.echo(line)
        problems = check_file(manifest_path, manifest)
        if problems:
            _fail_on(problems)
        click.echo("Backup file OK: size and SHA-256 as in the manifest.")
        if database_url:
            _fail_on(check_database(database_url, manifest))
    except (BackupError, sa.exc.OperationalError) as e:
        raise click.ClickException(str(e)) from None


@backup_cli.command("restore")
@click.argument("backup_file", metavar="FILE",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--into", "into", required=True, metavar="URL",
              help="A new, empty database: postgresql://... or sqlite:///path.")
@click.option("--manifest", "manifest_path", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=f"The backup's manifest (default: FILE{MANIFEST_SUFFIX}).")
@click.option("--no-owner", is_flag=True,
              help="PostgreSQL: the connecting role owns everything restored; no grants restored.")
def backup_restore(backup_file, into, manifest_path, no_owner):
    """Restore a backup into an empty database, verify its chain, compare with the manifest."""
    manifest_path = manifest_path or Path(f"{backup_file}{MANIFEST_SUFFIX}")
    if not manifest_path.is_file():
        raise click.ClickException(f"No manifest {manifest_path}: give --manifest.")
    try:
        problems = restore(backup_file, manifest_path, into, no_owner=no_owner)
    except (BackupError, sa.exc.OperationalError) as e:
        raise click.ClickException(str(e)) from None
    _fail_on(problems)
