"""Analysis datasets: one table per CRF, a data dictionary, in CSV, SAS, SPSS and Stata, zipped.

The zip holds, for each table, ``csv/<name>.csv``, ``sas/<name>.xpt`` (SAS transport version 5),
``spss/<name>.sav`` and ``stata/<name>.dta``; ``README.txt`` (the conventions below) and
``manifest.json`` (each file's rows, bytes and SHA-256; when, by whom, which scope, which study
definition). ``verify_manifest(zip_path)`` checks a zip against its manifest.

Tables (names of at most 8 characters, unique in the zip):

- one per CRF (``DEMOGRAP``, ``ADVEEVEN``...; the CRF key when it fits, else its words shortened
  alike, numbered on a clash), one row per form instance: ``SUBJID``, ``SITEID``, ``VISIT``,
  ``VISITREP``, ``FORMREP``, ``CRFVER``, ``FORMSTAT``, ``NDREASON``, then the CRF's items. Every
  version of the CRF shares the table: an item absent from a row's version is empty there, and the
  dictionary names the versions that hold each column.
- ``SUBJECTS``: one row per subject in scope (code, site, status, inclusion date).
- ``DATADICT``: one row per column of every table (table, column, label, type, unit, codelist,
  CRF versions...); ``CODELIST``: one row per code of every coded column.

Columns of an item (names of at most 8 characters, unique per table; the item's ``sas_name``, or
its key upper-cased, unless taken; a companion column is the name cut to fit its suffix):

- ``NAME``: the value. Integers and decimals are numbers, dates are dates, date-times are in UTC
  (ISO 8601 with ``Z`` in the CSV); partial dates (``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD``) and times
  are text. A multiple choice holds its codes joined by ``|``.
- ``NAME_LBL``: the label of the code, for coded items (choices, yes/no, CTCAE terms); a multiple
  choice's labels are joined by `` | ``. A name of more than 4 characters gets ``_L`` instead, cut
  to fit (``PREGTEST`` -> ``PREGTE_L``).
- ``NAME_1``, ``NAME_2``...: for a multiple choice, one indicator per option in codelist order
  (1 chosen, 0 not chosen, empty when the item has no value).
- ``NAME_NF``: the null flavor (NI, UNK, NA, ASKU) when a reason the value is missing was given
  instead of a value (the value is then empty); derived items have none. The null flavor's
  comment is not exported here (the ODM export and the audit trail keep it). ``MSK`` (masked):
  a data manager redacted the value entered (the value is then empty).

SAS transport version 5 limits: names of at most 8 characters, labels of at most 40 bytes (the
dictionary keeps the full label; Stata keeps 80), text values of at most 200 bytes: a longer value
is cut in the ``.xpt`` file only (the CSV, SPSS and Stata files keep it whole) and the manifest
counts the values cut per column. A name SPSS reserves (``BY``, ``TO``...) is numbered like a
clash. Text is UTF-8. SPSS files carry the labels of codes as value labels too.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from flask import current_app
from flask_babel import force_locale

from ecrf.audit.redaction import REDACTED_FLAVOR
from ecrf.casebook.models import FORM_STATUS_LABELS, FormInstance, ItemValue
from ecrf.database import utcnow
from ecrf.exports.jobs import Scope, writer
from ecrf.exports.models import ExportJob
from ecrf.extensions import db
from ecrf.forms.definition import CRF, Item
from ecrf.forms.items import NULL_FLAVORS, Choice, CtcaeTerm, MultiChoice
from ecrf.study.models import SUBJECT_STATUS_LABELS, Site, Subject

#: subjects per query: each CRF's table is read this many subjects at a time
CHUNK = 200
NAME_MAX = 8
XPT_LABEL_MAX = 40
XPT_TEXT_MAX = 200
DTA_LABEL_MAX = 80
SAV_LABEL_MAX = 255
#: names SPSS reserves (in any case) and SAS's automatic variables: never a column's
RESERVED = frozenset({"ALL", "AND", "BY", "EQ", "GE", "GT", "LE", "LT", "NE", "NOT", "OR", "TO", "WITH",
                      "_N_", "_ERROR_"})
#: the tables every export holds, whatever the CRFs (their names are reserved first)
SUBJECTS, DICTIONARY, CODELISTS = "SUBJECTS", "DATADICT", "CODELIST"
#: the folder in the zip of each format but CSV
FOLDERS = {"xpt": "sas", "sav": "spss", "dta": "stata"}
#: the storage column of an item -> the column's type in the datasets
KIND_OF_STORAGE = {"value_int": "integer", "value_dec": "decimal", "value_date": "date",
                   "value_dt": "datetime", "value_text": "text"}
NUMERIC = frozenset({"integer", "decimal", "indicator"})
DATE_FORMATS = {"xpt": {"date": "DATE9", "datetime": "DATETIME20"},
                "sav": {"date": "DATE11", "datetime": "DATETIME20"},
                "dta": {"date": "%td", "datetime": "%tc"}}
INDICATOR_LABELS = {1: "Chosen", 0: "Not chosen"}
#: the label of the null flavor of a redacted value in the codelists
REDACTED_LABEL = "Masked: the value was redacted"


# --- the layout: tables and columns, from the definitions alone ------------------------------


@dataclass
class Column:
    name: str
    label: str
    #: text, integer, decimal, date, datetime, indicator (0/1)
    kind: str
    #: key (identifies the row), value, label (of a code), option (indicator), null_flavor
    role: str
    item: str | None = None
    item_type: str | None = None
    unit: str | None = None
    codelist: tuple[tuple[str, str], ...] | None = None
    #: a codelist too long to list (CTCAE terms): what it is
    codelist_note: str | None = None
    versions: tuple[int, ...] = ()
    #: the code an indicator stands for
    option: str | None = None
    #: the end of the label that says what a companion column is (kept when a label is cut)
    tail: str = ""

    def label_in(self, limit: int) -> str:
        """The label in at most ``limit`` UTF-8 bytes, the item's label cut before its tail."""
        if len(self.label.encode("utf-8")) <= limit:
            return self.label
        head = self.label[:len(self.label) - len(self.tail)]
        room = limit - len(self.tail.encode("utf-8"))
        if not self.tail or room < limit // 2:  # a tail too long to keep whole: cut the label
            return _fit(self.label, limit).rstrip()
        return _fit(head, room).rstrip() + self.tail


