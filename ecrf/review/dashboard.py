"""What the study home shows: enrolment against the target, and forms missing or overdue per visit
window (open queries by age, the SDV backlog and signatures come from their own services). Each
figure comes with the list behind it (the pages link to it).

Plain functions of the database and a list of site ids (None: every site), so the same numbers
serve every role within the sites it may see.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from html import escape

import sqlalchemy as sa

from ecrf.casebook.models import FormInstance, FormStatus
from ecrf.extensions import db
from ecrf.study import settings
from ecrf.study.models import Site, Subject, SubjectStatus
from ecrf.study.schedule import ended_visits

#: subjects whose visits are expected (a screen failure or a removed subject has no follow-up)
FOLLOWED = (SubjectStatus.INCLUDED.value, SubjectStatus.COMPLETED.value,
            SubjectStatus.WITHDRAWN.value)


def _in_sites(stmt, column, site_ids):
    return stmt if site_ids is None else stmt.where(column.in_(site_ids))


# --- enrolment ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrolment:
    target: int
    by_site: list[tuple[Site, int]]
    #: (inclusion date, site code) of every included subject, in date order
    inclusions: list[tuple[date, str]]

    @property
    def total(self) -> int:
        return sum(n for _site, n in self.by_site)


def enrolment(site_ids: set[int] | None) -> Enrolment:
    stmt = _in_sites(sa.select(Subject.inclusion_date, Site.code).join(Site)
                     .where(Subject.inclusion_date.is_not(None)), Subject.site_id, site_ids)
    inclusions = sorted((day, code) for day, code in db.session.execute(stmt))
    counts = Counter(code for _day, code in inclusions)
    sites = db.session.scalars(_in_sites(sa.select(Site).order_by(Site.code), Site.id, site_ids))
    return Enrolment(settings.STUDY["target_enrolment"], [(s, counts[s.code]) for s in sites],
                     inclusions)


def enrolment_svg(data: Enrolment, title: str, description: str, *, width: int = 560,
                  height: int = 220) -> str:
    """Cumulative inclusions over time, one line per site and the total, against the target."""
    left, right, top, bottom = 40, 70, 16, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    days = [d for d, _ in data.inclusions]
    start = min(days) if days else date.today()
    end = max(date.today(), start + timedelta(days=1))
    span = (end - start).days or 1
    top_value = max(data.target, len(days), 1)

    def x(day: date) -> float:
        return left + plot_w * (day - start).days / span

    def y(n: float) -> float:
        return top + plot_h * (1 - n / top_value)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="enrolment-plot" role="img" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'aria-labelledby="enrolment-title enrolment-desc">',
             f'<title id="enrolment-title">{escape(title)}</title>',
             f'<desc id="enrolment-desc">{escape(description)}</desc>']
    for n in sorted({0, top_value // 2, data.target, top_value}):
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(n):.1f}" '
                     f'y2="{y(n):.1f}"/><text class="axis" x="{left - 6}" y="{y(n) + 4:.1f}" '
                     f'text-anchor="end">{n}</text>')
    parts.append(f'<line class="target" x1="{left}" x2="{width - right}" y1="{y(data.target):.1f}" '
                 f'y2="{y(data.target):.1f}"/>')
    for day in (start, end):
        parts.append(f'<text class="axis" x="{x(day):.1f}" y="{height - 14}" '
                     f'text-anchor="middle">{day.isoformat()}</text>')
    series = {"all": days, **{site.code: [d for d, c in data.inclusions if c == site.code]
                              for site, n in data.by_site if n}}
    for n, (name, points) in enumerate(series.items()):
        if not points:
            continue
        steps, count = [f"{x(start):.1f},{y(0):.1f}"], 0
        for day in points:
            steps.append(f"{x(day):.1f},{y(count):.1f}")
            count += 1
            steps.append(f"{x(day):.1f},{y(count):.1f}")
        steps.append(f"{x(end):.1f},{y(count):.1f}")
        cls = "total" if name == "all" else f"site site-{n % 6}"
        parts.append(f'<polyline class="{cls}" points="{" ".join(steps)}"/>')
        parts.append(f'<text class="axis" x="{width - right + 4}" y="{y(count) + 4:.1f}">'
                     f'{escape(name)} {count}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- forms missing or overdue ------------------------------------------------------------------


@dataclass(frozen=True)
class MissingForm:
    subject: Subject
    visit_key: str
    crf_key: str
    window: tuple[date, date]
    #: "overdue" (the window has closed) or "due" (the window is open)
    state: str
    #: "not started" or "incomplete"
    status: str


def missing_forms(schedule, site_ids: set[int] | None, today: date) -> list[MissingForm]:
    """Every form the schedule expects by today that is not complete (nor marked not done), for
    subjects followed; visits after a recorded death are not expected (as on the casebook).

    One pass over the subjects' first-repeat forms, as tuples; the visits' windows are offsets
    worked out once, not per subject."""
    followed = _in_sites(sa.select(Subject.id).where(Subject.inclusion_date.is_not(None),
                                                     Subject.status.in_(FOLLOWED)),
                         Subject.site_id, site_ids)
    subjects = db.session.scalars(sa.select(Subject).where(Subject.id.in_(followed))
                                  .order_by(Subject.code)).all()
    if not subjects:
        return []
    finished = (FormStatus.COMPLETE.value, FormStatus.NOT_DONE.value)
    not_started = FormStatus.NOT_STARTED.value
    done: dict[tuple, str] = {
        (subject_id, visit, crf): status for subject_id, visit, crf, status in db.session.execute(
            sa.select(FormInstance.subject_id, FormInstance.visit_key, FormInstance.crf_key,
                      FormInstance.status).where(FormInstance.subject_id.in_(followed),
                                                 FormInstance.visit_repeat == 1))}
    deaths = _death_dates(followed)
    offsets = [(visit, timedelta(days=visit.day - visit.window_before),
                timedelta(days=visit.day + visit.window_after))
               for visit in schedule.visits if visit.day is not None and visit.forms]
    found = []
    for subject in subjects:
        d0, subject_id = subject.inclusion_date, subject.id
        ended = ended_visits(schedule.visits, d0, deaths.get(subject_id)) \
            if subject_id in deaths else ()
        for visit, opens, closes in offsets:
            start = d0 + opens
            if start > today or visit.key in ended:
                continue
            for crf in visit.forms:
                status = done.get((subject_id, visit.key, crf), not_started)
                if status in finished:
                    continue
                end = d0 + closes
                found.append(MissingForm(subject, visit.key, crf, (start, end),
                                         "overdue" if today > end else "due", status))
    return found


def _death_dates(subject_ids) -> dict[int, date]:
    from ecrf.casebook.models import ItemValue

    rows = db.session.execute(
        sa.select(FormInstance.subject_id, ItemValue.value_date).join(ItemValue)
        .where(FormInstance.subject_id.in_(subject_ids), FormInstance.crf_key == "end_of_study",
               ItemValue.item_key == "death_date", ItemValue.value_date.is_not(None)))
    return {subject_id: day for subject_id, day in rows}


def missing_by_visit(rows: list[MissingForm], schedule) -> list[tuple[str, int, int]]:
    """(visit key, due, overdue) in schedule order, for visits with something missing."""
    due, overdue = Counter(), Counter()
    for row in rows:
        (overdue if row.state == "overdue" else due)[row.visit_key] += 1
    return [(v.key, due[v.key], overdue[v.key]) for v in schedule.visits
            if due[v.key] or overdue[v.key]]
