"""Daily SOFA: the system computes the P/F ratio, the six components and the total from the day's
worst values, in the units the site reports."""

from __future__ import annotations

import pytest

from ecrf.auth.services import system_actor
from ecrf.casebook import services
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.forms.crfs.sofa_daily import DEFINITION
from tests.factories import audit_rows

pytestmark = pytest.mark.requirement("E6-4.3.4")

#: the worked case of the domain notes: P/F 180 on invasive ventilation, platelets 35 G/L,
#: bilirubin 43 umol/L, norepinephrine 0.15, GCS 15, creatinine 186 umol/L -> 14
WORKED = {"pao2": "72", "pao2_unit": "mmHg", "fio2": "40", "fio2_unit": "%",
          "resp_support": "IMV", "platelets": "35", "bilirubin": "43", "bilirubin_unit": "umol/L",
          "map": "68", "norepinephrine": "0.15", "gcs": "15", "creatinine": "186",
          "creatinine_unit": "umol/L", "urine_output": "900", "rrt": "N"}


def derived(values: dict) -> dict:
    parsed, errors = services.parse(DEFINITION, Submitted(values), "Europe/Paris")
    assert not errors, errors
    return services.derive(DEFINITION, parsed)


def test_the_worked_case_scores_14_on_invasive_ventilation():
    d = derived(WORKED)
    assert d["pf_ratio"] == 180
    assert (d["sofa_resp"], d["sofa_coag"], d["sofa_liver"], d["sofa_cardio"], d["sofa_cns"],
            d["sofa_renal"]) == (3, 3, 2, 4, 0, 2)
    assert d["sofa_total"] == 14


def test_the_same_patient_without_respiratory_support_scores_13():
    assert derived({**WORKED, "resp_support": "NONE"})["sofa_total"] == 13


def test_high_flow_oxygen_is_not_respiratory_support_for_sofa():
    assert derived({**WORKED, "resp_support": "HFNO"})["sofa_resp"] == 2


def test_pao2_in_kpa_and_fio2_as_a_fraction_give_the_same_ratio():
    d = derived({**WORKED, "pao2": "9.6", "pao2_unit": "kPa", "fio2": "0.40",
                 "fio2_unit": "fraction"})
    assert d["pf_ratio"] == 180 and d["sofa_total"] == 14


def test_a_component_with_no_data_is_left_out_of_the_total():
    values = {k: v for k, v in WORKED.items() if k not in ("gcs",)}
    d = derived(values)
    assert d["sofa_cns"] is None and d["sofa_total"] == 14


def test_a_day_with_no_value_has_no_total():
    assert derived({"rrt": "Y"})["sofa_total"] is None


def test_renal_replacement_is_recorded_but_not_scored():
    assert derived({**WORKED, "rrt": "Y"})["sofa_renal"] == derived(WORKED)["sofa_renal"]


@pytest.mark.parametrize("change, message", [
    ({"fio2": "0.4", "fio2_unit": "%"}, "a fraction entered with unit"),
    ({"bilirubin_unit": ""}, "Give the unit of the bilirubin"),
    ({"pao2_unit": ""}, "Give the unit of the PaO2"),
])
def test_impossible_units_are_refused_with_the_rule_and_the_value(make, change, message):
    result = save_form(system_actor(), make.subject("01"), "sofa_daily", Slot("D0"),
                       Submitted({**WORKED, **change}))
    assert result.outcome == "invalid"
    assert any(message in m for ms in result.errors.values() for m in ms)


def test_a_saved_day_stores_the_computed_total_and_recomputes_it_on_change(make):
    from ecrf.audit.reasons import Reason

    subject = make.subject("01")
    first = save_form(system_actor(), subject, "sofa_daily", Slot("D1"), Submitted(WORKED))
    assert first.outcome == "saved"
    assert services.instance_values(first.instance, DEFINITION)["sofa_total"] == 14
    again = save_form(system_actor(), subject, "sofa_daily", Slot("D1"),
                      Submitted({**WORKED, "gcs": "9"}), reason=Reason("entry_error", "GCS 9"))
    assert again.outcome == "saved"
    total = audit_rows(action="item.update", item="sofa_total")
    assert [(r.value.old_value, r.value.new_value, r.reason_text) for r in total] == [
        ("14", "17", "derived value recalculated")]
