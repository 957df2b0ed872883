"""The primary endpoint, derived from the daily SOFA totals by its setting, and the SOFA
trajectory as a server-rendered SVG (no JavaScript, no external library)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from html import escape

from ecrf.study import settings

Series = Mapping[int, int | None]  # study day -> SOFA total (None: not computable)


@dataclass(frozen=True)
class Endpoint:
    kind: str
    day: int
    #: the endpoint's value: a number for "value"/"change", True/False for "response";
    #: None when the data needed are missing
    value: int | bool | None
    text: str


def primary_endpoint(series: Series, definition: Mapping | None = None) -> Endpoint:
    d = dict(definition or settings.PRIMARY_ENDPOINT)
    kind, day = d["kind"], int(d["day"])
    d0, at_day = series.get(0), series.get(day)
    if kind == "value":
        text = f"SOFA at D{day}: " + ("not available" if at_day is None else str(at_day))
        return Endpoint(kind, day, at_day, text)
    if kind == "change":
        if d0 is None or at_day is None:
            return Endpoint(kind, day, None, f"Change in SOFA D0 to D{day}: not available")
        change = at_day - d0
        return Endpoint(kind, day, change, f"Change in SOFA D0 to D{day}: {change:+d}")
    if kind == "response":
        points = int(d["points"])
        if d0 is None:
            return Endpoint(kind, day, None, "SOFA response: D0 not available")
        reached = [t for k, t in series.items() if 0 < k <= day and t is not None]
        if any(d0 - t >= points for t in reached):
            return Endpoint(kind, day, True, f"SOFA response (-{points} by D{day}): yes")
        if series.get(day) is None and len(reached) < day:
            return Endpoint(kind, day, None, f"SOFA response (-{points} by D{day}): not available")
        return Endpoint(kind, day, False, f"SOFA response (-{points} by D{day}): no")
    raise ValueError(f"unknown primary endpoint kind {kind!r}")


def sofa_series(subject) -> dict[int, int | None]:
    """The SOFA total of each daily visit entered for the subject (D0, D1, ...)."""
    import sqlalchemy as sa

    from ecrf.casebook.models import FormInstance, ItemValue
    from ecrf.extensions import db

    rows = db.session.execute(
        sa.select(FormInstance.visit_key, ItemValue.value_int)
        .join(ItemValue, ItemValue.form_instance_id == FormInstance.id)
        .where(FormInstance.subject_id == subject.id, FormInstance.crf_key == "sofa_daily",
               FormInstance.visit_repeat == 1, ItemValue.item_key == "sofa_total")).all()
    series = {}
    for visit, total in rows:
        if visit.startswith("D") and visit[1:].isdigit():
            series[int(visit[1:])] = total
    return dict(sorted(series.items()))


def svg_plot(series: Series, endpoint: Endpoint, *, width: int = 560, height: int = 220,
             title: str = "SOFA total by study day") -> str:
    """An accessible SVG line plot: D0 marked, the endpoint day marked with its value."""
    last_day = max(endpoint.day, settings.DAILY_FOLLOW_UP_DAYS, *series.keys())
    left, right, top, bottom = 40, 12, 16, 34
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(day: float) -> float:
        return left + plot_w * day / max(last_day, 1)

    def y(total: float) -> float:
        return top + plot_h * (1 - total / 24)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="sofa-plot" role="img" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'aria-labelledby="sofa-plot-title sofa-plot-desc">',
             f'<title id="sofa-plot-title">{escape(title)}</title>',
             f'<desc id="sofa-plot-desc">{escape(_describe(series, endpoint))}</desc>']
    for total in (0, 4, 8, 12, 16, 20, 24):
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(total):.1f}" '
                     f'y2="{y(total):.1f}"/><text class="axis" x="{left - 6}" y="{y(total) + 4:.1f}"'
                     f' text-anchor="end">{total}</text>')
    for day in range(0, last_day + 1, 1 if last_day <= 14 else 7):
        parts.append(f'<text class="axis" x="{x(day):.1f}" y="{height - 14}" '
                     f'text-anchor="middle">D{day}</text>')
    parts.append(f'<line class="endpoint-day" x1="{x(endpoint.day):.1f}" x2="{x(endpoint.day):.1f}"'
                 f' y1="{top}" y2="{top + plot_h}"/>')
    points = [(d, t) for d, t in sorted(series.items()) if t is not None]
    if points:
        path = " ".join(f"{x(d):.1f},{y(t):.1f}" for d, t in points)
        parts.append(f'<polyline class="sofa-line" points="{path}"/>')
        for d, t in points:
            cls = "d0" if d == 0 else "endpoint" if d == endpoint.day else "day"
            parts.append(f'<circle class="{cls}" cx="{x(d):.1f}" cy="{y(t):.1f}" r="4">'
                         f'<title>D{d}: {t}</title></circle>')
    parts.append(f'<text class="endpoint-label" x="{min(x(endpoint.day) + 4, width - 150):.1f}" '
                 f'y="{top + 12}">{escape(endpoint.text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _describe(series: Series, endpoint: Endpoint) -> str:
    values = ", ".join(f"D{d} {t}" for d, t in sorted(series.items()) if t is not None)
    return f"SOFA totals: {values or 'none entered'}. {endpoint.text}."
