"""Alembic environment (Flask-Migrate). Migrations are the only source of the schema.

``MIGRATION_DATABASE_URL``, when set, runs migrations as a separate owner role so that the
application's own role can stay least-privileged (INSERT/SELECT only on audit_trail).
"""

import logging
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from flask import current_app

from config import normalise_database_url
from ecrf.database import configure_engine, include_name

config = context.config
if config.config_file_name and not getattr(config, "_ecrf_quiet", False):
    fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")

target_db = current_app.extensions["migrate"].db


def get_engine():
    owner_url = current_app.config.get("MIGRATION_DATABASE_URL")
    if owner_url:
        engine = sa.create_engine(normalise_database_url(owner_url))
        configure_engine(engine)
        return engine
    return target_db.engine


def get_metadata():
    return target_db.metadata


def run_migrations_offline():
    context.configure(url=str(get_engine().url), target_metadata=get_metadata(),
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    conf_args = dict(current_app.extensions["migrate"].configure_args)
    conf_args.setdefault("process_revision_directives", process_revision_directives)
    conf_args.setdefault("include_name", include_name)
    with get_engine().connect() as connection:
        context.configure(connection=connection, target_metadata=get_metadata(), **conf_args)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
