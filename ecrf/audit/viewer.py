"""The audit trail as people read it (21 CFR 11.10(e), EMA guideline §6.2): filtered by site,
subject, visit, form or item and by user, action and UTC dates; in pages; in words (actions,
reasons, the old and new values, times in UTC and in the site's time with its offset); and as a
CSV or JSON-lines download of any filtered view, streamed row by row from the database.

A download is itself an audit record (``audit.exported``), written before the first byte is
sent, with its filters and the last seq it covers: the file holds exactly the rows of the
filtered view up to that seq, so it can be cut again and compared.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from ecrf.audit.models import AuditRecord, AuditValue
from ecrf.audit.reasons import REASON_CODES, SYSTEM_CODE, Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.extensions import db
from ecrf.study.models import Site

#: the actions as users read them; an action not listed is shown as its code
ACTION_LABELS = {
    "item.create": _l("Value entered"),
    "item.update": _l("Value changed"),
    "form.create": _l("Form started"),
    "form.update": _l("Form changed"),
    "check.confirmed": _l("Soft check confirmed"),
    "subject.create": _l("Subject enrolled"),
    "subject.update": _l("Subject changed"),
    "screening.create": _l("Screening log entry added"),
    "screening.update": _l("Screening log entry changed"),
    "site.create": _l("Site created"),
    "site.update": _l("Site changed"),
    "user.create": _l("Account created"),
    "user.update": _l("Account changed"),
    "grant.create": _l("Role granted"),
    "grant.update": _l("Role grant changed"),
    "query.create": _l("Query raised"),
    "query.update": _l("Query changed"),
    "query_message.create": _l("Query message written"),
    "query.answer": _l("Query answered"),
    "query.close": _l("Query closed"),
    "query.cancel": _l("Query cancelled"),
    "query.reopen": _l("Query re-opened"),
    "query.auto_close": _l("Query closed by the system"),
    "sdv.create": _l("Source data verification recorded"),
    "sdv.update": _l("Source data verification changed"),
    "sdv_plan.create": _l("SDV plan set"),
    "sdv_plan.update": _l("SDV plan changed"),
    "delegation.create": _l("Delegation log line added"),
    "delegation.update": _l("Delegation log line changed"),
    "signature.create": _l("Electronic signature"),
    "closure.create": _l("Freeze and lock state created"),
    "closure.update": _l("Freeze and lock state changed"),
    "closure.freeze": _l("Frozen"),
    "closure.unfreeze": _l("Unfrozen"),
    "closure.lock": _l("Locked"),
    "closure.unlock": _l("Unlocked"),
    "auth.login": _l("Logged in"),
    "auth.login_failed": _l("Failed login"),
    "auth.logout": _l("Logged out"),
    "auth.timeout": _l("Session timed out"),
    "auth.session_ended": _l("Session ended"),
    "auth.locked": _l("Account locked"),
    "auth.unlocked": _l("Account unlocked"),
    "auth.password_changed": _l("Password changed"),
    "auth.password_reset": _l("Password reset"),
    "auth.account_created": _l("Account created"),
    "auth.signature_failed": _l("Failed signing"),
    "auth.second_factor_due": _l("Password accepted, second factor due"),
    "auth.second_factor_enrolled": _l("Second factor set"),
    "auth.second_factor_failed": _l("Wrong second-factor code"),
    "auth.second_factor_reset": _l("Second factor removed"),
    "access.denied": _l("Access refused"),
    "study.definition_changed": _l("Study definition changed"),
    "audit.redact": _l("Value redacted"),
    "audit.exported": _l("Audit trail downloaded"),
    "audit_review.create": _l("Audit record reviewed"),
    "audit_review.update": _l("Audit review changed"),
    "signature.update": _l("Electronic signature changed"),
    "query_message.update": _l("Query message changed"),
    "api_token.create": _l("API token created"),
    "api_token.update": _l("API token changed"),
    "export.requested": _l("Export requested"),
    "export.done": _l("Export done"),
    "export.failed": _l("Export failed"),
    "export.downloaded": _l("Export downloaded"),
    "backup.create": _l("Database backed up"),
    "validate.install": _l("Installation checked"),
}
EXPORT_ACTION = "audit.exported"
EXPORT_REASON = Reason.system("audit trail downloaded")
#: rows fetched from the database per round trip while streaming a download
STREAM_BATCH = 1000
#: characters collected before a piece of a download is sent
CHUNK_CHARS = 64 * 1024


def action_label(code: str) -> str:
    label = ACTION_LABELS.get(code)
    return str(label) if label is not None else code


def reason_label(code: str | None) -> str:
    if not code:
        return ""
    if code == SYSTEM_CODE:
        return _("System")
    label = REASON_CODES.get(code)
    return str(label) if label is not None else code


class Words:
    """Action and reason labels in the request's language, each translated once (a download
    reads thousands of rows with a few dozen distinct codes)."""

    def __init__(self):
        self._actions: dict[str, str] = {}
        self._reasons: dict[str | None, str] = {}

    def action(self, code: str) -> str:
        if code not in self._actions:
            self._actions[code] = action_label(code)
        return self._actions[code]

    def reason(self, code: str | None) -> str:
        if code not in self._reasons:
            self._reasons[code] = reason_label(code)
        return self._reasons[code]


# --- filters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What a view of the trail shows: a scope (site, subject, visit, form, item), who, which
    action, and a range of UTC dates (both included)."""

    site: str | None = None
    subject: str | None = None
    visit: str | None = None
    form: str | None = None
    item: str | None = None
    user: str | None = None
    action: str | None = None
    date_from: date | None = None
    date_to: date | None = None

    #: the longest value each text filter can match (the audit trail's column sizes)
    LENGTHS = {"site": 8, "subject": 16, "visit": 32, "form": 64, "item": 64, "user": 64,
               "action": 48}

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> tuple[Filters, list[str]]:
        """Filters from a query string; a malformed date is left out and said in ``errors``."""
        values: dict = {}
        errors: list[str] = []
        for name, length in cls.LENGTHS.items():
            text = (args.get(name) or "").strip()
            if text:
                values[name] = text[:length]
        for name in ("date_from", "date_to"):
            text = (args.get(name) or "").strip()
            if not text:
                continue
            try:
                values[name] = date.fromisoformat(text)
            except ValueError:
                errors.append(_("%(value)s is not a date (YYYY-MM-DD).", value=text[:20]))
        found = cls(**values)
        if found.date_from and found.date_to and found.date_from > found.date_to:
            errors.append(_("The first date is after the last date."))
        return found, errors

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        t = AuditRecord.__table__.c
        where = [getattr(t, name) == getattr(self, name)
                 for name in ("site", "subject", "visit", "form", "item", "action")
                 if getattr(self, name)]
        if self.user:
            where.append(t.username == self.user)
        if self.date_from:
            where.append(t.recorded_at >= datetime.combine(self.date_from, time(), UTC))
        if self.date_to:
            where.append(t.recorded_at < datetime.combine(self.date_to + timedelta(days=1),
                                                          time(), UTC))
        return where

    def as_args(self) -> dict[str, str]:
        """The filters set, as query-string arguments (links keep the view)."""
        return {f.name: (v.isoformat() if isinstance(v, date) else v)
                for f in fields(self) if (v := getattr(self, f.name))}

    def describe(self) -> str:
        """The scope of the view in words (the page's heading)."""
        words = {"site": lambda v: _("site %(code)s", code=v),
                 "subject": lambda v: _("subject %(code)s", code=v),
                 "visit": lambda v: _("visit %(code)s", code=v),
                 "form": lambda v: _("form %(code)s", code=v),
                 "item": lambda v: _("item %(code)s", code=v)}
        parts = [say(v) for key, say in words.items() if (v := getattr(self, key))]
        return ", ".join(parts) if parts else _("the whole study")


