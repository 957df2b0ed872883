"""The same rows an audited save writes, written again into mirror tables with no audit at all.

The mirror tables live in a scratch schema (``bench_side``, dropped at the end) and are copies of
``form_instance``, ``item_value`` and ``submission`` (``LIKE ... INCLUDING ALL``: same columns,
defaults, check constraints and indexes), with their own id sequences and the same foreign keys
(the form to ``public.subject``, the items and the token to the mirror form), and no triggers;
one set for the ORM writes and one for the Core writes, since both store the same slot.
What is written is read back from the audited save (``RowReader``), so both sides store the same
column values; the plain side only has nothing to check, derive, capture or chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Session, relationship

SCHEMA = "bench_side"
#: the product tables copied, once for the ORM writes and once for the Core writes
SOURCES = ("form_instance", "item_value", "submission")
PREFIXES = ("bench_mirror_orm", "bench_mirror_core")


def mirror_name(prefix: str, source: str) -> str:
    return f"{prefix}_{source}"


def create_schema(engine: sa.Engine) -> None:
    """A fresh scratch schema (a left-over one from an interrupted run is replaced)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")


def drop_schema(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def create_mirror_tables(engine: sa.Engine, prefix: str) -> None:
    form = f"{SCHEMA}.{mirror_name(prefix, 'form_instance')}"
    with engine.begin() as conn:
        for source in SOURCES:
            table = f"{SCHEMA}.{mirror_name(prefix, source)}"
            conn.exec_driver_sql(f"CREATE TABLE {table} (LIKE public.{source} INCLUDING ALL)")
            if source != "submission":  # its own ids, not the product's sequence
                conn.exec_driver_sql(f"CREATE SEQUENCE {table}_id_seq OWNED BY {table}.id")
                conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN id "
                                     f"SET DEFAULT nextval('{table}_id_seq')")
        for source, column, target in (("form_instance", "subject_id", "public.subject(id)"),
                                       ("item_value", "form_instance_id", f"{form}(id)"),
                                       ("submission", "form_instance_id", f"{form}(id)")):
            conn.exec_driver_sql(f"ALTER TABLE {SCHEMA}.{mirror_name(prefix, source)} "
                                 f"ADD FOREIGN KEY ({column}) REFERENCES {target}")


@dataclass
class SavedRows:
    """The non-audit rows one save wrote: its form, its item values and its submission token."""

    form: dict[str, Any]
    items: list[dict[str, Any]]
    submission: dict[str, Any] | None


class RowReader:
    """Reads back what an audited save stored, without the ids the mirror assigns itself."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        md = sa.MetaData()
        with engine.connect() as conn:
            self.forms, self.items, self.subs, self.trail = (
                sa.Table(t, md, autoload_with=conn) for t in (*SOURCES, "audit_trail"))

    def read(self, form_id: int) -> SavedRows:
        forms, items, subs = self.forms, self.items, self.subs
        with self.engine.connect() as conn:
            form = dict(conn.execute(sa.select(forms).where(forms.c.id == form_id)).mappings().one())
            rows = [dict(r) for r in conn.execute(sa.select(items).where(
                items.c.form_instance_id == form_id).order_by(items.c.id)).mappings()]
            sub = conn.execute(sa.select(subs).where(subs.c.form_instance_id == form_id)
                               .order_by(subs.c.created_at)).mappings().first()
        form.pop("id")
        for row in rows:
            row.pop("id")
            row.pop("form_instance_id")
        sub = dict(sub) if sub is not None else None
        if sub is not None:
            sub.pop("form_instance_id")
        return SavedRows(form, rows, sub)

    def audit_rows(self, form_id: int) -> dict[str, int]:
        """The audit rows written by the save that created this form (its request id)."""
        trail = self.trail
        with self.engine.connect() as conn:
            request = conn.scalar(sa.select(trail.c.request_id).where(
                trail.c.entity_type == "form", trail.c.entity_id == str(form_id),
                trail.c.action == "form.create").limit(1))
            rows = conn.scalar(sa.select(sa.func.count()).where(trail.c.request_id == request))
        return {"audit_trail": rows, "audit_value": rows}


class PlainWriter:
    """Plain saves into the mirror tables, through SQLAlchemy's ORM and through Core.

    ORM: mapped classes on the reflected mirror tables, a form with its items as a relationship,
    ``session.add`` and ``commit``: how an application built like this one, minus the audit, would
    save a form (one flush: INSERT form RETURNING id, one multi-row INSERT of the items, INSERT of
    the token). Core: the same three INSERTs without the unit of work, the floor for the same rows.
    """

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        md = sa.MetaData()  # the referenced public.subject is reflected beside them

        def reflect(prefix: str, source: str, conn) -> sa.Table:
            # the id declared as the product's models declare it (an autoincrementing integer key)
            # rather than as reflected (a server default SQLAlchemy cannot order by): otherwise the
            # ORM inserts the items one statement each instead of in one multi-row INSERT
            ids = [sa.Column("id", sa.Integer, primary_key=True)] if source != "submission" else []
            return sa.Table(mirror_name(prefix, source), md, *ids, schema=SCHEMA, autoload_with=conn)

        with engine.connect() as conn:
            orm, core = ([reflect(p, t, conn) for t in SOURCES] for p in PREFIXES)
        self.forms, self.items, self.subs = core

        class Base(DeclarativeBase):
            metadata = md

        class MirrorForm(Base):
            __table__ = orm[0]

        class MirrorItem(Base):
            __table__ = orm[1]

        class MirrorSubmission(Base):
            __table__ = orm[2]

        MirrorForm.values = relationship(MirrorItem)
        MirrorForm.submissions = relationship(MirrorSubmission)
        self.Form, self.Item, self.Submission = MirrorForm, MirrorItem, MirrorSubmission
        sa.orm.configure_mappers()

    def orm(self, rows: SavedRows) -> int:
        with Session(self.engine) as session:
            form = self.Form(**rows.form)
            form.values = [self.Item(**item) for item in rows.items]
            if rows.submission is not None:
                form.submissions = [self.Submission(**rows.submission)]
            session.add(form)
            session.commit()
            return sa.inspect(form).identity[0]

    def core(self, rows: SavedRows) -> int:
        with self.engine.begin() as conn:
            form_id = conn.execute(sa.insert(self.forms).returning(self.forms.c.id), rows.form).scalar_one()
            conn.execute(sa.insert(self.items), [{**item, "form_instance_id": form_id}
                                                 for item in rows.items])
            if rows.submission is not None:
                conn.execute(sa.insert(self.subs), {**rows.submission, "form_instance_id": form_id})
            return form_id

