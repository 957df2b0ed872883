"""A backup is only as good as its restore (EU Annex 11 §7.2, ICH E6(R3) 4.2.3).

A committed study is backed up with ``ecrf backup`` (pg_dump on PostgreSQL, SQLite's online
backup API on SQLite), restored into a new, empty database, and the restored database must verify
with ``ecrf audit verify``, end at the same head and hold the same rows in every table. A backup
altered after it was written, a restored database that lost rows, a restore over a database in
use, and a manifest read outside the dump's snapshot are each caught; each mechanism is shown to
be what catches it by disabling it.
"""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from ecrf import backup, create_app
from ecrf.audit import chain
from ecrf.audit.models import AuditRecord, AuditValue
from ecrf.audit.reasons import Reason
from ecrf.audit.redaction import redact_value
from ecrf.auth.services import system_actor
from ecrf.extensions import db
from tests.conftest import TOY_STUDY
from tests.factories import Factories

pytestmark = pytest.mark.requirement("A11-7")


def _counts(engine: sa.Engine) -> dict[str, int]:
    """Rows of every table of the application, counted directly (not by the code under test)."""
    with engine.connect() as conn:
        return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in db.metadata.sorted_tables}


@pytest.fixture
def study(fresh_app):
    """A committed study: two sites, staff, included subjects with their D0 forms and SOFA, a
    screened subject, and a value masked by a recorded redaction."""
    make = Factories()
    make.user("dm", role="data_manager")
    make.included("01", seed=7)
    make.included("02", seed=3)
    make.subject("01")
    email = db.session.scalar(sa.select(AuditRecord.seq).where(AuditRecord.field == "email"))
    redact_value(system_actor(), email, "new", Reason("other", "private address"))
    db.session.remove()
    return fresh_app


@pytest.fixture
def new_database(databases):
    """The URL of a new, empty database on the engine under test (dropped with the run's)."""

    def _new() -> str:
        if not databases.is_postgres:
            return f"sqlite:///{databases.tmp / f'restored-{uuid.uuid4().hex[:8]}.sqlite'}"
        name = f"ecrf_t_{databases.tag}_r{uuid.uuid4().hex[:8]}"
        databases._create(name)
        return db.engine.url.set(database=name).render_as_string(hide_password=False)

    return _new


def _back_up(app, folder: Path) -> tuple[Path, dict]:
    done = app.test_cli_runner().invoke(args=["backup", "-o", str(folder)])
    assert done.exit_code == 0, done.output
    (manifest_path,) = folder.glob(f"*{backup.MANIFEST_SUFFIX}")
    path = manifest_path.with_name(manifest_path.name[:-len(backup.MANIFEST_SUFFIX)])
    return path, json.loads(manifest_path.read_text())


def _cli(app, *args: str):
    return app.test_cli_runner().invoke(args=list(args))


@pytest.mark.requirement("P11-10c", "E6-3.16.1(t,v,w)", "E6-4.3.3")
def test_a_backup_restored_into_a_new_database_verifies_with_the_same_head_and_counts(
        study, new_database, tmp_path):
    counts = _counts(db.engine)
    head = chain.stored_head(db.session)
    db.session.remove()
    path, manifest = _back_up(study, tmp_path / "backups")
    assert (manifest["audit"]["last_seq"], manifest["audit"]["last_hash"]) == head
    assert manifest["audit"]["rows"] == counts["audit_trail"] == head[0]
    assert {t: manifest["tables"][t] for t in counts} == counts

    url = new_database()
    restored = _cli(study, "backup", "restore", str(path), "--into", url)
    assert restored.exit_code == 0, restored.output
    assert "Restore check OK" in restored.output

    # what an operator runs on the restored database: the application's own verify
    again = create_app("test", DATABASE_URL=url, **TOY_STUDY)
    with again.app_context():
        verify = again.test_cli_runner().invoke(args=["audit", "verify"])
        assert verify.exit_code == 0, verify.output
        assert f"Head: {head[0]}:{head[1]}" in verify.output
        assert "Redacted values (masked by a recorded redaction): 1" in verify.output
        db.session.remove()
        assert _counts(db.engine) == counts
        db.engine.dispose()


