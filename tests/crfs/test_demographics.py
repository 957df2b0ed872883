"""Demographics: adults older than 18 (I1), the weight for doses per kilogram, and whether a woman
can bear children (CTFG: fertile from menarche to post-menopause unless permanently sterile)."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace

import pytest

from ecrf.auth.services import system_actor
from ecrf.casebook import services
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.forms.crfs import demographics
from ecrf.forms.crfs.demographics import DEFINITION
from ecrf.study import settings

pytestmark = pytest.mark.requirement("E6-4.3.4")

MAN = {"sex": "M", "age": "54", "weight": "82.5", "height": "178"}
WOMAN = {"sex": "F", "age": "37", "weight": "61", "height": "165"}


def save(make, values: dict, confirmed=frozenset()):
    return save_form(system_actor(), make.subject("01"), "demographics", Slot("D0"),
                     Submitted(values), confirmed=confirmed)


def findings(values: dict, crf=DEFINITION, context=None) -> dict:
    parsed, errors = services.parse(crf, Submitted(values), "Europe/Paris")
    assert not errors, errors
    return {f.check_id: f for f in services.run_checks(crf, parsed, context)}


def test_a_man_is_recorded_with_his_age_weight_and_height(make):
    result = save(make, MAN)
    assert result.outcome == "saved" and result.instance.status == "complete"


def test_the_protocol_includes_adults_older_than_18():
    found = findings({**MAN, "age": "18"})["DEM-01"]
    assert found.severity == "soft"
    assert found.message == ("The protocol includes adults older than 18 years (inclusion "
                             "criterion I1); found 18.")
    assert "DEM-01" not in findings({**MAN, "age": "19"})


def test_an_age_of_18_can_be_recorded_once_confirmed(make):
    asked = save(make, {**MAN, "age": "18"})
    assert asked.outcome == "needs_confirmation"
    assert [w.check_id for w in asked.warnings] == ["DEM-01"]
    assert save(make, {**MAN, "age": "18"}, confirmed={"DEM-01"}).outcome == "saved"


def test_the_minimum_age_is_the_study_setting(monkeypatch):
    monkeypatch.setattr(settings, "MINIMUM_AGE_YEARS", 20)
    assert "older than 20 years" in findings({**MAN, "age": "20"})["DEM-01"].message


@pytest.mark.parametrize("age", ["121", "-1"])
def test_an_age_outside_0_to_120_years_is_refused(make, age):
    result = save(make, {**MAN, "age": age})
    assert result.outcome == "invalid"
    assert f"Age at inclusion must be between 0 and 120 years; found {age}." in result.errors["age"]


def test_the_weight_is_kept_to_one_decimal_and_a_decimal_comma_is_accepted(make):
    assert save(make, {**MAN, "weight": "82,5"}).outcome == "saved"
    refused = save(make, {**MAN, "weight": "82.55"})
    assert "At most 1 decimal place" in refused.errors["weight"][0]


def test_a_woman_says_whether_she_can_bear_children(make):
    assert save(make, WOMAN).instance.status == "incomplete"
    assert save(make, {**WOMAN, "wocbp": "Y"}).instance.status == "complete"


def test_childbearing_potential_is_not_asked_for_a_man(make):
    result = save(make, {**MAN, "wocbp": "N"})
    assert result.outcome == "invalid" and "does not apply" in result.errors["wocbp"][0]


@pytest.mark.parametrize("reason", ["POSTMENOPAUSAL", "HYSTERECTOMY", "SALPINGECTOMY",
                                    "OOPHORECTOMY"])
def test_a_woman_not_of_childbearing_potential_gives_the_reason(make, reason):
    assert save(make, {**WOMAN, "wocbp": "N"}).instance.status == "incomplete"
    result = save(make, {**WOMAN, "wocbp": "N", "not_wocbp_reason": reason})
    assert result.instance.status == "complete"


def test_another_medical_reason_is_described(make):
    other = {**WOMAN, "wocbp": "N", "not_wocbp_reason": "OTHER"}
    assert save(make, other).instance.status == "incomplete"
    described = save(make, {**other, "not_wocbp_other": "Primary amenorrhoea (Turner syndrome)"})
    assert described.instance.status == "complete"


@pytest.mark.requirement("GDPR-5")
def test_the_birth_date_is_asked_only_when_the_study_collects_it():
    assert settings.COLLECT_BIRTH_DATE is False
    assert "birth_date" not in {i.key for i in DEFINITION.items}
    with_birth_date = demographics.build(collect_birth_date=True)
    with_birth_date.validate()
    assert with_birth_date.item("birth_date").short_name == "BRTHDT"


def derived_age(values: dict, context) -> int | None:
    crf = demographics.build(collect_birth_date=True)
    parsed, errors = services.parse(crf, Submitted(values), "Europe/Paris")
    assert not errors, errors
    return services.derive(crf, parsed, context)["age"]


def test_with_a_birth_date_the_age_at_inclusion_is_computed_not_typed():
    included = SimpleNamespace(subject=SimpleNamespace(inclusion_date=date(2026, 3, 2)))
    born = {k: v for k, v in MAN.items() if k != "age"} | {"birth_date": "1971-03-03"}
    assert derived_age(born, included) == 54  # turns 55 the day after inclusion
    assert derived_age({**born, "birth_date": "1971-03-02"}, included) == 55
    crf = demographics.build(collect_birth_date=True)
    _, errors = services.parse(crf, Submitted({**born, "age": "55"}), "UTC")
    assert "computed by the system" in errors["age"][0]


def test_before_inclusion_the_age_is_counted_to_today_at_the_site():
    screening = SimpleNamespace(subject=SimpleNamespace(
        inclusion_date=None, site=SimpleNamespace(timezone="Europe/Paris")))
    born = {k: v for k, v in MAN.items() if k != "age"} | {"birth_date": "1990-01-01"}
    assert derived_age(born, screening) == date.today().year - 1990 - (
        (date.today().month, date.today().day) < (1, 1))