# --- rows --------------------------------------------------------------------------------------


def _rows() -> sa.Select:
    """The audit rows with their kept values, as plain columns (no ORM objects to hold)."""
    t, v = AuditRecord.__table__, AuditValue.__table__
    return sa.select(
        t.c.seq, t.c.recorded_at, t.c.username, t.c.role, t.c.actor_site, t.c.action,
        t.c.entity_type, t.c.entity_id, t.c.site, t.c.subject, t.c.visit, t.c.form, t.c.item,
        t.c.field, t.c.old_digest, t.c.new_digest, t.c.reason_code, t.c.reason_text,
        t.c.request_id, v.c.old_value, v.c.new_value, v.c.redacted_seq,
    ).select_from(t.outerjoin(v, v.c.seq == t.c.seq))


def site_zones() -> dict[str, str]:
    """Each site's time zone by code (a few rows)."""
    return dict(db.session.execute(sa.select(Site.code, Site.timezone)).all())


def _offset(moment: datetime) -> str:
    z = moment.strftime("%z")
    return f"{z[:3]}:{z[3:]}"


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def local_text(moment: datetime, tz: str) -> str:
    """A UTC time in a site's zone, with its offset: 2026-03-29 03:10:05 +02:00."""
    local = moment.astimezone(ZoneInfo(tz))
    return local.strftime("%Y-%m-%d %H:%M:%S ") + _offset(local)


