"""Review of the audit trail by data managers (EMA guideline on computerised systems §6.2, EMA-6).

The worklist flags the audit records worth a second look:

- ``late_entry``: an item value entered more than ``AUDIT_LATE_ENTRY_DAYS`` days after its
  visit's target date (the subject's inclusion date + the visit's day, on the site's calendar);
- ``changed_after_sdv``: a change of a value that had been verified; exact, because the change
  and the verification it cleared are recorded together (same request, same item, the system
  reason of ``ecrf.review.sdv.CLEARED_REASON``);
- ``changed_after_signature``: a change to the data of a visit (or of the casebook) recorded after
  a signature of that visit or of the whole casebook;
- ``many_changes``: every change of one item after its ``AUDIT_MANY_CHANGES``-th;
- ``out_of_hours``: data entered outside ``AUDIT_WORKING_HOURS`` or on ``AUDIT_WEEKEND_DAYS``,
  site local time.

Only what people did is flagged: the rows the system writes as a consequence (a derived value
recalculated, a form status following its data: the system reason) would repeat each flag.

The flags are computed from the audit trail itself each time (it is the record; nothing to keep
in step). A data manager marks a flagged record as reviewed with a comment: an ``AuditReview``
row, insert-only and itself audited, after which the record shows as reviewed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from babel.dates import format_date
from flask import current_app
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import aliased

from ecrf.audit import viewer
from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import SYSTEM_CODE
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.database import utcnow
from ecrf.exports.models import AuditReview
from ecrf.extensions import db
from ecrf.review.sdv import CLEARED_REASON
from ecrf.study import settings
from ecrf.study.models import Site, Subject

FLAGS = {
    "late_entry": _l("Late entry"),
    "changed_after_sdv": _l("Changed after SDV"),
    "changed_after_signature": _l("Changed after signature"),
    "many_changes": _l("Many changes to one item"),
    "out_of_hours": _l("Outside working hours"),
}
STATES = {"to_review": _l("To review"), "reviewed": _l("Reviewed"), "all": _l("All")}
COMMENT_MAX = 2000

_ITEM_ENTRY = ("item.create", "item.update")
_DATA_CHANGE = ("item.create", "item.update", "form.create", "form.update")


class ReviewError(ValueError):
    """A review that cannot be recorded (not flagged, already reviewed, no comment)."""


@dataclass(frozen=True)
class Flag:
    """One audit record flagged for one reason; ``detail`` says why, in data."""

    seq: int
    flag: str
    detail: tuple = field(default=(), compare=False)

    def explain(self) -> str:
        d = dict(self.detail)
        if self.flag == "late_entry":
            return _("Entered %(days)s days after the visit's target date %(target)s (more than "
                     "%(limit)s).", days=d["days"], target=d["target"], limit=d["limit"])
        if self.flag == "changed_after_sdv":
            return _("The value had been verified against the source; this change cleared the "
                     "verification.")
        if self.flag == "changed_after_signature":
            scope = (_("visit %(visit)s", visit=d["visit"]) if d["visit"]
                     else _("the whole casebook"))
            return _("Changed after the signature of %(scope)s (audit record #%(seq)s).",
                     scope=scope, seq=d["signed_seq"])
        if self.flag == "many_changes":
            return _("Change %(n)s of this item (more than %(limit)s).", n=d["n"], limit=d["limit"])
        start, end = d["hours"]
        return _("Entered on %(day)s at %(time)s site time, outside working hours (%(start)s:00 to "
                 "%(end)s:00 on working days).", day=d["day"], time=d["time"],
                 start=f"{start:02d}", end=f"{end:02d}")


def _site(stmt: sa.Select, site: str | None, table=AuditRecord) -> sa.Select:
    return stmt if not site else stmt.where(table.site == site)


def _by_people(table=AuditRecord) -> sa.ColumnElement[bool]:
    """Rows not written by the system on its own account (derived values, form status)."""
    return sa.or_(table.reason_code.is_(None), table.reason_code != SYSTEM_CODE)


def _visit_days() -> dict[str, int]:
    """Target day from inclusion of each scheduled visit (visits without one are never late)."""
    schedule = current_app.extensions["ecrf.registry"].schedule
    return {v.key: v.day for v in schedule.visits if v.day is not None and not v.unscheduled}


def is_out_of_hours(moment: datetime, tz: str) -> bool:
    """Outside the site's working hours, in its local time (DST included)?"""
    local = moment.astimezone(ZoneInfo(tz))
    start, end = settings.AUDIT_WORKING_HOURS
    return local.weekday() in settings.AUDIT_WEEKEND_DAYS or not start <= local.hour < end


