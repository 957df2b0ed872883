"""The schema comes only from the migrations, and they agree with the models (EU Annex 11 §10)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade

from ecrf import MIGRATIONS_DIR
from ecrf.database import include_name
from ecrf.extensions import db as _db


@pytest.mark.requirement("A11-10")
def test_autogenerate_finds_no_difference_between_models_and_migrations(db):
    context = MigrationContext.configure(db.session.connection(),
                                         opts={"compare_type": True, "include_name": include_name})
    assert compare_metadata(context, _db.metadata) == []


@pytest.mark.requirement("A11-10")
def test_negative_control_a_model_change_without_migration_is_found(db):
    import sqlalchemy as sa

    table = sa.Table("not_migrated", _db.metadata, sa.Column("id", sa.Integer, primary_key=True))
    try:
        diff = compare_metadata(MigrationContext.configure(db.session.connection()), _db.metadata)
        assert any(d[0] == "add_table" and d[1].name == "not_migrated" for d in diff)
    finally:
        _db.metadata.remove(table)


@pytest.mark.requirement("A11-10")
def test_the_database_is_at_the_single_head(db):
    current = MigrationContext.configure(db.session.connection()).get_current_heads()
    heads = ScriptDirectory.from_config(_script_config()).get_heads()
    assert len(heads) == 1 and set(current) == set(heads)


def _script_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS_DIR)
    return cfg


@pytest.mark.requirement("P11-10c")
def test_migration_files_are_date_prefixed_and_never_drop_the_audit_trail():
    import pathlib

    versions = sorted(pathlib.Path(MIGRATIONS_DIR, "versions").glob("*.py"))
    assert versions
    for path in versions:
        assert path.name[:8].isdigit() and path.name[8] == "_", path.name
        text = path.read_text()
        assert "drop_table('audit_trail')" not in text and 'drop_table("audit_trail")' not in text
        assert "UPDATE AUDIT_TRAIL" not in text.upper() and "DELETE FROM AUDIT_TRAIL" not in text.upper()


def test_the_foundation_migration_refuses_to_downgrade(fresh_app):
    import importlib.util
    import pathlib

    path = next(pathlib.Path(MIGRATIONS_DIR, "versions").glob("*_foundation.py"))
    spec = importlib.util.spec_from_file_location("foundation_migration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(RuntimeError, match="cannot be downgraded: it holds the audit trail"):
        module.downgrade()
    with pytest.raises(SystemExit):  # flask db downgrade stops on it
        downgrade(revision="base")
    from ecrf.audit.ddl import GUARD_TRIGGERS, existing_guards

    with _db.engine.connect() as conn:  # the trail and its guards are still there
        assert existing_guards(conn) == GUARD_TRIGGERS[conn.dialect.name]