@dataclass
class Entry:
    """One audit row in words."""

    seq: int
    recorded_at: datetime
    utc: str
    local: str
    timezone: str
    username: str
    role: str
    actor_site: str
    action: str
    action_label: str
    entity_type: str
    entity_id: str
    site: str
    subject: str
    visit: str
    form: str
    item: str
    field: str
    old_value: str | None
    new_value: str | None
    #: the seq of the redaction that masked a value of this row, if any
    redacted_by: int | None
    old_redacted: bool
    new_redacted: bool
    reason_code: str
    reason_label: str
    reason_text: str

    @classmethod
    def of(cls, row, zones: Mapping[str, str], words: Words) -> Entry:
        tz = zones.get(row.site or "") or zones.get(row.actor_site or "") or ""
        masked = row.redacted_seq is not None
        return cls(
            seq=row.seq, recorded_at=row.recorded_at, utc=utc_text(row.recorded_at),
            local=local_text(row.recorded_at, tz) if tz else "", timezone=tz,
            username=row.username, role=row.role or "", actor_site=row.actor_site or "",
            action=row.action, action_label=words.action(row.action),
            entity_type=row.entity_type, entity_id=row.entity_id or "", site=row.site or "",
            subject=row.subject or "", visit=row.visit or "", form=row.form or "",
            item=row.item or "", field=row.field or "",
            old_value=row.old_value, new_value=row.new_value, redacted_by=row.redacted_seq,
            old_redacted=masked and row.old_value is None and row.old_digest is not None,
            new_redacted=masked and row.new_value is None and row.new_digest is not None,
            reason_code=row.reason_code or "", reason_label=words.reason(row.reason_code),
            reason_text=row.reason_text or "",
        )

    @property
    def where(self) -> str:
        """Subject (or site), visit, form, item; otherwise the entity the row is about."""
        path = [p for p in (self.subject or self.site, self.visit, self.form, self.item) if p]
        return " · ".join(path) if path else f"{self.entity_type} {self.entity_id}".strip()


@dataclass
class Page:
    """One page of a list, with what the pager needs."""

    items: list
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def prev_num(self) -> int:
        return self.page - 1

    @property
    def next_num(self) -> int:
        return self.page + 1


def page(filters: Filters, number: int, per_page: int) -> Page:
    """One page of the filtered trail, newest first (offset on seq)."""
    where = filters.conditions()
    if where:
        total = db.session.scalar(sa.select(sa.func.count()).select_from(AuditRecord.__table__)
                                  .where(*where))
    else:  # seq has no gaps and no row is ever removed (the chain proves both): no count needed
        total = head_seq()
    rows = db.session.execute(_rows().where(*where).order_by(AuditRecord.__table__.c.seq.desc())
                              .limit(per_page).offset((number - 1) * per_page)).all()
    zones, words = site_zones(), Words()
    return Page([Entry.of(r, zones, words) for r in rows], number, per_page, total)


def entries_by_seq(seqs: Iterable[int]) -> dict[int, Entry]:
    seqs = list(seqs)
    if not seqs:
        return {}
    zones, words = site_zones(), Words()
    rows = db.session.execute(_rows().where(AuditRecord.__table__.c.seq.in_(seqs))).all()
    return {r.seq: Entry.of(r, zones, words) for r in rows}