def _by_time(site: str | None, seq: int | None) -> Iterator[Flag]:
    """Late entries and entries outside working hours: site calendars and clocks, so read in
    Python, one batch of item rows at a time."""
    days, limit = _visit_days(), settings.AUDIT_LATE_ENTRY_DAYS
    hours = tuple(settings.AUDIT_WORKING_HOURS)
    stmt = (sa.select(AuditRecord.seq, AuditRecord.action, AuditRecord.recorded_at,
                      AuditRecord.visit, Site.timezone, Subject.inclusion_date)
            .outerjoin(Site, Site.code == AuditRecord.site)
            .outerjoin(Subject, Subject.code == AuditRecord.subject)
            .where(AuditRecord.entity_type == "item", AuditRecord.action.in_(_ITEM_ENTRY),
                   _by_people()))
    stmt = _site(stmt, site)
    if seq is not None:
        stmt = stmt.where(AuditRecord.seq == seq)
    locale = get_locale() or "en"
    for row in db.session.execute(stmt.execution_options(yield_per=viewer.STREAM_BATCH)):
        if not row.timezone:
            continue
        local = row.recorded_at.astimezone(ZoneInfo(row.timezone))
        if is_out_of_hours(row.recorded_at, row.timezone):
            yield Flag(row.seq, "out_of_hours", (
                ("day", format_date(local.date(), "EEEE d MMMM y", locale=locale)),
                ("time", local.strftime("%H:%M ") + viewer._offset(local)), ("hours", hours)))
        day = days.get((row.visit or "").split("#")[0])
        if row.action == "item.create" and day is not None and row.inclusion_date is not None:
            target = date.fromordinal(row.inclusion_date.toordinal() + day)
            late = (local.date() - target).days
            if late > limit:
                yield Flag(row.seq, "late_entry", (("days", late), ("target", target.isoformat()),
                                                   ("limit", limit)))


def _changed_after_sdv(site: str | None, seq: int | None) -> Iterator[Flag]:
    """From the few verifications cleared by the system to the change recorded with each (the
    item index), rather than a look-up of every change."""
    cleared, change = aliased(AuditRecord), aliased(AuditRecord)
    stmt = sa.select(change.seq).distinct().select_from(cleared).join(change, sa.and_(
        change.subject == cleared.subject, change.form == cleared.form,
        change.item == cleared.item, change.visit == cleared.visit,
        change.request_id == cleared.request_id)).where(
        cleared.entity_type == "sdv", cleared.action == "sdv.update",
        cleared.field == "verified", cleared.reason_code == SYSTEM_CODE,
        cleared.reason_text == CLEARED_REASON.text,
        change.entity_type == "item", change.action == "item.update", _by_people(change))
    stmt = _site(stmt, site, change)
    if seq is not None:
        stmt = stmt.where(change.seq == seq)
    for found in db.session.scalars(stmt):
        yield Flag(found, "changed_after_sdv")


def _changed_after_signature(site: str | None, seq: int | None) -> Iterator[Flag]:
    """From each signature (one row per signature: its content hash) to the later changes of
    the subject's data it covers (the subject index); the latest signature before each."""
    signed, change = aliased(AuditRecord), aliased(AuditRecord)
    stmt = (sa.select(change.seq, sa.func.max(signed.seq).label("signed_seq"))
            .select_from(signed).join(change, sa.and_(
                change.subject == signed.subject, change.seq > signed.seq,
                sa.or_(signed.visit.is_(None), change.visit == signed.visit)))
            .where(signed.entity_type == "signature", signed.action == "signature.create",
                   signed.field == "content_hash",
                   change.entity_type.in_(("item", "form")), change.action.in_(_DATA_CHANGE),
                   _by_people(change))
            .group_by(change.seq))
    stmt = _site(stmt, site, change)
    if seq is not None:
        stmt = stmt.where(change.seq == seq)
    rows = db.session.execute(stmt).all()
    scopes = dict(db.session.execute(sa.select(AuditRecord.seq, AuditRecord.visit).where(
        AuditRecord.seq.in_({r.signed_seq for r in rows}))).all()) if rows else {}
    for row in rows:
        yield Flag(row.seq, "changed_after_signature",
                   (("signed_seq", row.signed_seq), ("visit", scopes.get(row.signed_seq))))