def test_the_backup_is_private_complete_and_recorded_in_the_trail(study, tmp_path):
    folder = tmp_path / "backups"
    path, manifest = _back_up(study, folder)
    assert sorted(p.name for p in folder.iterdir()) == [path.name, path.name + ".manifest.json"]
    for written in folder.iterdir():
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert manifest["sha256"] == backup.file_sha256(path)
    assert manifest["engine"] == db.engine.dialect.name
    assert path.suffix == (".dump" if manifest["engine"] == "postgresql" else ".sqlite")
    assert manifest["alembic_revision"] == db.session.execute(
        sa.text("SELECT version_num FROM alembic_version")).scalar_one()

    record = db.session.scalars(sa.select(AuditRecord).where(
        AuditRecord.action == "backup.create")).one()
    kept = db.session.get(AuditValue, record.seq)
    assert record.seq == manifest["recorded_as_seq"] == manifest["audit"]["last_seq"] + 1
    assert record.username == "system" and record.reason_code == "system"
    assert record.reason_text.startswith("backup by ")
    assert f"sha256:{manifest['sha256']}" in kept.new_value
    assert f"head {manifest['audit']['last_seq']}:{manifest['audit']['last_hash']}" in kept.new_value


def _alter_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.requirement("P11-10c")
def test_a_backup_altered_after_it_was_written_is_caught_and_not_restored(
        study, new_database, tmp_path):
    path, manifest = _back_up(study, tmp_path)
    manifest_path = Path(f"{path}{backup.MANIFEST_SUFFIX}")
    assert _cli(study, "backup", "check", str(manifest_path)).exit_code == 0
    _alter_one_byte(path)

    checked = _cli(study, "backup", "check", str(manifest_path))
    assert checked.exit_code != 0
    assert "SHA-256 differs from the manifest's" in checked.output

    url = new_database()
    refused = _cli(study, "backup", "restore", str(path), "--into", url)
    assert refused.exit_code != 0 and "Refused" in refused.output
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            assert backup._objects_in(conn) == 0  # nothing was restored
    finally:
        engine.dispose()


def test_control_without_the_digest_comparison_the_altered_backup_passes(
        study, tmp_path, monkeypatch):
    path, manifest = _back_up(study, tmp_path)
    _alter_one_byte(path)
    monkeypatch.setattr(backup, "file_sha256", lambda _path: manifest["sha256"])
    checked = _cli(study, "backup", "check", f"{path}{backup.MANIFEST_SUFFIX}")
    assert checked.exit_code == 0  # the same alteration goes unseen: the digest is what caught it


@pytest.mark.requirement("P11-10c", "E6-4.2.5")
def test_a_restored_database_that_lost_a_value_is_caught_though_its_chain_verifies(
        study, new_database, tmp_path):
    path, _ = _back_up(study, tmp_path)
    url = new_database()
    assert _cli(study, "backup", "restore", str(path), "--into", url).exit_code == 0
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:  # a clinical value the restore did not bring back
            conn.execute(sa.text("DELETE FROM item_value WHERE id = (SELECT max(id) FROM item_value)"))
    finally:
        engine.dispose()

    again = create_app("test", DATABASE_URL=url, **TOY_STUDY)
    with again.app_context():
        # control: the chain alone cannot see it (item values are not audit rows)
        assert again.test_cli_runner().invoke(args=["audit", "verify"]).exit_code == 0
        db.session.remove()
        db.engine.dispose()
    checked = _cli(study, "backup", "check", f"{path}{backup.MANIFEST_SUFFIX}", "--database", url)
    assert checked.exit_code != 0
    assert "table item_value:" in checked.output


def _restore_over_the_live_database(study, tmp_path):
    path, _ = _back_up(study, tmp_path)
    live = db.engine.url.render_as_string(hide_password=False)
    before = _counts(db.engine)
    db.session.remove()
    result = _cli(study, "backup", "restore", str(path), "--into", live)
    return result, before


