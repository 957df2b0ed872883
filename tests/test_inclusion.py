"""Inclusion is refused unless the system finds the subject eligible; a screen failure records
the failed criteria (protocol section on eligibility; 21 CFR 11.10(f))."""

from __future__ import annotations

import random

import pytest

from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot
from ecrf.demo import fill_screening, fill_sofa, save_confirmed
from ecrf.study import eligibility
from ecrf.study.services import StudyError, change_subject_status


def test_an_eligible_subject_is_included_with_d0_today(make):
    subject = make.included("01")
    assert subject.status == "included" and subject.inclusion_date is not None
    assert eligibility.for_subject(subject).eligible


@pytest.mark.requirement("P11-10f")
def test_a_subject_without_data_cannot_be_included_and_the_criteria_are_listed(make):
    subject = make.subject("01")
    with pytest.raises(StudyError, match="not eligible") as refused:
        change_subject_status(system_actor(), subject, "included")
    for criterion in ("I1", "I2", "I3", "I4", "I5"):
        assert criterion in str(refused.value)
    assert subject.status == "screening"


@pytest.mark.requirement("P11-10f")
def test_a_patient_aged_18_is_refused_at_inclusion(make):
    subject = make.subject("01")
    rng = random.Random(3)
    fill_screening(system_actor(), subject, rng)
    fill_sofa(system_actor(), subject, rng, days=1, severity=0.8)
    save_confirmed(system_actor(), subject, "demographics", Slot("D0"),
                   {"sex": "M", "age": "18", "weight": "70", "height": "175"},
                   reason=Reason("entry_error", "age corrected"))
    with pytest.raises(StudyError, match=r"I1 age 18 years \(not older than 18\)"):
        change_subject_status(system_actor(), subject, "included")


def test_a_screen_failure_records_the_failed_criteria(make):
    subject = make.subject("01")
    change_subject_status(system_actor(), subject, "screen_failure",
                          Reason("other", "did not meet the criteria"))
    assert "did not meet the criteria" in subject.status_reason
    assert "I1" in subject.status_reason and "I4" in subject.status_reason
