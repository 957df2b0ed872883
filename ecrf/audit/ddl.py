"""Append-only guards in the database itself, per dialect, created by the migrations.

``audit_trail`` refuses UPDATE, DELETE (and TRUNCATE on PostgreSQL). ``audit_value`` refuses
DELETE and any UPDATE other than masking a value for a recorded redaction. SQLite batch migrations
that rebuild one of these tables drop its triggers: call ``create_guards`` again at their end (a
test checks that they exist and refuse at head).
"""

from __future__ import annotations

import sqlalchemy as sa

REFUSAL = "audit trail is append-only"

_SQLITE = [
    f"""CREATE TRIGGER IF NOT EXISTS audit_trail_no_update BEFORE UPDATE ON audit_trail
        BEGIN SELECT RAISE(ABORT, '{REFUSAL}: UPDATE refused'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_trail_no_delete BEFORE DELETE ON audit_trail
        BEGIN SELECT RAISE(ABORT, '{REFUSAL}: DELETE refused'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_value_no_delete BEFORE DELETE ON audit_value
        BEGIN SELECT RAISE(ABORT, '{REFUSAL}: DELETE refused'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_value_mask_only BEFORE UPDATE ON audit_value
        WHEN NOT (
            NEW.seq = OLD.seq AND NEW.redacted_seq IS NOT NULL
            AND ((NEW.old_value IS OLD.old_value AND NEW.old_salt IS OLD.old_salt)
                 OR (NEW.old_value IS NULL AND NEW.old_salt IS NULL))
            AND ((NEW.new_value IS OLD.new_value AND NEW.new_salt IS OLD.new_salt)
                 OR (NEW.new_value IS NULL AND NEW.new_salt IS NULL)))
        BEGIN SELECT RAISE(ABORT, '{REFUSAL}: only a recorded redaction may mask a value'); END""",
]

_POSTGRES = [
    f"""CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION '{REFUSAL}: % refused on %', TG_OP, TG_TABLE_NAME; END;
        $$ LANGUAGE plpgsql""",
    f"""CREATE OR REPLACE FUNCTION audit_value_mask_only() RETURNS trigger AS $$
        BEGIN
          IF NEW.seq = OLD.seq AND NEW.redacted_seq IS NOT NULL
             AND ((NEW.old_value IS NOT DISTINCT FROM OLD.old_value
                   AND NEW.old_salt IS NOT DISTINCT FROM OLD.old_salt)
                  OR (NEW.old_value IS NULL AND NEW.old_salt IS NULL))
             AND ((NEW.new_value IS NOT DISTINCT FROM OLD.new_value
                   AND NEW.new_salt IS NOT DISTINCT FROM OLD.new_salt)
                  OR (NEW.new_value IS NULL AND NEW.new_salt IS NULL)) THEN
            RETURN NEW;
          END IF;
          RAISE EXCEPTION '{REFUSAL}: only a recorded redaction may mask a value';
        END;
        $$ LANGUAGE plpgsql""",
    """DROP TRIGGER IF EXISTS audit_trail_no_change ON audit_trail""",
    """CREATE TRIGGER audit_trail_no_change BEFORE UPDATE OR DELETE ON audit_trail
        FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()""",
    """DROP TRIGGER IF EXISTS audit_trail_no_truncate ON audit_trail""",
    """CREATE TRIGGER audit_trail_no_truncate BEFORE TRUNCATE ON audit_trail
        FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()""",
    """DROP TRIGGER IF EXISTS audit_value_no_delete ON audit_value""",
    """CREATE TRIGGER audit_value_no_delete BEFORE DELETE ON audit_value
        FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()""",
    """DROP TRIGGER IF EXISTS audit_value_no_truncate ON audit_value""",
    """CREATE TRIGGER audit_value_no_truncate BEFORE TRUNCATE ON audit_value
        FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()""",
    """DROP TRIGGER IF EXISTS audit_value_mask_only ON audit_value""",
    """CREATE TRIGGER audit_value_mask_only BEFORE UPDATE ON audit_value
        FOR EACH ROW EXECUTE FUNCTION audit_value_mask_only()""",
]

#: trigger names per dialect, for the check at head and `ecrf validate install`
GUARD_TRIGGERS = {
    "sqlite": {"audit_trail_no_update", "audit_trail_no_delete", "audit_value_no_delete",
               "audit_value_mask_only"},
    "postgresql": {"audit_trail_no_change", "audit_trail_no_truncate", "audit_value_no_delete",
                   "audit_value_no_truncate", "audit_value_mask_only"},
}


def create_guards(conn: sa.Connection) -> None:
    if conn.dialect.name == "sqlite":
        for statement in _SQLITE:
            conn.exec_driver_sql(statement)
        return
    for statement in _POSTGRES:
        conn.exec_driver_sql(statement.replace("%", "%%"))  # the driver's paramstyle


def existing_guards(conn: sa.Connection) -> set[str]:
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    else:
        rows = conn.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
            "AND tgrelid IN ('audit_trail'::regclass, 'audit_value'::regclass)"
        )
    return {r[0] for r in rows} & GUARD_TRIGGERS[conn.dialect.name]
