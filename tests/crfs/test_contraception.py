"""Contraception and pregnancy: a woman of childbearing potential (as the demographics form says) is
included only after a negative pregnancy test before the first dose, with a highly effective
method kept until one day after the last dose (I6, E2, CTFG); a pregnancy during the study is
reported and followed to its outcome. What happened can always be recorded: the checks warn and
the eligibility refuses."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from unittest import mock

import pytest

from ecrf.auth.services import system_actor
from ecrf.casebook import services
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.forms.crfs.contraception import DEFINITION, METHODS
from ecrf.study import settings
from ecrf.study.eligibility import for_subject
from ecrf.study.services import change_subject_status

pytestmark = pytest.mark.requirement("E6-4.3.4")

WOMAN = {"sex": "F", "age": "31", "weight": "58", "height": "163", "wocbp": "Y"}
PROTECTED = {"pregnancy_test": "Y", "pregnancy_test_type": "SERUM",
             "pregnancy_test_at": "2026-03-02T06:30", "pregnancy_test_result": "NEG",
             "contraception_used": "Y", "method": "IUD", "method_start": "2021-06"}
NOT_APPLICABLE = {"pregnancy_test": "N", "contraception_used": "N"}


def subject_with(make, demographics: dict | None = WOMAN, included=False):
    subject = make.subject("01")
    if demographics is not None:
        assert save_form(system_actor(), subject, "demographics", Slot("D0"),
                         Submitted(demographics)).ok
    if included:  # these tests are about dates around D0, not about eligibility (test_inclusion)
        with mock.patch("ecrf.study.eligibility.for_subject",
                        return_value=SimpleNamespace(eligible=True, summary=lambda: "")):
            change_subject_status(system_actor(), subject, "included")
    return subject


def protected_on_d0(subject) -> dict:
    """The protected woman's form, her test taken on the morning of inclusion."""
    return {**PROTECTED, "pregnancy_test_at": f"{subject.inclusion_date}T06:30"}


def save(subject, values: dict, confirmed=frozenset()):
    return save_form(system_actor(), subject, "contraception", Slot("D0"), Submitted(values),
                     confirmed=confirmed)


def warned(result) -> list[str]:
    return [w.check_id for w in result.warnings]


def test_a_woman_of_childbearing_potential_with_a_negative_test_and_an_iud(make):
    result = save(subject_with(make), PROTECTED)
    assert result.outcome == "saved" and result.warnings == []
    assert result.instance.status == "complete"


def test_a_woman_of_childbearing_potential_is_included_only_after_a_pregnancy_test(make):
    no_test = {k: v for k, v in PROTECTED.items() if not k.startswith("pregnancy_test_")}
    result = save(subject_with(make), {**no_test, "pregnancy_test": "N"})
    assert result.outcome == "needs_confirmation" and warned(result) == ["CONTRA-01"]
    assert "negative pregnancy test before the first dose (I6); found no test" in \
        result.warnings[0].message


@pytest.mark.parametrize("demographics", [
    {**WOMAN, "wocbp": "N", "not_wocbp_reason": "POSTMENOPAUSAL", "age": "62"},
    {"sex": "M", "age": "50", "weight": "80", "height": "175"},
    None,  # demographics not entered yet: nothing to compare with
])
def test_no_test_and_no_method_are_expected_from_anyone_else(make, demographics):
    result = save(subject_with(make, demographics), NOT_APPLICABLE)
    assert result.outcome == "saved" and result.instance.status == "complete"


def test_a_positive_test_can_be_recorded_but_the_woman_cannot_be_included(make):
    subject = subject_with(make)
    positive = {**PROTECTED, "pregnancy_test_result": "POS"}
    asked = save(subject, positive)
    assert asked.outcome == "needs_confirmation" and warned(asked) == ["CONTRA-02"]
    assert "a pregnant woman cannot be included (exclusion E2)" in asked.warnings[0].message
    assert save(subject, positive, confirmed={"CONTRA-02"}).outcome == "saved"
    i6 = next(c for c in for_subject(subject).criteria if c.id == "I6")
    assert i6.met is False


def test_the_eligibility_reads_a_negative_test_and_the_method(make):
    subject = subject_with(make)
    save(subject, PROTECTED)
    i6 = next(c for c in for_subject(subject).criteria if c.id == "I6")
    assert i6.met is True


def test_the_test_type_time_and_result_are_recorded_when_done(make):
    subject = subject_with(make)
    partial = {**PROTECTED, "pregnancy_test_result": ""}
    assert save(subject, partial).instance.status == "incomplete"  # the result is awaited


