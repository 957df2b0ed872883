"""The visit schedule as data: visits, target days from inclusion (D0), windows, forms expected.

Repeating forms (adverse events, concomitant treatments, dosing) can be added at any visit where
they are listed as repeating; unscheduled visits reuse a visit key with a repeat number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from ecrf.forms.definition import DefinitionError
from ecrf.study import settings


@dataclass(frozen=True)
class Visit:
    key: str
    title: str
    #: target day from inclusion (D0 = 0); None for event-driven visits (end of treatment...)
    day: int | None
    window_before: int = 0
    window_after: int = 0
    forms: tuple[str, ...] = ()
    repeating_forms: tuple[str, ...] = ()
    unscheduled: bool = False

    def window(self, d0: date) -> tuple[date, date] | None:
        if self.day is None:
            return None
        target = d0 + timedelta(days=self.day)
        return target - timedelta(days=self.window_before), target + timedelta(days=self.window_after)

    def is_overdue(self, d0: date | None, today: date) -> bool:
        window = self.window(d0) if d0 else None
        return window is not None and today > window[1]


@dataclass(frozen=True)
class Schedule:
    visits: tuple[Visit, ...]

    def visit(self, key: str) -> Visit:
        for v in self.visits:
            if v.key == key:
                return v
        raise KeyError(key)

    def validate(self, crf_keys: set[str]) -> None:
        keys = [v.key for v in self.visits]
        if len(set(keys)) != len(keys):
            raise DefinitionError("the schedule has duplicate visit keys")
        for v in self.visits:
            for form in (*v.forms, *v.repeating_forms):
                if form not in crf_keys:
                    raise DefinitionError(f"visit {v.key} expects unknown CRF {form!r}")

    def fingerprint(self) -> str:
        return repr(self.visits)

    def extended(self, *visits: Visit, forms: dict[str, tuple[str, ...]] | None = None) -> Schedule:
        """A copy with more visits, or more forms on existing visits (one line per new CRF)."""
        forms = forms or {}
        updated = tuple(
            Visit(**{**v.__dict__, "forms": v.forms + forms.get(v.key, ())}) for v in self.visits)
        return Schedule(updated + visits)


def ended_visits(visits, d0: date | None, death_date: date | None) -> set[str]:
    """A death ends the schedule: visits due after the date of death are no longer expected."""
    if d0 is None or death_date is None:
        return set()
    return {v.key for v in visits if v.window(d0) is not None and v.window(d0)[0] > death_date
            and v.key != "D90"}  # the end-of-study form still records the death


def build_schedule(form_lines: dict[str, tuple[str, ...]]) -> Schedule:
    """The JAKAHDI schedule from the study settings and the forms expected at each visit kind."""
    d0_forms = form_lines.get("D0", ()) + (form_lines.get("lab_days", ()) if 0 in settings.LAB_DAYS
                                           else ())
    visits = [Visit("D0", "Screening / inclusion (D0)", 0, forms=d0_forms,
                    repeating_forms=form_lines.get("repeating", ()))]
    lab_forms = form_lines.get("lab_days", ())
    for n in range(1, settings.DAILY_FOLLOW_UP_DAYS + 1):
        forms = form_lines.get("daily", ()) + (lab_forms if n in settings.LAB_DAYS else ())
        visits.append(Visit(f"D{n}", f"Day {n}", n, settings.DAILY_WINDOW_DAYS,
                            settings.DAILY_WINDOW_DAYS, forms=forms,
                            repeating_forms=form_lines.get("repeating", ())))
    visits += [
        Visit("EOT", "End of treatment", None, forms=form_lines.get("EOT", ())),
        Visit("ICU_DISCHARGE", "ICU discharge", None, forms=form_lines.get("ICU_DISCHARGE", ())),
        Visit("HOSP_DISCHARGE", "Hospital discharge", None,
              forms=form_lines.get("HOSP_DISCHARGE", ())),
    ]
    for key, (title, day, before, after) in settings.FOLLOW_UP_VISITS.items():
        visits.append(Visit(key, title, day, before, after, forms=form_lines.get(key, ()),
                            repeating_forms=form_lines.get("repeating", ())))
    visits.append(Visit("UNS", "Unscheduled visit", None, forms=form_lines.get("UNS", ()),
                        repeating_forms=form_lines.get("repeating", ()), unscheduled=True))
    return Schedule(tuple(visits))


#: Which CRFs each kind of visit expects ("daily": D1..Dn, "lab_days": the days of
#: settings.LAB_DAYS, "repeating": at any visit).
FORMS: dict[str, tuple[str, ...]] = {
    "D0": ("consent", "demographics", "medical_history", "hs_diagnosis", "eligibility",
           "contraception", "sofa_daily"),
    "daily": ("sofa_daily",),
    "lab_days": ("labs",),
    "D90": ("end_of_study",),
    "repeating": ("adverse_event", "dosing", "concomitant", "organ_support", "deviation"),
}

SCHEDULE = build_schedule(FORMS)