def test_a_restore_is_refused_over_a_database_in_use(study, tmp_path):
    result, before = _restore_over_the_live_database(study, tmp_path)
    assert result.exit_code != 0
    assert "is not empty" in result.output and "never over one in use" in result.output
    assert _counts(db.engine) == before


def test_control_without_the_emptiness_check_a_restore_goes_at_the_live_database(
        study, tmp_path, monkeypatch):
    monkeypatch.setattr(backup, "_objects_in", lambda conn: 0)
    result, _ = _restore_over_the_live_database(study, tmp_path)
    # PostgreSQL: pg_restore is run against the live tables (and fails on them); SQLite: the
    # live file is replaced by the backup
    assert "is not empty" not in result.output


def test_the_manifest_states_what_the_dump_holds_while_the_app_writes(
        study, new_database, tmp_path, monkeypatch, engine_name):
    if engine_name != "postgresql":
        pytest.skip("pg_dump and its exported snapshot are PostgreSQL's")
    _, manifest, restored_url = _backup_with_a_write_during_the_dump(
        study, new_database, tmp_path, monkeypatch, keep_snapshot=True)
    checked = _cli(study, "backup", "check", manifest, "--database", restored_url)
    assert checked.exit_code == 0, checked.output


def test_control_a_dump_outside_the_manifests_snapshot_does_not_match_it(
        study, new_database, tmp_path, monkeypatch, engine_name):
    if engine_name != "postgresql":
        pytest.skip("pg_dump and its exported snapshot are PostgreSQL's")
    _, manifest, restored_url = _backup_with_a_write_during_the_dump(
        study, new_database, tmp_path, monkeypatch, keep_snapshot=False)
    checked = _cli(study, "backup", "check", manifest, "--database", restored_url)
    assert checked.exit_code != 0
    assert "table subject:" in checked.output


def _backup_with_a_write_during_the_dump(study, new_database, tmp_path, monkeypatch, *,
                                         keep_snapshot: bool):
    """A subject is enrolled and committed after the manifest is read, before pg_dump starts."""
    real = backup._pg_dump

    def dump_while_enrolling(tool, url, out_fd, snapshot):
        with study.app_context():
            Factories().subject("01")
            db.session.remove()
        real(tool, url, out_fd, snapshot if keep_snapshot else None)

    monkeypatch.setattr(backup, "_pg_dump", dump_while_enrolling)
    path, manifest = _back_up(study, tmp_path)
    assert _counts(db.engine)["subject"] == manifest["tables"]["subject"] + 1
    url = new_database()
    restored = _cli(study, "backup", "restore", str(path), "--into", url)
    return restored, f"{path}{backup.MANIFEST_SUFFIX}", url


def _fake_tool(folder: Path, name: str, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
    path.chmod(0o755)
    return path


def test_a_pg_dump_older_than_the_server_is_refused_and_the_newest_is_chosen(
        tmp_path, monkeypatch):
    _fake_tool(tmp_path / "path", "pg_dump", "13.16 (Debian 13.16-0+deb11u1)")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setattr(backup, "POSTGRESQL_BIN_DIRS", str(tmp_path / "lib" / "*" / "bin"))
    with pytest.raises(backup.BackupError, match=r"pg_dump 13 is older than PostgreSQL 15"):
        backup.find_tool("pg_dump", (15, 0))

    newer = _fake_tool(tmp_path / "lib" / "16" / "bin", "pg_dump", "16.4")
    assert backup.find_tool("pg_dump", (15, 0)) == (str(newer), (16, 0))
    assert backup.find_tool("pg_dump", (9, 6))[1] == (16, 0)


def test_no_pg_dump_at_all_is_a_clear_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(backup, "POSTGRESQL_BIN_DIRS", str(tmp_path / "none" / "*"))
    with pytest.raises(backup.BackupError, match="pg_dump was not found"):
        backup.find_tool("pg_dump", (15, 0))


def test_server_versions_compare_by_major_version_old_and_new_numbering():
    assert backup._major(150020) == (15, 0)
    assert backup._major(90624) == (9, 6)
    assert backup._major(90624) < backup._major(100000) < backup._major(150020)
