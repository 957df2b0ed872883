"""Database conventions: constraint naming, a UTC type that keeps its zone, the session class.

Time stamps are stored in UTC with their zone (ICH E6(R3) 4.2.2d): ``timestamptz`` on PostgreSQL,
ISO 8601 text ending in ``+00:00`` on SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


#: the largest id or row version: ids are PostgreSQL ``integer`` columns
MAX_ID = 2**31 - 1
#: the largest audit seq (``bigint``)
MAX_SEQ = 2**63 - 1


def parse_key(raw: str | None, maximum: int = MAX_ID) -> int | None:
    """An id, seq, row version or count sent as text: its value if it is ASCII digits up to
    ``maximum``, else None. ``str.isdigit`` alone also accepts "²" and a hundred thousand
    digits, which ``int()`` or the database then refuse with a server error."""
    if not raw or len(raw) > 19 or not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return value if value <= maximum else None


def key(raw: str) -> int:
    """``request.args.get(name, type=key)``: an id or page number within ``MAX_ID``; anything
    else raises ValueError, so the argument's default is used."""
    value = parse_key(raw)
    if value is None:
        raise ValueError(f"not an id: {raw[:20]!r}")
    return value


_SQLITE_UTC = sqlite.DATETIME(
    storage_format=(
        "%(year)04d-%(month)02d-%(day)02dT%(hour)02d:%(minute)02d:%(second)02d"
        ".%(microsecond)06d+00:00"
    ),
    regexp=r"(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)\.(\d+)\+00:00",
)


class UTCDateTime(sa.types.TypeDecorator):
    """A time stamp that must be timezone-aware; stored and returned in UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLITE_UTC)
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: time stamps must carry their zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class EcrfSession(FlaskSession):
    """Flask-SQLAlchemy's session, which also honours an explicit ``bind``.

    The test harness binds every session to one outer connection and rolls it back after each
    test; production code never sets ``bind``.
    """

    def get_bind(self, mapper=None, clause=None, bind=None, **kwargs):
        if bind is None and self.bind is not None:
            return self.bind
        return super().get_bind(mapper=mapper, clause=clause, bind=bind, **kwargs)


def configure_engine(engine: sa.engine.Engine) -> None:
    """SQLite: foreign keys on, and every transaction takes the write lock up front.

    ``BEGIN IMMEDIATE`` serialises writers the way PostgreSQL's row lock on the audit chain head
    does, and avoids SQLite's lock-upgrade deadlock between two read-then-write transactions.
    """
    if engine.dialect.name != "sqlite":
        return

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def include_name(name, type_, parent_names) -> bool:
    """What the migrations compare with the models: everything but the job queue's tables,
    whose schema is Procrastinate's own (applied by a migration, see ecrf.exports.queue)."""
    return not (type_ == "table" and name is not None and name.startswith("procrastinate_"))