@dataclass
class Table:
    name: str
    title: str
    crf_key: str | None = None
    columns: list[Column] = field(default_factory=list)
    #: item key -> CRF version -> the item in that version (to read the rows)
    items: dict[str, dict[int, Item]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def short_name(base: str, used: set[str], suffix: str = "") -> str:
    """``base`` + ``suffix`` in at most 8 characters (the base cut to fit), numbered on a clash
    (``BAS2_LBL``); the name is added to ``used``."""
    room = NAME_MAX - len(suffix)
    name = base[:room].rstrip("_") + suffix
    n = 2
    while name in used:
        tag = str(n)
        name = base[:room - len(tag)].rstrip("_") + tag + suffix
        n += 1
    used.add(name)
    return name


def table_base(crf_key: str) -> str:
    """A CRF key as a table name of at most 8 characters: the key when it fits, else each word
    cut alike (``adverse_event`` -> ``ADVEEVEN``, ``end_of_study`` -> ``ENDOFSTU``)."""
    key = re.sub(r"[^A-Z0-9_]", "", crf_key.upper())
    if len(key) <= NAME_MAX:
        return key
    words = [w for w in key.split("_") if w]
    for k in range(NAME_MAX, 0, -1):
        name = "".join(w[:k] for w in words)
        if len(name) <= NAME_MAX:
            return name
    return "".join(w[0] for w in words)[:NAME_MAX]


def _english(text: Any) -> str:
    with force_locale("en"):
        return str(text)


def _status_codelist(labels: dict) -> tuple[tuple[str, str], ...]:
    return tuple((str(code.value), _english(label)) for code, label in labels.items())


def _key_columns() -> list[Column]:
    statuses = _status_codelist(FORM_STATUS_LABELS)
    return [
        Column("SUBJID", "Subject code", "text", "key"),
        Column("SITEID", "Site code", "text", "key"),
        Column("VISIT", "Visit key", "text", "key"),
        Column("VISITREP", "Visit repeat (unscheduled: 1, 2...)", "integer", "key"),
        Column("FORMREP", "Form repeat (repeating forms: 1, 2...)", "integer", "key"),
        Column("CRFVER", "CRF version of the data", "integer", "key"),
        Column("FORMSTAT", "Form status", "text", "key", codelist=statuses),
        Column("NDREASON", "Reason the form was not done", "text", "key"),
    ]


def _codelist(items: Iterable[Item]) -> tuple[tuple[str, str], ...]:
    """The codes of an item over its versions: the newest labels first, older codes after."""
    seen: dict[str, str] = {}
    for item in items:
        if isinstance(item.type, Choice):
            for code, label in item.type.codelist:
                seen.setdefault(code, _english(label))
    return tuple(seen.items())


def crf_table(versions: dict[int, CRF], used_tables: set[str]) -> Table:
    """The table of one CRF over all its versions (newest version's item order, then the items
    only older versions hold)."""
    newest = versions[max(versions)]
    table = Table(short_name(table_base(newest.key), used_tables), newest.title, newest.key,
                  _key_columns())
    for version in sorted(versions, reverse=True):
        for item in versions[version].items:
            table.items.setdefault(item.key, {})[version] = item
    used = set(table.names) | RESERVED
    # the items' own names first, so that a companion column never takes one
    value_names = {key: short_name(by_version[max(by_version)].short_name, used)
                   for key, by_version in table.items.items()}
    for key, by_version in table.items.items():
        item = by_version[max(by_version)]
        held = tuple(sorted(by_version))
        newest_first = [by_version[v] for v in sorted(by_version, reverse=True)]
        kinds = {KIND_OF_STORAGE[i.type.column] for i in newest_first}
        multiple = isinstance(item.type, MultiChoice)
        kind = kinds.pop() if len(kinds) == 1 and not multiple else "text"
        label = _english(item.label)
        common = {"item": key, "item_type": item.type.name, "versions": held}
        codelist = _codelist(newest_first) if isinstance(item.type, Choice) else None
        note = "CTCAE v5.0 terms by MedDRA code" if isinstance(item.type, CtcaeTerm) else None
        name = value_names[key]
        tail = " (UTC)" if kind == "datetime" else ""
        table.columns.append(Column(name, label + tail, kind, "value", unit=item.unit,
                                    codelist=codelist, codelist_note=note, tail=tail, **common))
        if codelist is not None or note is not None:
            suffix = "_LBL" if len(name) <= NAME_MAX - 4 else "_L"
            table.columns.append(Column(short_name(name, used, suffix), f"{label} (label)", "text",
                                        "label", tail=" (label)", **common))
        if multiple:
            for n, (code, code_label) in enumerate(codelist, start=1):
                table.columns.append(Column(short_name(name, used, f"_{n}"), f"{label}: {code_label}",
                                            "indicator", "option", option=code, tail=f": {code_label}",
                                            codelist=tuple((str(k), v) for k, v in
                                                           INDICATOR_LABELS.items()), **common))
        if not all(i.derived for i in newest_first):
            table.columns.append(Column(
                short_name(name, used, "_NF"), f"{label} (null flavor)", "text", "null_flavor",
                tail=" (null flavor)", codelist=(*((c, _english(t)) for c, t in NULL_FLAVORS.items()),
                                                 (REDACTED_FLAVOR, REDACTED_LABEL)),
                **common))
    return table


def subjects_table() -> Table:
    return Table(SUBJECTS, "Subjects", None, [
        Column("SUBJID", "Subject code", "text", "key"),
        Column("SITEID", "Site code", "text", "key"),
        Column("SUBJSTAT", "Subject status", "text", "value",
               codelist=_status_codelist(SUBJECT_STATUS_LABELS)),
        Column("STATRSN", "Reason for the subject status", "text", "value"),
        Column("INCLDT", "Inclusion date (D0)", "date", "value"),
    ])


DICTIONARY_COLUMNS = [
    Column("TABLE", "Table", "text", "key"), Column("CRF", "CRF key", "text", "value"),
    Column("COLUMN", "Column", "text", "key"), Column("ITEM", "Item key", "text", "value"),
    Column("ROLE", "Role: key, value, label, option, null_flavor", "text", "value"),
    Column("LABEL", "Label", "text", "value"),
    Column("SASLABEL", "Label as cut for SAS (40 bytes)", "text", "value"),
    Column("TYPE", "Type: text, integer, decimal, date, datetime, indicator", "text", "value"),
    Column("ITEMTYPE", "Item type in the eCRF", "text", "value"),
    Column("UNIT", "Unit", "text", "value"),
    Column("CODELIST", "Codelist: code=label; ...", "text", "value"),
    Column("OPTION", "Code an indicator stands for", "text", "value"),
    Column("VERSIONS", "CRF versions holding the column", "text", "value"),
]
CODELIST_COLUMNS = [
    Column("TABLE", "Table", "text", "key"), Column("COLUMN", "Column", "text", "key"),
    Column("CODE", "Code", "text", "key"), Column("LABEL", "Label", "text", "value"),
]


def layout(registry=None) -> list[Table]:
    """Every table of an export, in order; the same definitions give the same names."""
    registry = registry or current_app.extensions["ecrf.registry"]
    used = {SUBJECTS, DICTIONARY, CODELISTS}
    tables = [subjects_table()]
    tables += [crf_table(registry.crfs[key], used) for key in sorted(registry.crfs)]
    return tables


def _fit(text: str | None, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes, never cutting a character."""
    if not text:
        return ""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def dictionary_rows(tables: list[Table]) -> list[list]:
    rows = []
    for table in tables:
        for c in table.columns:
            codes = "; ".join(f"{code}={label}" for code, label in c.codelist) if c.codelist \
                else (c.codelist_note or "")
            rows.append([table.name, table.crf_key or "", c.name, c.item or "", c.role, c.label,
                         c.label_in(XPT_LABEL_MAX), c.kind, c.item_type or "", c.unit or "", codes,
                         c.option or "", ", ".join(map(str, c.versions))])
    return rows


def codelist_rows(tables: list[Table]) -> list[list]:
    return [[table.name, c.name, code, label] for table in tables for c in table.columns
            if c.codelist for code, label in c.codelist]


# --- reading the rows -------------------------------------------------------------------------


def _read_value(item: Item, raw: Any) -> Any:
    if raw is None:
        return None
    if item.type.multiple:  # a JSON list of codes (read as stored, never re-validated)
        codes = json.loads(raw)
        return [str(c) for c in codes] if isinstance(codes, list) else [str(codes)]
    return raw


def _labeller(item: Item) -> Callable[[str], str]:
    """code -> label for one version of an item (in English, looked up once per item)."""
    if isinstance(item.type, Choice):
        labels = {code: _english(label) for code, label in item.type.codelist}
        return lambda code: labels.get(code, code)
    if isinstance(item.type, CtcaeTerm):
        return item.type.label
    return str


class RowBuilder:
    """Turns one form instance and its stored values into a row of a CRF's table."""

    def __init__(self, table: Table):
        self.table = table
        self.by_item: dict[str, list[Column]] = {}
        for c in table.columns:
            if c.item is not None:
                self.by_item.setdefault(c.item, []).append(c)
        self.labels = {(key, version): _labeller(item) for key, versions in table.items.items()
                       for version, item in versions.items()}

    def row(self, key_values: list, version: int, stored: dict[str, Any]) -> list:
        """``stored``: item key -> the ItemValue row (columns as attributes) of the instance."""
        out = list(key_values)
        for key, columns in self.by_item.items():
            item = self.table.items[key].get(version)
            data = stored.get(key) if item is not None else None
            flavor = None if data is None else REDACTED_FLAVOR if data.redacted_seq else data.null_flavor
            value = None if data is None or flavor else _read_value(
                item, getattr(data, item.type.column))
            label = self.labels.get((key, version))
            for c in columns:
                out.append(self._cell(c, item, value, flavor, label))
        return out

    @staticmethod
    def _cell(c: Column, item: Item | None, value: Any, flavor: str | None, label) -> Any:
        if c.role == "null_flavor":
            return flavor
        if value is None:
            return None
        if c.role == "value":
            if isinstance(value, list):
                return "|".join(value)
            if c.kind == "text" and not isinstance(value, str):
                return item.type.text(value)  # the kind differs between versions: as text
            return value
        if c.role == "label":
            return " | ".join(map(label, value)) if isinstance(value, list) else label(value)
        if c.role == "option":
            return 1 if c.option in value else 0
        raise ValueError(c.role)


def _csv_text(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "decimal":
        return format(Decimal(value).normalize(), "f")
    if kind == "datetime":
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == "date":
        return value.isoformat()
    return str(value)


class TableFiles:
    """One table being written: its CSV as rows come, and its columns kept for the binary
    formats, which need the whole table (numbers as float arrays, the rest as Python objects)."""

    def __init__(self, table: Table, folder: Path):
        self.table, self.folder = table, folder
        self.csv_path = folder / f"{table.name.lower()}.csv"
        self._csv_file = self.csv_path.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(table.names)
        self.rows = 0
        self._pending: list[list] = []
        self._chunks: list[list] = [[] for _ in table.columns]

    def add(self, row: list) -> None:
        self._csv.writerow([_csv_text(c.kind, v) for c, v in zip(self.table.columns, row, strict=True)])
        self._pending.append(row)
        self.rows += 1
        if len(self._pending) >= 5000:
            self._flush()

    def _flush(self) -> None:
        import numpy as np

        for i, c in enumerate(self.table.columns):
            cells = [r[i] for r in self._pending]
            if c.kind in NUMERIC:
                self._chunks[i].append(np.array([np.nan if v is None else float(v) for v in cells],
                                                dtype="float64"))
            elif c.kind == "datetime":
                self._chunks[i].append(np.array([None if v is None else v.astimezone(UTC).replace(
                    tzinfo=None) for v in cells], dtype=object))
            else:
                self._chunks[i].append(np.array(cells, dtype=object))
        self._pending = []

    def close_csv(self) -> None:
        if not self._csv_file.closed:
            self._flush()
            self._csv_file.close()

    def frame(self):
        """The table as a pandas frame (dates with no value at all become numeric missing values,
        so that every format still types the column as a date)."""
        import numpy as np
        import pandas as pd

        data = {}
        for c, chunks in zip(self.table.columns, self._chunks, strict=True):
            if c.kind in NUMERIC:
                data[c.name] = np.concatenate(chunks) if chunks else np.array([], dtype="float64")
                continue
            cells = np.concatenate(chunks) if chunks else np.array([], dtype=object)
            if c.kind in ("date", "datetime") and all(v is None for v in cells):
                data[c.name] = np.full(len(cells), np.nan)
            else:
                data[c.name] = pd.Series(cells, dtype=object)
        self._chunks = []
        return pd.DataFrame(data, columns=self.table.names)


# --- the binary formats -----------------------------------------------------------------------


def _formats(table: Table, ext: str) -> dict[str, str]:
    return {c.name: DATE_FORMATS[ext][c.kind] for c in table.columns if c.kind in ("date", "datetime")}


def _value_labels(table: Table, ext: str) -> dict[str, dict]:
    """SPSS keeps the labels of text codes; SPSS and Stata those of 0/1 indicators."""
    labels = {}
    for c in table.columns:
        if c.kind == "indicator":
            labels[c.name] = dict(INDICATOR_LABELS)
        elif ext == "sav" and c.codelist and c.kind == "text" and c.item_type != "multi_choice":
            labels[c.name] = dict(c.codelist)
    return labels


def _xpt_safe(frame, table: Table) -> tuple[Any, dict[str, int]]:
    """Text cut to 200 bytes for SAS transport v5; returns the frame and the values cut."""
    cut: dict[str, int] = {}
    frame = frame.copy(deep=False)
    for c in table.columns:
        if c.kind != "text":
            continue
        values = frame[c.name]
        too_long = [isinstance(v, str) and len(v.encode("utf-8")) > XPT_TEXT_MAX for v in values]
        if any(too_long):
            cut[c.name] = sum(too_long)
            frame[c.name] = values.map(lambda v: _fit(v, XPT_TEXT_MAX) if isinstance(v, str) else v)
    return frame, cut


def write_binary(frame, table: Table, folder: Path, ext: str) -> tuple[Path, dict]:
    """One table as ``.xpt``, ``.sav`` or ``.dta``; returns the path and notes for the manifest."""
    import pyreadstat

    path = folder / f"{table.name.lower()}.{ext}"
    title = table.title if table.crf_key is None else f"{table.title} ({table.crf_key})"
    notes: dict = {}
    if ext == "xpt":
        frame, cut = _xpt_safe(frame, table)
        if cut:
            notes["values_cut_to_200_bytes"] = cut
        pyreadstat.write_xport(frame, str(path), file_label=_fit(title, XPT_LABEL_MAX),
                               column_labels=[c.label_in(XPT_LABEL_MAX) for c in table.columns],
                               table_name=table.name, file_format_version=5,
                               variable_format=_formats(table, ext))
    elif ext == "sav":
        pyreadstat.write_sav(frame, str(path), file_label=_fit(title, 64),
                             column_labels=[c.label_in(SAV_LABEL_MAX) for c in table.columns],
                             variable_value_labels=_value_labels(table, ext),
                             variable_format=_formats(table, ext))
    else:
        pyreadstat.write_dta(frame, str(path), file_label=_fit(title, DTA_LABEL_MAX),
                             column_labels=[c.label_in(DTA_LABEL_MAX) for c in table.columns],
                             variable_value_labels=_value_labels(table, ext),
                             variable_format=_formats(table, ext))
    return path, notes


# --- the export -------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Package:
    """The zip being written: files go in one by one, each digested and listed for the manifest."""

    def __init__(self, out: IO[bytes], folder: Path):
        self.zip = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        self.folder = folder
        self.files: list[dict] = []
        self._open: TableFiles | None = None

    def table_files(self, table: Table) -> TableFiles:
        self._open = TableFiles(table, self.folder)
        return self._open

    def add(self, path: Path, arcname: str, rows: int | None, **about) -> None:
        entry = {"path": arcname, **about, "rows": rows, "bytes": path.stat().st_size,
                 "sha256": _sha256(path)}
        self.zip.write(path, arcname)
        path.unlink()
        self.files.append(entry)

    def add_table(self, files: TableFiles) -> None:
        table = files.table
        about = {"table": table.name, "crf": table.crf_key}
        files.close_csv()
        self.add(files.csv_path, f"csv/{files.csv_path.name}", files.rows, format="csv", **about)
        frame = files.frame()
        for ext, folder in FOLDERS.items():
            path, notes = write_binary(frame, table, self.folder, ext)
            self.add(path, f"{folder}/{path.name}", len(frame), format=ext, **about, **notes)
        del frame

    def close(self, manifest: dict) -> None:
        self.zip.writestr("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        self.zip.close()

    def abort(self) -> None:
        """A failed export: release the files (the job discards what was written)."""
        if self._open is not None:
            self._open.close_csv()
        self.zip.close()


def _exported_by(out: IO[bytes], options: dict) -> dict:
    """Who asked: the export job the options name (``ecrf.exports.jobs`` passes its id)."""
    job_id = options.get("export_job")
    job = db.session.get(ExportJob, int(job_id)) if job_id else None
    if job is not None:
        user = job.requested_by
        return {"username": user.username, "full_name": user.full_name, "user_id": user.id,
                "export_job": job.id}
    return {"username": options.get("exported_by"), "export_job": None}


def _study_definition() -> dict:
    from ecrf.study import settings
    from ecrf.study.change_control import StudyDefinition, current_fingerprint

    fingerprint, versions = current_fingerprint()
    recorded = db.session.scalar(sa.select(StudyDefinition).where(
        StudyDefinition.fingerprint == fingerprint).order_by(StudyDefinition.id.desc()))
    return {"study": settings.STUDY.get("name"), "fingerprint": fingerprint,
            "crf_versions": versions,
            "deployed": ({"id": recorded.id, "recorded_at": recorded.recorded_at.isoformat()}
                         if recorded is not None else None)}


def _subjects(scope: Scope) -> list[tuple[int, str, str, str, str | None, date | None]]:
    """(id, code, site code, status, status reason, inclusion date) of the subjects in scope, in
    code order: a few values per subject, not the subjects' data."""
    stmt = scope.subjects().join(Site, Site.id == Subject.site_id).with_only_columns(
        Subject.id, Subject.code, Site.code, Subject.status, Subject.status_reason,
        Subject.inclusion_date)
    return [tuple(r) for r in db.session.execute(stmt)]


def _instances(table: Table, subject_ids: list[int]) -> tuple[list, dict[int, dict[str, Any]]]:
    """The form instances of one CRF for some subjects, and their stored values (column rows,
    no ORM objects: nothing accumulates in the session)."""
    where = (FormInstance.crf_key == table.crf_key, FormInstance.subject_id.in_(subject_ids))
    instances = db.session.execute(sa.select(
        FormInstance.id, FormInstance.subject_id, FormInstance.visit_key, FormInstance.visit_repeat,
        FormInstance.form_repeat, FormInstance.crf_version, FormInstance.status,
        FormInstance.not_done_reason).where(*where)).all()
    values: dict[int, dict[str, Any]] = {}
    stmt = sa.select(ItemValue.form_instance_id, ItemValue.item_key, ItemValue.value_text,
                     ItemValue.value_int, ItemValue.value_dec, ItemValue.value_date,
                     ItemValue.value_dt, ItemValue.null_flavor, ItemValue.redacted_seq).join(
        FormInstance, FormInstance.id == ItemValue.form_instance_id).where(*where)
    for row in db.session.execute(stmt):
        values.setdefault(row.form_instance_id, {})[row.item_key] = row
    return instances, values


README = """Analysis datasets exported from the eCRF
=========================================

Scope: {scope}. Exported {exported_at} by {user}. Study definition {fingerprint}.

Folders: csv/ (UTF-8, comma-separated, one header row of column names), sas/ (SAS transport
version 5, .xpt), spss/ (.sav), stata/ (.dta). The same tables and column names in each.
manifest.json lists every file with its rows, bytes and SHA-256.
"""


def _readme(manifest: dict) -> str:
    doc = (__doc__ or "")[(__doc__ or "").find("Tables ("):]
    by = manifest["exported_by"]
    head = README.format(scope=manifest["scope"]["label"], exported_at=manifest["exported_at"],
                         user=by.get("username") or "an unknown user",
                         fingerprint=manifest["study_definition"]["fingerprint"])
    return head + "\n" + doc.replace("``", "")


def export_datasets(scope: Scope, out: IO[bytes], progress: Callable[[int, int], None] | None = None,
                    options: dict | None = None) -> dict:
    """Write the zip of analysis datasets of ``scope`` into ``out``; returns the manifest."""
    options = options or {}
    progress = progress or (lambda done, total: None)
    registry = current_app.extensions["ecrf.registry"]
    tables = layout(registry)
    visit_order = {v.key: n for n, v in enumerate(registry.schedule.visits)} \
        if registry.schedule is not None else {}
    subjects = _subjects(scope)
    chunks = [subjects[i:i + CHUNK] for i in range(0, len(subjects), CHUNK)]
    total, done = (len(tables) - 1) * max(len(chunks), 1) + 2, 0
    manifest = {
        "format": "ecrf analysis datasets", "manifest_version": 1,
        "exported_at": utcnow().astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "exported_by": _exported_by(out, options),
        "scope": {"label": scope.label, "site": scope.site.code if scope.site else None,
                  "subject": scope.subject.code if scope.subject else None,
                  "subjects": len(subjects)},
        "study_definition": _study_definition(),
    }
    with tempfile.TemporaryDirectory(prefix="ecrf-datasets-") as tmp:
        package = Package(out, Path(tmp))
        try:
            readme = package.folder / "README.txt"
            readme.write_text(_readme(manifest), encoding="utf-8")
            package.add(readme, "README.txt", None, format="text")
            files = package.table_files(tables[0])
            for _id, code, site, status, reason, included in subjects:
                files.add([code, site, status, reason, included])
            package.add_table(files)
            done += 1
            progress(done, total)
            for table in tables[1:]:
                builder, files = RowBuilder(table), package.table_files(table)
                for chunk in chunks:
                    codes = {s[0]: (s[1], s[2]) for s in chunk}
                    instances, values = _instances(table, list(codes))
                    instances.sort(key=lambda i: (codes[i.subject_id][0],
                                                  visit_order.get(i.visit_key, len(visit_order)),
                                                  i.visit_key, i.visit_repeat, i.form_repeat))
                    for i in instances:
                        code, site = codes[i.subject_id]
                        files.add(builder.row([code, site, i.visit_key, i.visit_repeat, i.form_repeat,
                                               i.crf_version, i.status, i.not_done_reason],
                                              i.crf_version, values.get(i.id, {})))
                    done += 1
                    progress(done, total)
                package.add_table(files)
            for name, title, columns, rows in (
                    (DICTIONARY, "Data dictionary", DICTIONARY_COLUMNS, dictionary_rows(tables)),
                    (CODELISTS, "Codelists", CODELIST_COLUMNS, codelist_rows(tables))):
                files = package.table_files(Table(name, title, None, columns))
                for row in rows:
                    files.add(row)
                package.add_table(files)
            manifest["files"] = package.files
            package.close(manifest)
        except BaseException:
            package.abort()
            raise
        progress(total, total)
    return manifest


@writer("datasets")
def write(scope: Scope, out: IO[bytes], progress, options: dict) -> None:
    export_datasets(scope, out, progress, options)


# --- checking a zip against its manifest ------------------------------------------------------


def _rows_in(data: bytes, fmt: str) -> int | None:
    if fmt == "csv":
        return max(sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8"), newline=""))) - 1, 0)
    if fmt not in ("xpt", "sav", "dta"):
        return None
    import pyreadstat

    reader = {"xpt": pyreadstat.read_xport, "sav": pyreadstat.read_sav, "dta": pyreadstat.read_dta}[fmt]
    fd, name = tempfile.mkstemp(suffix=f".{fmt}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        frame, _meta = reader(name)
        return len(frame)
    finally:
        os.unlink(name)


def verify_manifest(zip_path: str | os.PathLike) -> list[str]:
    """Check a datasets zip against its manifest.json: every file listed is there with its
    SHA-256, size and rows, and nothing else is. Returns the problems found (none: the zip is
    as exported)."""
    problems: list[str] = []
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        return [f"not a readable zip: {e}"]
    with archive:
        try:
            manifest = json.loads(archive.read("manifest.json"))
        except KeyError:
            return ["manifest.json is missing"]
        except ValueError as e:
            return [f"manifest.json is not JSON: {e}"]
        listed = {f["path"]: f for f in manifest.get("files", [])}
        present = set(archive.namelist()) - {"manifest.json"}
        for path in sorted(present - set(listed)):
            problems.append(f"{path}: in the zip but not in the manifest")
        for path, entry in listed.items():
            if path not in present:
                problems.append(f"{path}: listed in the manifest but missing")
                continue
            data = archive.read(path)
            if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
                problems.append(f"{path}: SHA-256 differs from the manifest")
                continue
            if len(data) != entry.get("bytes"):
                problems.append(f"{path}: size differs from the manifest")
            if entry.get("rows") is not None:
                try:
                    rows = _rows_in(data, entry.get("format", ""))
                except Exception as e:  # a file that no longer reads is a finding, not a crash
                    problems.append(f"{path}: cannot be read ({e})")
                    continue
                if rows is not None and rows != entry["rows"]:
                    problems.append(f"{path}: {rows} rows, the manifest says {entry['rows']}")
    return problems


# --- the command ------------------------------------------------------------------------------
