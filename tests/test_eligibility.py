"""Eligibility is computed by the system from the data (inclusion I1-I6, exclusion E1-E12)."""

from __future__ import annotations

import pytest

from ecrf.forms.crfs.eligibility import EXCLUSIONS
from ecrf.study import settings
from ecrf.study.eligibility import evaluate

pytestmark = pytest.mark.requirement("E6-4.3.4")

NO_EXCLUSION = {key: "N" for key, _ in EXCLUSIONS} | {"other_trial": "N"}


def forms(**changes):
    """A man of 54 with HS (6 HLH-2004 criteria, HScore 243), SOFA 9 at D0, consent signed."""
    base = {
        "demographics": {"age": 54, "sex": "M", "wocbp": None},
        "hs_diagnosis": {"hlh_count": 6, "hscore": 243},
        "medical_history": {"icu_admission_at": "2026-03-01T08:00Z"},
        "sofa_d0": {"sofa_total": 9},
        "consent": {"consent_type": "PATIENT"},
        "contraception": None,
        "eligibility": dict(NO_EXCLUSION),
    }
    for form, values in changes.items():
        base[form] = None if values is None else {**(base[form] or {}), **values}
    return base


def failed(result) -> set[str]:
    return {c.id for c in result.failed}


def test_a_patient_meeting_every_criterion_is_eligible():
    result = evaluate(forms())
    assert result.eligible and not result.failed and not result.unknown


def test_a_patient_aged_18_is_not_eligible():
    result = evaluate(forms(demographics={"age": 18}))
    assert not result.eligible and failed(result) == {"I1"}
    assert "age 18 years (not older than 18)" in result.summary()


def test_a_patient_aged_19_is_eligible():
    assert evaluate(forms(demographics={"age": 19})).eligible


def test_the_minimum_age_is_a_setting(monkeypatch):
    monkeypatch.setattr(settings, "MINIMUM_AGE_YEARS", 20)
    assert failed(evaluate(forms(demographics={"age": 19}))) == {"I1"}


@pytest.mark.parametrize("count, score, eligible", [
    (5, 150, True),    # 5 HLH-2004 criteria are enough
    (4, 200, True),    # or an HScore of 200
    (4, 199, False),   # neither
    (None, 210, True),
    (6, None, True),
])
def test_hs_needs_5_hlh2004_criteria_or_an_hscore_of_200(count, score, eligible):
    result = evaluate(forms(hs_diagnosis={"hlh_count": count, "hscore": score}))
    assert ("I2" not in failed(result)) is eligible


def test_a_sofa_of_3_at_inclusion_is_not_enough_4_is():
    assert failed(evaluate(forms(sofa_d0={"sofa_total": 3}))) == {"I4"}
    assert evaluate(forms(sofa_d0={"sofa_total": 4})).eligible


@pytest.mark.parametrize("kind", ["PATIENT", "RELATIVE", "EMERGENCY"])
def test_any_of_the_three_consent_pathways_is_consent(kind):
    assert evaluate(forms(consent={"consent_type": kind})).eligible


def test_without_consent_recorded_eligibility_is_not_known():
    result = evaluate(forms(consent=None))
    assert not result.eligible and [c.id for c in result.unknown] == ["I5"]


def test_any_exclusion_answered_yes_makes_the_patient_ineligible():
    result = evaluate(forms(eligibility={"e2_pregnant": "Y"}))
    assert failed(result) == {"E"} and "E2" in result.summary()


def test_an_unanswered_exclusion_leaves_eligibility_unknown():
    result = evaluate(forms(eligibility={"e7_lst_limit": None}))
    assert not result.eligible and "E7" in result.summary()


def test_another_trial_excludes_only_when_the_setting_says_so(monkeypatch):
    assert evaluate(forms(eligibility={"other_trial": "Y"})).eligible
    monkeypatch.setattr(settings, "OTHER_TRIAL_EXCLUDES", True)
    assert failed(evaluate(forms(eligibility={"other_trial": "Y"}))) == {"E"}


def test_a_woman_of_childbearing_potential_needs_a_negative_test_and_contraception():
    woman = {"sex": "F", "wocbp": "Y"}
    assert "I6" in {c.id for c in evaluate(forms(demographics=woman)).unknown}
    positive = forms(demographics=woman, contraception={"pregnancy_test_result": "POS",
                                                        "method": "IUD"})
    assert failed(evaluate(positive)) == {"I6"}
    ok = forms(demographics=woman, contraception={"pregnancy_test_result": "NEG",
                                                  "method": "IUD"})
    assert evaluate(ok).eligible


def test_a_woman_without_childbearing_potential_needs_no_test():
    assert evaluate(forms(demographics={"sex": "F", "wocbp": "N"})).eligible


def test_an_icu_admission_must_be_recorded():
    result = evaluate(forms(medical_history=None))
    assert [c.id for c in result.unknown] == ["I3"]
