"""Informed consent: the patient signs, or a relative or the trusted person when the patient cannot,
or the patient is included in an emergency with nobody present; the patient's own consent to
continue is then sought, and consent may be withdrawn (protocol I5, site sheet consent pathway)."""

from __future__ import annotations

import pytest

from ecrf.auth.services import system_actor
from ecrf.casebook import services
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.forms.crfs.consent import DEFINITION

pytestmark = pytest.mark.requirement("E6-4.3.4")

PATIENT = {"consent_type": "PATIENT", "patient_signed_at": "2026-03-02T10:15", "withdrawn": "N"}
RELATIVE = {"consent_type": "RELATIVE", "relative_signed_at": "2026-03-02T10:15",
            "relationship": "SPOUSE", "withdrawn": "N"}
EMERGENCY = {"consent_type": "EMERGENCY", "emergency_at": "2026-03-02T03:40", "withdrawn": "N"}


def save(make, values: dict):
    return save_form(system_actor(), make.subject("01"), "consent", Slot("D0"), Submitted(values))


def findings(values: dict) -> dict:
    parsed, errors = services.parse(DEFINITION, Submitted(values), "Europe/Paris")
    assert not errors, errors
    return {f.check_id: f for f in services.run_checks(DEFINITION, parsed)}


def test_a_patient_who_consents_signs_with_the_date_and_time(make):
    result = save(make, PATIENT)
    assert result.outcome == "saved"
    assert result.instance.status == "complete"  # no continuation consent to seek


@pytest.mark.parametrize("values, signature", [
    (PATIENT, "patient_signed_at"), (RELATIVE, "relative_signed_at"), (EMERGENCY, "emergency_at"),
])
def test_each_kind_of_consent_needs_the_date_and_time_of_its_own_signature(make, values, signature):
    result = save(make, {k: v for k, v in values.items() if k != signature})
    assert result.outcome == "invalid"
    assert "needs the date and time of" in result.errors["consent_type"][0]
    assert "[CONS-01]" in result.errors["consent_type"][0]


def test_the_signature_of_another_kind_of_consent_does_not_apply(make):
    result = save(make, {**PATIENT, "relative_signed_at": "2026-03-02T10:15"})
    assert result.outcome == "invalid"
    assert "does not apply" in result.errors["relative_signed_at"][0]


def test_a_relative_or_trusted_person_says_how_they_are_related_to_the_patient(make):
    result = save(make, {k: v for k, v in RELATIVE.items() if k != "relationship"}
                  | {"continuation": "Y", "continuation_at": "2026-03-05T09:00"})
    assert result.outcome == "saved" and result.instance.status == "incomplete"
    with_relation = save(make, {**RELATIVE, "relationship": "TRUSTED", "continuation": "Y",
                                "continuation_at": "2026-03-05T09:00"})
    assert with_relation.instance.status == "complete"


@pytest.mark.parametrize("first", [RELATIVE, EMERGENCY])
def test_an_emergency_or_relative_inclusion_needs_the_continuation_consent_or_why_not_obtained(
        make, first):
    pending = save(make, first)
    assert pending.outcome == "saved" and pending.instance.status == "incomplete"
    obtained = save(make, {**first, "continuation": "Y", "continuation_at": "2026-03-06T11:00"})
    assert obtained.instance.status == "complete"
    not_obtained = save(make, {**first, "continuation": "N"})
    assert not_obtained.instance.status == "incomplete"  # say why
    died = save(make, {**first, "continuation": "N", "not_obtained_reason": "DIED"})
    assert died.instance.status == "complete"


def test_a_patient_who_signed_is_not_asked_for_a_continuation_consent(make):
    result = save(make, {**PATIENT, "continuation": "Y", "continuation_at": "2026-03-06T11:00"})
    assert result.outcome == "invalid" and "does not apply" in result.errors["continuation"][0]


def test_the_continuation_consent_cannot_come_before_the_first_consent():
    early = findings({**EMERGENCY, "continuation": "Y", "continuation_at": "2026-03-02T03:00"})
    assert early["CONS-02"].severity == "hard"
    assert ("continuation consent (2026-03-02 02:00 UTC) cannot be before the emergency "
            "inclusion (2026-03-02 02:40 UTC)") in early["CONS-02"].message
    assert "CONS-02" not in findings({**EMERGENCY, "continuation": "Y",
                                      "continuation_at": "2026-03-02T03:40"})


def test_a_patient_who_refuses_to_continue_decides_whether_the_data_may_be_used(make):
    refused = {**EMERGENCY, "continuation": "N", "not_obtained_reason": "REFUSED"}
    assert save(make, refused).instance.status == "incomplete"
    assert save(make, {**refused, "data_use": "N"}).instance.status == "complete"
    died = save(make, {**EMERGENCY, "continuation": "N", "not_obtained_reason": "DIED",
                       "data_use": "Y"})
    assert died.outcome == "invalid" and "does not apply" in died.errors["data_use"][0]


def test_a_withdrawal_of_consent_needs_its_date(make):
    assert save(make, {**PATIENT, "withdrawn": "Y"}).instance.status == "incomplete"
    result = save(make, {**PATIENT, "withdrawn": "Y", "withdrawal_date": "2026-03-10"})
    assert result.outcome == "saved" and result.instance.status == "complete"


def test_consent_cannot_be_withdrawn_before_it_was_given_on_the_site_calendar(make):
    # signed 00:30 in Paris on 2 March, which is still 1 March in UTC
    signed = {**PATIENT, "patient_signed_at": "2026-03-02T00:30", "withdrawn": "Y"}
    before = save(make, {**signed, "withdrawal_date": "2026-03-01"})
    assert before.outcome == "invalid"
    assert (before.errors["withdrawal_date"][0]
            == "Consent cannot be withdrawn (2026-03-01) before it was given (2026-03-02). [CONS-03]")
    assert save(make, {**signed, "withdrawal_date": "2026-03-02"}).outcome == "saved"

