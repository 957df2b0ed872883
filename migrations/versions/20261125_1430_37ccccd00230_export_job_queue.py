"""The job queue of web exports: Procrastinate's schema, on PostgreSQL only.

The embedded SQLite default runs web exports in a thread of the app server and needs no queue.
The schema is the one shipped with the pinned Procrastinate release (pyproject.toml); a new
release brings its own SQL migrations (procrastinate/sql/migrations), applied by a new revision.

Revision ID: 37ccccd00230
Revises: db2b9a0f74e0
Create Date: 2026-11-25 14:30:00

"""
from alembic import op
from procrastinate.schema import SchemaManager

# revision identifiers, used by Alembic.
revision = '37ccccd00230'
down_revision = 'db2b9a0f74e0'
branch_labels = None
depends_on = None


def _driver_connection():
    """psycopg's own connection, inside Alembic's transaction: the schema is plain SQL with
    several statements and no parameters, run as it is."""
    return op.get_bind().connection.driver_connection


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    _driver_connection().execute(SchemaManager.get_schema())


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    _driver_connection().execute("""
        DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers,
            procrastinate_jobs, procrastinate_workers CASCADE;
        DO $$
        DECLARE f record;
        BEGIN
            FOR f IN SELECT p.oid::regprocedure AS sig FROM pg_proc p
                     JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate\\_%'
            LOOP
                EXECUTE 'DROP FUNCTION ' || f.sig;
            END LOOP;
        END $$;
        DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type,
            procrastinate_job_status;
    """)
