"""Medical history: known underlying immunosuppression (an HScore item), the cause of the
hemophagocytic syndrome, what was given for it before inclusion, and the ICU admission that
inclusion criterion I3 needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook import services
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.forms.crfs.medical_history import DEFINITION

pytestmark = pytest.mark.requirement("E6-4.3.4")

HISTORY = {"immunosuppression": "N", "etiology": ["VIRAL"], "etiology_detail": "EBV",
           "prior_treatment": "N", "icu_admission_at": "2026-03-01T22:10"}


def save(subject, values: dict, confirmed=frozenset(), reason=None):
    return save_form(system_actor(), subject, "medical_history", Slot("D0"), Submitted(values),
                     confirmed=confirmed, reason=reason)


def test_a_complete_history(make):
    result = save(make.subject("01"), HISTORY)
    assert result.outcome == "saved" and result.instance.status == "complete"
    values = services.instance_values(result.instance, DEFINITION)
    assert values["etiology"] == ["VIRAL"]
    assert values["icu_admission_at"].astimezone(UTC) == datetime(2026, 3, 1, 21, 10, tzinfo=UTC)


def test_known_immunosuppression_says_which(make):
    subject = make.subject("01")
    assert save(subject, {**HISTORY, "immunosuppression": "Y"}).instance.status == "incomplete"
    hiv = save(subject, {**HISTORY, "immunosuppression": "Y", "immunosuppression_type": ["HIV"]})
    assert hiv.instance.status == "complete"


def test_another_immunosuppression_is_described(make):
    other = {**HISTORY, "immunosuppression": "Y", "immunosuppression_type": ["THERAPY", "OTHER"]}
    assert save(make.subject("01"), other).instance.status == "incomplete"
    described = save(make.subject("01"), {**other, "immunosuppression_other": "Splenectomy"})
    assert described.instance.status == "complete"


def test_the_etiology_may_combine_causes_and_names_them(make):
    both = {**HISTORY, "etiology": ["MALIGNANCY", "VIRAL"], "etiology_detail": ""}
    assert save(make.subject("01"), both).instance.status == "incomplete"
    named = save(make.subject("01"), {**both, "etiology_detail": "EBV; Hodgkin lymphoma"})
    assert named.instance.status == "complete"
    assert services.instance_values(named.instance, DEFINITION)["etiology"] == ["VIRAL",
                                                                                 "MALIGNANCY"]


def test_idiopathic_means_no_cause_was_found(make):
    mixed = save(make.subject("01"), {**HISTORY, "etiology": ["IDIOPATHIC", "VIRAL"]})
    assert mixed.outcome == "invalid"
    assert mixed.errors["etiology"] == [
        "Idiopathic means no cause was found: it cannot go with Infection: viral. [MH-01]"]
    alone = save(make.subject("01"), {**HISTORY, "etiology": ["IDIOPATHIC"], "etiology_detail": ""})
    assert alone.outcome == "saved" and alone.instance.status == "complete"


def test_an_idiopathic_syndrome_has_no_cause_to_detail(make):
    result = save(make.subject("01"), {**HISTORY, "etiology": ["IDIOPATHIC"]})
    assert result.outcome == "invalid" and "does not apply" in result.errors["etiology_detail"][0]


def test_hs_treatment_before_inclusion_is_described(make):
    treated = {**HISTORY, "prior_treatment": "Y"}
    assert save(make.subject("01"), treated).instance.status == "incomplete"
    described = save(make.subject("01"), {
        **treated, "prior_treatment_detail": "Dexamethasone 10 mg/m2/day from 2026-02-27"})
    assert described.instance.status == "complete"


def test_the_icu_admission_is_required_for_criterion_i3(make):
    without = {k: v for k, v in HISTORY.items() if k != "icu_admission_at"}
    assert save(make.subject("01"), without).instance.status == "incomplete"
    assert DEFINITION.item("icu_admission_at").critical


@pytest.mark.parametrize("days_after_inclusion, warned", [(-2, False), (0, False), (1, True)])
def test_the_patient_is_in_the_icu_when_included(make, days_after_inclusion, warned):
    subject = make.included("01")  # its medical history is already saved: changes need a reason
    admitted = subject.inclusion_date + timedelta(days=days_after_inclusion)
    result = save(subject, {**HISTORY, "icu_admission_at": f"{admitted}T08:00"},
                  reason=Reason("entry_error", "admission time corrected"))
    assert (result.outcome == "needs_confirmation") is warned
    if warned:
        assert result.warnings[0].check_id == "MH-02"
        assert f"The ICU admission ({admitted}) is after the inclusion" in result.warnings[0].message
        again = save(subject, {**HISTORY, "icu_admission_at": f"{admitted}T08:00"},
                     confirmed={"MH-02"}, reason=Reason("entry_error", "admission time corrected"))
        assert again.outcome == "saved"