def test_a_woman_of_childbearing_potential_needs_a_highly_effective_method(make):
    unprotected = {**PROTECTED, "contraception_used": "N", "method": "", "method_start": ""}
    result = save(subject_with(make), unprotected)
    assert warned(result) == ["CONTRA-03"]
    assert result.warnings[0].message == (
        "A woman of childbearing potential (demographics) needs a highly effective method from "
        "the first dose to 1 day(s) after the last (I6); found none.")


def test_the_contraception_window_is_the_study_setting(make, monkeypatch):
    monkeypatch.setattr(settings, "CONTRACEPTION_DAYS_AFTER_LAST_DOSE", 30)
    result = save(subject_with(make), {**PROTECTED, "contraception_used": "N", "method": "",
                                       "method_start": ""})
    assert "to 30 day(s) after the last" in result.warnings[0].message


def test_the_methods_are_the_ctfg_highly_effective_list():
    assert [code for code, _ in METHODS] == [
        "COMBINED_ORAL", "COMBINED_VAGINAL", "COMBINED_PATCH", "PROGESTOGEN_ORAL",
        "PROGESTOGEN_INJECTABLE", "PROGESTOGEN_IMPLANT", "IUD", "IUS", "TUBAL_OCCLUSION",
        "VASECTOMISED_PARTNER", "ABSTINENCE"]
    _, errors = services.parse(DEFINITION, Submitted({**PROTECTED, "method": "CONDOM"}), "UTC")
    assert "Choose one of the listed answers" in errors["method"][0]  # acceptable, not highly effective


def test_the_method_says_since_when_at_the_precision_known(make):
    subject = subject_with(make)
    assert save(subject, {**PROTECTED, "method_start": ""}).instance.status == "incomplete"
    assert save(subject, {**PROTECTED, "method_start": "2019"}).instance.status == "complete"


@pytest.mark.parametrize("days_before, message", [
    (0, None), (3, None),
    (4, "is 4 days before the inclusion"),
    (-1, "is after the inclusion"),
])
def test_the_pregnancy_test_is_taken_shortly_before_inclusion(make, days_before, message):
    subject = subject_with(make, included=True)
    tested = subject.inclusion_date - timedelta(days=days_before)
    result = save(subject, {**protected_on_d0(subject), "pregnancy_test_at": f"{tested}T06:30"})
    if message is None:
        assert result.outcome == "saved"
    else:
        assert warned(result) == ["CONTRA-04"] and message in result.warnings[0].message


def test_the_method_is_in_place_from_the_first_dose(make):
    subject = subject_with(make, included=True)
    d0 = subject.inclusion_date
    for start, late in [(f"{d0.year}", False), (f"{d0:%Y-%m}", False), (f"{d0}", False),
                        (f"{d0 + timedelta(days=1)}", True), (f"{d0.year + 1}", True)]:
        findings = services.run_checks(DEFINITION, services.parse(
            DEFINITION, Submitted({**protected_on_d0(subject), "method_start": start}),
            "Europe/Paris")[0],
            services.CheckContext(subject, Slot("D0")))
        assert ("CONTRA-05" in [f.check_id for f in findings]) is late, start


def test_a_pregnancy_during_the_study_is_reported_and_followed_to_its_outcome(make):
    subject = subject_with(make, included=True)
    protected, known = protected_on_d0(subject), subject.inclusion_date + timedelta(days=20)
    assert save(subject, {**protected, "pregnancy": "Y"}).instance.status == "incomplete"
    reported = save(subject, {**protected, "pregnancy": "Y", "pregnancy_known_date": f"{known}"})
    assert reported.outcome == "saved" and reported.instance.status == "incomplete"
    followed = save_form(system_actor(), subject, "contraception", Slot("D0"), Submitted(
        {**protected, "pregnancy": "Y", "pregnancy_known_date": f"{known}",
         "pregnancy_outcome": "Live birth at 39 weeks, no anomaly"}))
    assert followed.outcome == "saved" and followed.instance.status == "complete"


def test_a_pregnancy_known_before_inclusion_is_exclusion_e2_not_a_pregnancy_during_the_study(make):
    subject = subject_with(make, included=True)
    known = subject.inclusion_date - timedelta(days=1)
    result = save(subject, {**protected_on_d0(subject), "pregnancy": "Y",
                            "pregnancy_known_date": f"{known}",
                            "pregnancy_outcome": "Ongoing"})
    assert warned(result) == ["CONTRA-06"]
    assert "a pregnancy at inclusion is exclusion E2" in result.warnings[0].message
