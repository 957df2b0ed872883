"""ICU course and end of study: discharges in order, a death with its date, and a vital
status that holds together."""

from __future__ import annotations

import pytest

from ecrf.casebook import services
from ecrf.casebook.services import Submitted
from ecrf.forms.crfs import end_of_study
from tests.crfs.checking import findings

pytestmark = pytest.mark.requirement("E6-4.3.4")


def test_a_death_needs_its_date_and_dead_at_d28_is_not_alive_at_d90():
    f = findings(end_of_study.DEFINITION, {"vital_d28": "DEAD", "vital_d90": "ALIVE",
                                           "completed": "N"})
    assert "EOS-03" in f and "EOS-04" in f
    ok = findings(end_of_study.DEFINITION, {"vital_d28": "DEAD", "vital_d90": "DEAD",
                                            "death_date": "2026-03-20", "completed": "N",
                                            "termination_reason": "DEATH"})
    assert not ok


def test_hospital_discharge_is_not_before_icu_discharge():
    f = findings(end_of_study.DEFINITION, {"icu_discharge": "2026-03-20T10:00",
                                           "hospital_discharge": "2026-03-19", "completed": "Y"})
    assert "EOS-01" in f


def test_a_death_date_is_hidden_unless_the_patient_died():
    _, errors = services.parse(end_of_study.DEFINITION, Submitted(
        {"vital_d28": "ALIVE", "death_date": "2026-03-20", "completed": "Y"}), "UTC")
    assert "does not apply" in errors["death_date"][0]
