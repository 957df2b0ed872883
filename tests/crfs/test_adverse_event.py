"""Adverse events: CTCAE v5.0 terms and the grades they define, seriousness, causality, outcome,
and the 24-hour reporting clock of a serious event."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ecrf.auth.services import system_actor
from ecrf.casebook import services
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.forms.crfs.adverse_event import DEFINITION

pytestmark = pytest.mark.requirement("E6-4.3.4")

ANEMIA, NAUSEA, SEPSIS = "10002272", "10028813", "10040047"
AE = {"term": ANEMIA, "grade": "3", "onset": "2026-03-02", "serious": "N",
      "causality": "POSSIBLE", "action": "DOSE REDUCED", "outcome": "RECOVERING/RESOLVING"}


def check(values: dict):
    parsed, errors = services.parse(DEFINITION, Submitted(values), "Europe/Paris")
    assert not errors, errors
    derived = services.derive(DEFINITION, parsed)
    return derived, {f.check_id: f for f in services.run_checks(DEFINITION, derived)}


def test_a_grade_the_term_does_not_define_is_refused():
    _, findings = check({**AE, "term": NAUSEA, "grade": "4"})
    assert "CTCAE v5.0 defines no grade 4 for Nausea (grades: 1, 2, 3)" in findings["AE-01"].message
    _, findings = check({**AE, "term": NAUSEA, "grade": "3"})
    assert "AE-01" not in findings


def test_sepsis_has_no_grade_1_or_2():
    _, findings = check({**AE, "term": SEPSIS, "grade": "2"})
    assert "AE-01" in findings


def test_a_term_outside_ctcae_is_refused_by_the_type():
    _, errors = services.parse(DEFINITION, Submitted({**AE, "term": "Headache"}), "UTC")
    assert "Choose a CTCAE v5.0 term" in errors["term"][0]


@pytest.mark.parametrize("onset, end, refused", [
    ("2026-03-02", "2026-03-01", True),
    ("2026-03", "2026-03-01", False),    # partial onset: compared at the precision known
    ("2026-03-02", "2026-03", False),
    ("2026", "2025-12", True),
])
def test_an_end_before_the_onset_is_refused(onset, end, refused):
    _, findings = check({**AE, "onset": onset, "end": end})
    assert ("AE-02" in findings) is refused


def test_a_serious_event_needs_a_criterion_and_starts_the_24_hour_clock():
    serious = {**AE, "serious": "Y", "aware_at": "2026-03-02T22:30"}
    derived, findings = check(serious)
    assert "AE-03" in findings
    derived, findings = check({**serious, "criteria": ["HOSP"]})
    assert "AE-03" not in findings
    assert derived["report_due"] == datetime(2026, 3, 3, 21, 30, tzinfo=UTC)  # 22:30 Paris + 24 h


def test_a_report_after_24_hours_is_flagged_for_confirmation():
    late = {**AE, "serious": "Y", "criteria": ["LIFE"], "aware_at": "2026-03-02T08:00",
            "reported_at": "2026-03-03T09:00"}
    _, findings = check(late)
    assert findings["AE-06"].severity == "soft" and "25 hours" in findings["AE-06"].message
    _, on_time = check({**late, "reported_at": "2026-03-03T07:59"})
    assert "AE-06" not in on_time


def test_a_fatal_outcome_needs_grade_5_and_the_date_of_death():
    _, findings = check({**AE, "outcome": "FATAL"})
    assert "AE-04" in findings and "AE-05" in findings
    _, findings = check({**AE, "outcome": "FATAL", "grade": "5", "end": "2026-03-05"})
    assert "AE-04" not in findings and "AE-05" not in findings


@pytest.mark.parametrize("causality, related", [
    ("CERTAIN", "Y"), ("PROBABLE", "Y"), ("POSSIBLE", "Y"), ("UNLIKELY", "N"),
    ("CONDITIONAL", "N"), ("UNASSESSABLE", "N")])
def test_who_umc_causality_is_shown_as_related_or_not(causality, related):
    derived, _ = check({**AE, "causality": causality})
    assert derived["related"] == related


def test_adverse_events_are_numbered_as_they_are_added(make):
    subject = make.subject("01")
    numbers = [save_form(system_actor(), subject, "adverse_event", Slot("D1", form_repeat=None),
                         Submitted(AE)).instance.form_repeat for _ in range(2)]
    assert numbers == [1, 2]