def action_choices(current: str | None = None) -> list[tuple[str, str]]:
    """The action filter's choices, in words (no scan of the trail): the known actions, and the
    one filtered on if it is not among them."""
    codes = set(ACTION_LABELS) | ({current} if current else set())
    return sorted(((c, action_label(c)) for c in codes), key=lambda p: (p[1].lower(), p[0]))


def head_seq() -> int:
    return db.session.scalar(sa.select(sa.func.max(AuditRecord.seq))) or 0


def stream(filters: Filters, up_to_seq: int) -> Iterator[Entry]:
    """The filtered rows up to ``up_to_seq`` in chain order, fetched in batches as they are read."""
    t = AuditRecord.__table__
    stmt = (_rows().where(*filters.conditions(), t.c.seq <= up_to_seq).order_by(t.c.seq)
            .execution_options(yield_per=STREAM_BATCH))
    zones, words = site_zones(), Words()
    for row in db.session.execute(stmt):
        yield Entry.of(row, zones, words)


# --- downloads ---------------------------------------------------------------------------------

#: the columns of a download, in order (CSV header and JSON keys)
EXPORT_COLUMNS = (
    "seq", "recorded_at_utc", "recorded_at_local", "site_timezone", "username", "role",
    "actor_site", "action", "action_label", "entity_type", "entity_id", "site", "subject",
    "visit", "form", "item", "field", "old_value", "new_value", "redacted_by", "reason_code",
    "reason", "reason_text",
)
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}


_SAME_NAME = tuple(k for k in EXPORT_COLUMNS if k in {f.name for f in fields(Entry)})


def export_record(entry: Entry) -> dict:
    return {
        **{k: getattr(entry, k) for k in _SAME_NAME},
        "recorded_at_utc": entry.recorded_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "recorded_at_local": entry.local, "site_timezone": entry.timezone,
        "reason": entry.reason_label,
    }


#: a cell a spreadsheet would run as a formula starts with one of these (CWE-1236)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str:
    if value is None:
        return ""
    text = str(value)
    if text.startswith(_FORMULA_START):
        try:
            float(text)
        except ValueError:
            return "'" + text  # shown, not run; the JSON-lines download keeps it as entered
    return text


def _chunks(lines: Iterable[str]) -> Iterator[str]:
    """Lines gathered into pieces of about CHUNK_CHARS: few, bounded writes to the client."""
    pending: list[str] = []
    size = 0
    for line in lines:
        pending.append(line)
        size += len(line)
        if size >= CHUNK_CHARS:
            yield "".join(pending)
            pending, size = [], 0
    if pending:
        yield "".join(pending)


def csv_lines(entries: Iterable[Entry]) -> Iterator[str]:
    """A CSV file (UTF-8 with a byte order mark, for spreadsheets), one line per row."""
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\r\n")

    def line(cells) -> str:
        buffer.seek(0)
        buffer.truncate()
        out.writerow(cells)
        return buffer.getvalue()

    yield "\ufeff" + line(EXPORT_COLUMNS)
    for entry in entries:
        record = export_record(entry)
        yield line([_cell(record[k]) for k in EXPORT_COLUMNS])


def jsonl_lines(entries: Iterable[Entry]) -> Iterator[str]:
    """One JSON object per line, keys in the order of EXPORT_COLUMNS, values as recorded."""
    for entry in entries:
        record = export_record(entry)
        yield json.dumps({k: record[k] for k in EXPORT_COLUMNS}, ensure_ascii=False) + "\n"


def download(actor: Actor, fmt: str, filters: Filters) -> Iterator[str]:
    """Record the download, then return the file as a lazy sequence of text pieces.

    The record is committed before this returns, so a download is audited even if the client
    stops reading; the file covers the filtered rows up to the head read here.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    up_to = head_seq()
    with unit_of_work(actor, EXPORT_REASON) as uow:
        uow.record(EXPORT_ACTION, "audit_trail", None, field=fmt,
                   new=json.dumps({"filters": filters.as_args(), "up_to_seq": up_to},
                                  sort_keys=True))
    lines = csv_lines if fmt == "csv" else jsonl_lines
    return _chunks(lines(stream(filters, up_to)))


def file_name(fmt: str, filters: Filters) -> str:
    scope = "-".join(v for v in (filters.site, filters.subject, filters.visit, filters.form,
                                 filters.item) if v) or "study"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in scope)
    return f"audit-trail-{safe}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{fmt}"