def _many_changes(site: str | None, seq: int | None) -> Iterator[Flag]:
    limit = settings.AUDIT_MANY_CHANGES
    number = sa.func.row_number().over(
        partition_by=(AuditRecord.subject, AuditRecord.visit, AuditRecord.form, AuditRecord.item),
        order_by=AuditRecord.seq).label("n")
    changes = _site(sa.select(AuditRecord.seq, number).where(
        AuditRecord.entity_type == "item", AuditRecord.action == "item.update", _by_people()),
        site).subquery()
    stmt = sa.select(changes.c.seq, changes.c.n).where(changes.c.n > limit)
    if seq is not None:
        stmt = stmt.where(changes.c.seq == seq)
    for row in db.session.execute(stmt):
        yield Flag(row.seq, "many_changes", (("n", row.n), ("limit", limit)))


DETECTORS = (_by_time, _changed_after_sdv, _changed_after_signature, _many_changes)
_ORDER = {name: n for n, name in enumerate(FLAGS)}


def flagged(site: str | None = None, seq: int | None = None) -> list[Flag]:
    """Every flagged (record, reason), newest record first; of one site or one record."""
    found = [f for detect in DETECTORS for f in detect(site, seq)]
    return sorted(found, key=lambda f: (-f.seq, _ORDER[f.flag]))


def reviews(keys: set[tuple[int, str]] | None = None) -> dict[tuple[int, str], AuditReview]:
    """The reviews recorded, by (seq, flag); only those of ``keys`` when given."""
    stmt = sa.select(AuditReview)
    if keys is not None:
        if not keys:
            return {}
        stmt = stmt.where(AuditReview.seq.in_({seq for seq, _flag in keys}))
    return {(r.seq, r.flag): r for r in db.session.scalars(stmt)}


@dataclass
class Row:
    flag: Flag
    entry: viewer.Entry
    review: AuditReview | None

    @property
    def label(self) -> str:
        return str(FLAGS[self.flag.flag])


@dataclass
class Worklist:
    page: viewer.Page
    #: per flag: (to review, reviewed), over the whole worklist (its site, if one is chosen)
    counts: dict[str, tuple[int, int]]


def worklist(*, state: str = "to_review", flag: str | None = None, site: str | None = None,
             number: int = 1, per_page: int = 50) -> Worklist:
    """One page of the flagged records (to review, reviewed or all; one flag or all)."""
    found = flagged(site)
    done = set(reviews())
    to_review = Counter(f.flag for f in found if (f.seq, f.flag) not in done)
    reviewed = Counter(f.flag for f in found if (f.seq, f.flag) in done)
    counts = {name: (to_review[name], reviewed[name]) for name in FLAGS}
    shown = [f for f in found if (flag is None or f.flag == flag)
             and (state == "all" or ((f.seq, f.flag) in done) == (state == "reviewed"))]
    part = shown[(number - 1) * per_page:number * per_page]
    entries = viewer.entries_by_seq({f.seq for f in part})
    done_here = reviews({(f.seq, f.flag) for f in part})
    rows = [Row(f, entries[f.seq], done_here.get((f.seq, f.flag))) for f in part]
    return Worklist(viewer.Page(rows, number, per_page, len(shown)), counts)


def review(actor: Actor, seq: int, flag: str, comment: str) -> AuditReview:
    """Record that a flagged audit record was reviewed, by whom, when, with what comment."""
    comment = (comment or "").strip()
    if flag not in FLAGS:
        raise ReviewError(_("Unknown flag."))
    if not comment:
        raise ReviewError(_("Write a comment: what was checked and what was found."))
    if len(comment) > COMMENT_MAX:
        raise ReviewError(_("The comment is longer than %(n)s characters.", n=COMMENT_MAX))
    if not any(f.flag == flag for f in flagged(seq=seq)):
        raise ReviewError(_("Audit record #%(seq)s is not flagged as %(flag)s.", seq=seq,
                            flag=FLAGS[flag]))
    if reviews({(seq, flag)}).get((seq, flag)) is not None:
        raise ReviewError(_("Audit record #%(seq)s was already reviewed.", seq=seq))
    try:
        with unit_of_work(actor):
            done = AuditReview(seq=seq, flag=flag, reviewer_id=actor.user_id,
                               reviewed_at=utcnow(), comment=comment)
            db.session.add(done)
    except sa.exc.IntegrityError:  # reviewed by someone else a moment ago
        raise ReviewError(_("Audit record #%(seq)s was already reviewed.", seq=seq)) from None
    return done
