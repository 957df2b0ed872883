"""The peer: SQLAlchemy-Continuum versioning the same kind of rows as an audited save.

A small model set of its own (own MetaData, tables ``bench_cont_*`` in the scratch schema of
``mirror.py``), shaped like ``form_instance``/``item_value`` (same columns, the same unique keys,
the same optimistic row version), versioned by Continuum with its defaults (``validity``
strategy, ORM-level capture, a ``transaction`` row per unit of work). It writes rows read back
from the product's own saves: a form with its item values in one transaction, then the update of
the values the product's correction changed, in another.

Continuum registers its listeners on every mapper and every engine of the interpreter, so this
runs in a process of its own (``side_by_side.py`` starts it) and leaves the product's saves
untouched. Run alone: ``python bench/continuum_peer.py --database-url URL --rows ROWS.json``
prints the per-operation latencies as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date, datetime
from decimal import Decimal
from importlib import metadata
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

SCHEMA = "bench_side"


def encode(value: Any) -> Any:
    """Column values as JSON (the types a form's rows hold)."""
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "$dec" in value:
            return Decimal(value["$dec"])
        if "$dt" in value:
            return datetime.fromisoformat(value["$dt"])
        if "$date" in value:
            return date.fromisoformat(value["$date"])
    return value


def _decode_row(row: dict) -> dict:
    return {k: decode(v) for k, v in row.items()}


def build_models():
    """The versioned model set; Continuum is imported (and switched on) here only."""
    from sqlalchemy_continuum import make_versioned

    make_versioned(user_cls=None)

    class Base(DeclarativeBase):
        metadata = sa.MetaData(schema=SCHEMA)

    sa.Table("subject", Base.metadata, sa.Column("id", sa.Integer, primary_key=True), schema="public")

    class ContForm(Base):
        __tablename__ = "bench_cont_form_instance"
        __versioned__ = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        subject_id: Mapped[int] = mapped_column(sa.ForeignKey("public.subject.id"))
        visit_key: Mapped[str] = mapped_column(sa.String(32))
        visit_repeat: Mapped[int] = mapped_column(sa.Integer)
        crf_key: Mapped[str] = mapped_column(sa.String(64))
        form_repeat: Mapped[int] = mapped_column(sa.Integer)
        crf_version: Mapped[int] = mapped_column(sa.Integer)
        status: Mapped[str] = mapped_column(sa.String(16))
        not_done_reason: Mapped[str | None] = mapped_column(sa.Text)
        row_version: Mapped[int] = mapped_column(sa.Integer)
        created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
        updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
        values = relationship("ContItem", back_populates="form")
        __table_args__ = (sa.UniqueConstraint("subject_id", "visit_key", "visit_repeat", "crf_key",
                                              "form_repeat"),)
        __mapper_args__ = {"version_id_col": row_version}

    class ContItem(Base):
        __tablename__ = "bench_cont_item_value"
        __versioned__ = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        form_instance_id: Mapped[int] = mapped_column(sa.ForeignKey(ContForm.id))
        item_key: Mapped[str] = mapped_column(sa.String(64))
        value_text: Mapped[str | None] = mapped_column(sa.Text)
        value_int: Mapped[int | None] = mapped_column(sa.BigInteger)
        value_dec: Mapped[Decimal | None] = mapped_column(sa.Numeric(24, 8, asdecimal=True))
        value_date: Mapped[date | None] = mapped_column(sa.Date)
        value_dt: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
        null_flavor: Mapped[str | None] = mapped_column(sa.String(4))
        null_comment: Mapped[str | None] = mapped_column(sa.String(500))
        form = relationship(ContForm, back_populates="values")
        __table_args__ = (sa.UniqueConstraint("form_instance_id", "item_key"),)

    sa.orm.configure_mappers()
    for table in Base.metadata.tables.values():  # Continuum's transaction id sequence, in our schema
        for column in table.columns:
            if isinstance(column.default, sa.Sequence) and column.default.schema is None:
                column.default.schema = SCHEMA
    return Base, ContForm, ContItem


def run(database_url: str, pairs: list[dict], warmup: int) -> dict:
    """Create then update each form (one transaction each); latencies of the measured ones."""
    Base, ContForm, ContItem = build_models()
    engine = sa.create_engine(database_url, pool_pre_ping=True)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        Base.metadata.create_all(conn, tables=[t for t in Base.metadata.sorted_tables
                                               if t.schema == SCHEMA])
    create_ms, update_ms = [], []
    for n, pair in enumerate(pairs):
        form_cols = _decode_row(pair["form"])
        form_cols.pop("row_version", None)  # the mapper's version counter, as in the product
        items = [_decode_row(i) for i in pair["items"]]
        started = time.perf_counter()
        with Session(engine) as session:
            form = ContForm(**form_cols)
            form.values = [ContItem(**i) for i in items]
            session.add(form)
            session.commit()
            form_id = sa.inspect(form).identity[0]
        created = time.perf_counter()
        with Session(engine) as session:  # load the form and its values, change what changed
            form = session.get(ContForm, form_id)
            rows = {i.item_key: i for i in form.values}
            for column, value in _decode_row(pair["form_update"]).items():
                setattr(form, column, value)
            for key, columns in pair["item_updates"].items():
                for column, value in _decode_row(columns).items():
                    setattr(rows[key], column, value)
            session.commit()
        updated = time.perf_counter()
        if n >= warmup:
            create_ms.append((created - started) * 1000)
            update_ms.append((updated - created) * 1000)
    with engine.connect() as conn:
        versions = {t: conn.scalar(sa.text(f"SELECT count(*) FROM {SCHEMA}.{t}"))  # noqa: S608
                    for t in ("bench_cont_form_instance_version", "bench_cont_item_value_version",
                              "transaction")}
    engine.dispose()
    return {"continuum_version": metadata.version("SQLAlchemy-Continuum"),
            "sqlalchemy_version": sa.__version__, "create_ms": create_ms, "update_ms": update_ms,
            "version_rows": versions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--rows", required=True, help="JSON: the forms to create and update")
    parser.add_argument("--warmup", type=int, default=0, help="leading pairs not measured")
    args = parser.parse_args(argv)
    url = args.database_url
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    with open(args.rows, encoding="utf-8") as f:
        pairs = json.load(f)
    json.dump(run(url, pairs, args.warmup), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
