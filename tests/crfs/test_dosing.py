"""Ruxolitinib dosing: no dose before inclusion or after permanent discontinuation; every dose
that is not as planned says why; tablets add up to the dose."""

from __future__ import annotations

import pytest

from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.study import settings
from ecrf.study.services import change_subject_status

pytestmark = pytest.mark.requirement("E6-4.3.4")

AE = {"term": "10002272", "grade": "3", "onset": "2026-03-02", "serious": "N",
      "causality": "POSSIBLE", "action": "DOSE REDUCED", "outcome": "RECOVERING/RESOLVING"}


@pytest.fixture
def included(make, monkeypatch):
    import ecrf.study.eligibility as eligibility

    subject = make.subject("01")
    monkeypatch.setattr(eligibility, "for_subject", lambda s: _AlwaysEligible())
    change_subject_status(system_actor(), subject, "included")
    return subject


class _AlwaysEligible:
    eligible = True

    def summary(self):
        return ""


def dose(subject, **values):
    base = {"dose_date": str(subject.inclusion_date) if subject.inclusion_date else "2026-03-01",
            "slot": "AM", "given": "Y", "dose_mg": "10", "tablet_strength": "10", "tablets": "1",
            "route": "NG", "status": "PLANNED"}
    return save_form(system_actor(), subject, "dosing", Slot("D0", form_repeat=None),
                     Submitted({**base, **values}))


def messages(result) -> str:
    return " ".join(m for ms in result.errors.values() for m in ms)


def test_a_planned_dose_is_recorded(included):
    assert dose(included).outcome == "saved"


def test_no_dose_before_inclusion(make):
    result = dose(make.subject("01"))
    assert "before the subject is included" in messages(result)


def test_a_dose_dated_before_d0_is_refused(included):
    result = dose(included, dose_date="2020-01-01")
    assert f"before inclusion on {included.inclusion_date}" in messages(result)


def test_a_reduced_dose_needs_its_reason_and_the_ae_that_caused_it(included):
    assert "give the reason" in messages(dose(included, dose_mg="5", tablet_strength="5",
                                             status="REDUCED"))
    assert "give its number" in messages(dose(included, dose_mg="5", tablet_strength="5",
                                             status="REDUCED", reason="AE"))
    assert "no adverse event #1" in messages(dose(included, dose_mg="5", tablet_strength="5",
                                                  status="REDUCED", reason="AE", ae_number="1"))
    save_form(system_actor(), included, "adverse_event", Slot("D0", form_repeat=None),
              Submitted(AE))
    assert dose(included, dose_mg="5", tablet_strength="5", status="REDUCED", reason="AE",
                ae_number="1").outcome == "saved"


def test_the_tablets_must_add_up_to_the_dose(included):
    assert "make 20 mg, not 10 mg" in messages(dose(included, tablets="2"))


def test_a_dose_other_than_planned_must_say_reduced_or_increased(included, monkeypatch):
    assert "not the planned 10 mg" in messages(dose(included, dose_mg="15",
                                                    tablet_strength="15"))
    monkeypatch.setattr(settings, "PLANNED_DOSE_MG", 15)
    assert dose(included, dose_mg="15", tablet_strength="15").outcome == "saved"


def test_no_dose_after_permanent_discontinuation(included):
    from datetime import timedelta

    d0 = included.inclusion_date
    stop = dose(included, given="N", status="STOPPED", reason="INVESTIGATOR", stop_date=str(d0),
                stop_reason="TOXICITY", dose_mg="", tablet_strength="", tablets="", route="")
    assert stop.outcome == "saved", stop.errors
    later = dose(included, dose_date=str(d0 + timedelta(days=1)))
    assert f"permanently stopped on {d0}" in messages(later)


def test_a_dose_not_given_is_interrupted_or_stopped(included):
    result = dose(included, given="N", status="PLANNED", dose_mg="", tablet_strength="",
                  tablets="", route="")
    assert "interrupted or permanently stopped" in messages(result)


def test_a_woman_of_childbearing_potential_needs_contraception_covering_each_dose(included):
    from ecrf.demo import save_confirmed

    save_confirmed(system_actor(), included, "demographics", Slot("D0"), {
        "sex": "F", "age": "34", "weight": "60", "height": "165", "wocbp": "Y"},
        reason=Reason("entry_error", "sex corrected"))
    warned = dose(included)
    assert warned.outcome == "needs_confirmation"
    assert "No highly effective contraception is recorded" in warned.warnings[0].message
    d0 = included.inclusion_date
    save_confirmed(system_actor(), included, "contraception", Slot("D0"), {
        "pregnancy_test": "Y", "pregnancy_test_type": "SERUM",
        "pregnancy_test_at": f"{d0}T06:00", "pregnancy_test_result": "NEG",
        "contraception_used": "Y", "method": "IUD", "method_start": "2020"})
    assert dose(included).outcome == "saved"


def test_the_method_must_be_kept_one_day_after_the_last_dose(included):
    from ecrf.casebook.services import Submitted as S
    from ecrf.demo import save_confirmed

    save_confirmed(system_actor(), included, "demographics", Slot("D0"), {
        "sex": "F", "age": "34", "weight": "60", "height": "165", "wocbp": "Y"},
        reason=Reason("entry_error", "sex corrected"))
    d0 = included.inclusion_date
    method = {"pregnancy_test": "Y", "pregnancy_test_type": "SERUM",
              "pregnancy_test_at": f"{d0}T06:00", "pregnancy_test_result": "NEG",
              "contraception_used": "Y", "method": "IUD", "method_start": "2020"}
    save_confirmed(system_actor(), included, "contraception", Slot("D0"), method)
    assert dose(included).outcome == "saved"
    stopped = save_form(system_actor(), included, "contraception", Slot("D0"),
                        S({**method, "method_stop": str(d0)}),
                        reason=Reason("new_information", "IUD removed"))
    assert stopped.outcome == "needs_confirmation"
    assert any(w.check_id == "CONTRA-07" and "1 day(s) after the last dose" in w.message
               for w in stopped.warnings)
