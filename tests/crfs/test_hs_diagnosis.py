"""HS diagnosis: the raw values are entered once, as typed at a French site (decimal commas), and the
system computes the eight HLH-2004 criteria (met / not met / not done), their count, and the HScore
with its points and probability. The score thresholds themselves are tested in tests/scores."""

from __future__ import annotations

import pytest

from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook import services
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.forms.crfs.hs_diagnosis import DEFINITION
from ecrf.study import settings
from tests.factories import audit_rows

pytestmark = pytest.mark.requirement("E6-4.3.4")

HLH_ITEMS = ("hlh_fever", "hlh_splenomegaly", "hlh_cytopenias", "hlh_tg_fibrinogen",
             "hlh_hemophagocytosis", "hlh_nk", "hlh_ferritin", "hlh_scd25")
POINT_ITEMS = ("hs_immuno", "hs_temperature", "hs_organomegaly", "hs_cytopenias", "hs_ferritin",
               "hs_triglycerides", "hs_fibrinogen", "hs_ast", "hs_hemophagocytosis")

#: case A of the domain notes (SLE-associated HS): total white cells not given, NK activity and
#: sCD25 not done; ANC 1 209/µL and fibrinogen 153.5 mg/dL as the laboratory reports them in G/L
CASE_A = {"temperature": "38,8", "hepatomegaly": "N", "splenomegaly": "Y",
          "immunosuppression": "N", "hemoglobin": "8,6", "neutrophils": "1,21", "platelets": "34",
          "ferritin": "2597", "triglycerides": "1,80", "fibrinogen": "1,54", "ast": "717",
          "marrow_done": "Y", "marrow_date": "02/03/2026", "hemophagocytosis": "Y",
          "marrow_result": "Rich marrow, macrophages with hemophagocytosis."}
#: case B: long-term prednisone, bone marrow not done
CASE_B = {"temperature": "39,6", "hepatomegaly": "Y", "splenomegaly": "Y",
          "immunosuppression": "Y", "hemoglobin": "8,0", "leukocytes": "2,1", "platelets": "40",
          "ferritin": "12000", "triglycerides": "4,5", "fibrinogen": "1,2", "ast": "250",
          "marrow_done": "N"}
#: case C: no fever band, ferritin below 2 000, normal fibrinogen
CASE_C = {"temperature": "38,2", "hepatomegaly": "N", "splenomegaly": "Y",
          "immunosuppression": "N", "hemoglobin": "8,5", "leukocytes": "6,0", "platelets": "90",
          "ferritin": "1800", "triglycerides": "2,0", "fibrinogen": "3,0", "ast": "45",
          "marrow_done": "Y", "marrow_date": "2026-03-02", "hemophagocytosis": "Y"}


def derived(values: dict, null_flavors: dict | None = None) -> dict:
    parsed, errors = services.parse(DEFINITION, Submitted(values, null_flavors or {}),
                                    "Europe/Paris")
    assert not errors, errors
    return services.derive(DEFINITION, parsed)


def statuses(d: dict) -> tuple[str, ...]:
    return tuple(d[k] for k in HLH_ITEMS)


def points(d: dict) -> tuple[int, ...]:
    return tuple(d[k] for k in POINT_ITEMS)


def save(subject, values, **kwargs):
    return save_form(system_actor(), subject, "hs_diagnosis", Slot("D0"), Submitted(values),
                     **kwargs)


def messages(result) -> list[str]:
    return [m for ms in result.errors.values() for m in ms]


# --- the worked cases of the domain notes ----------------------------------------------------


def test_hscore_case_a_scores_243_and_a_probability_of_99_percent():
    d = derived(CASE_A)
    assert points(d) == (0, 33, 23, 24, 35, 44, 30, 19, 35)
    assert (d["hscore"], d["hscore_probability"]) == (243, "99 %")
    assert d["hscore"] >= settings.HSCORE_MIN


def test_case_a_meets_5_hlh2004_criteria_of_the_6_assessed():
    d = derived(CASE_A)
    assert statuses(d) == ("MET", "MET", "MET", "NOT_MET", "MET", "NOT_DONE", "MET", "NOT_DONE")
    assert (d["hlh_count"], d["hlh_assessed"]) == (5, 6)


def test_fibrinogen_1_54_counts_for_the_hscore_but_not_for_hlh2004():
    d = derived(CASE_A)
    assert d["hs_fibrinogen"] == 30 and d["hlh_tg_fibrinogen"] == "NOT_MET"


def test_case_a_with_white_cells_below_5_scores_253():
    assert derived({**CASE_A, "leukocytes": "4,2"})["hscore"] == 253


def test_hscore_case_b_scores_302_above_99_percent_with_the_marrow_not_done():
    d = derived(CASE_B)
    assert points(d) == (18, 49, 38, 34, 50, 64, 30, 19, 0)
    assert (d["hscore"], d["hscore_probability"]) == (302, "> 99 %")
    assert d["hlh_hemophagocytosis"] == "NOT_DONE"


def test_hscore_case_c_scores_145_and_16_percent_below_the_inclusion_threshold():
    d = derived(CASE_C)
    assert points(d) == (0, 0, 23, 24, 0, 44, 0, 19, 35)
    assert (d["hscore"], d["hscore_probability"]) == (145, "16 %")
    assert d["hscore"] < settings.HSCORE_MIN


# --- HLH-2004 from the values as typed -------------------------------------------------------


def test_a_patient_with_fever_splenomegaly_two_cytopenias_low_fibrinogen_and_ferritin_meets_5():
    d = derived({"temperature": "38,5", "splenomegaly": "Y", "hemoglobin": "8,9",
                 "platelets": "99", "neutrophils": "2,5", "triglycerides": "1,2",
                 "fibrinogen": "1,5", "ferritin": "500", "marrow_done": "N"})
    assert statuses(d) == ("MET", "MET", "MET", "MET", "NOT_DONE", "NOT_DONE", "MET", "NOT_DONE")
    assert (d["hlh_count"], d["hlh_assessed"]) == (5, 5)
    assert d["hlh_count"] >= settings.HLH2004_MIN_CRITERIA


def test_the_same_patient_with_hemoglobin_9_and_neutrophils_normal_meets_4():
    d = derived({"temperature": "38,5", "splenomegaly": "Y", "hemoglobin": "9,0",
                 "platelets": "99", "neutrophils": "2,5", "fibrinogen": "1,5", "ferritin": "500"})
    assert d["hlh_cytopenias"] == "NOT_MET" and d["hlh_count"] == 4


def test_nk_activity_and_scd25_not_done_leave_6_criteria_assessable():
    d = derived({**CASE_A, "nk_low": "", "scd25": ""},
                {"nk_low": ("NI", "not available in the ICU"), "scd25": ("NI", "")})
    assert (d["hlh_nk"], d["hlh_scd25"]) == ("NOT_DONE", "NOT_DONE")
    assert d["hlh_assessed"] == 6


def test_all_eight_criteria_are_assessed_when_nk_activity_and_scd25_are_done():
    d = derived({**CASE_A, "nk_low": "Y", "scd25": "2400"})
    assert (d["hlh_nk"], d["hlh_scd25"]) == ("MET", "MET")
    assert (d["hlh_count"], d["hlh_assessed"]) == (7, 8)


def test_a_null_flavored_ferritin_counts_as_not_done():
    values = {k: v for k, v in CASE_A.items() if k != "ferritin"}
    d = derived(values, {"ferritin": ("NI", "sample haemolysed")})
    assert d["hlh_ferritin"] == "NOT_DONE" and d["hs_ferritin"] == 0
    assert (d["hlh_count"], d["hlh_assessed"]) == (4, 5)
    assert d["hscore"] == 243 - 35


def test_no_bone_marrow_aspirate_leaves_hemophagocytosis_not_done_and_scoring_0():
    values = {k: v for k, v in CASE_A.items()
              if k not in ("marrow_date", "hemophagocytosis", "marrow_result")}
    d = derived({**values, "marrow_done": "N"})
    assert d["hlh_hemophagocytosis"] == "NOT_DONE" and d["hs_hemophagocytosis"] == 0
    assert (d["hlh_count"], d["hscore"]) == (4, 243 - 35)


def test_an_aspirate_without_hemophagocytosis_is_not_met_and_scores_0():
    d = derived({**CASE_A, "hemophagocytosis": "N"})
    assert d["hlh_hemophagocytosis"] == "NOT_MET" and d["hs_hemophagocytosis"] == 0


def test_known_immunosuppression_adds_18_to_the_hscore():
    assert derived({**CASE_A, "immunosuppression": "Y"})["hscore"] == 243 + 18


def test_a_form_without_values_for_the_scores_has_no_count_and_no_hscore():
    d = derived({"marrow_done": "N"})
    assert statuses(d) == ("NOT_DONE",) * 8
    assert (d["hlh_count"], d["hlh_assessed"]) == (None, 0)
    assert d["hscore"] is None and d["hscore_probability"] is None
    assert points(d) == (None,) * 9


# --- entry rules -----------------------------------------------------------------------------


def test_hemophagocytosis_is_answered_only_when_the_aspirate_was_done():
    parsed, errors = services.parse(
        DEFINITION, Submitted({"marrow_done": "N", "hemophagocytosis": "Y"}), "Europe/Paris")
    assert "does not apply" in errors["hemophagocytosis"][0]


@pytest.mark.requirement("ALCOA-accurate")
def test_the_computed_items_are_never_typed(make):
    result = save(make.subject("01"), {**CASE_A, "hscore": "300", "hlh_fever": "MET"})
    assert result.outcome == "invalid"
    assert "computed by the system" in result.errors["hscore"][0]
    assert "computed by the system" in result.errors["hlh_fever"][0]


def test_the_date_of_a_bone_marrow_aspirate_done_is_required(make):
    result = save(make.subject("01"), {k: v for k, v in CASE_A.items() if k != "marrow_date"})
    assert result.outcome == "invalid"
    assert any("[HSDX-01]" in m and "give its date" in m for m in result.errors["marrow_done"])


@pytest.mark.parametrize("change, item, message", [
    ({"hemoglobin": "86"}, "hemoglobin", "must be between 1 and 25 g/dL; found 86"),
    ({"temperature": "388"}, "temperature", "must be between 25 and 45 °C; found 388"),
    ({"platelets": "34,5"}, "platelets", "A whole number is expected"),
    ({"fibrinogen": "-1"}, "fibrinogen", "must be between 0 and 20 g/L"),
    ({"ferritin": "2 597"}, "ferritin", "A whole number is expected"),
])
def test_impossible_values_are_refused_with_the_rule_and_the_value(make, change, item, message):
    result = save(make.subject("01"), {**CASE_A, **change})
    assert result.outcome == "invalid"
    assert any(message in m for m in result.errors[item]), result.errors


def test_neutrophils_above_the_white_cells_are_refused(make):
    result = save(make.subject("01"), {**CASE_A, "leukocytes": "1,0"})
    assert result.outcome == "invalid"
    assert any("[HSDX-02]" in m and "cannot exceed leukocytes" in m
               for m in result.errors["neutrophils"])


def test_a_ferritin_above_100000_asks_for_confirmation_which_is_recorded(make, db):
    subject = make.subject("01")
    first = save(subject, {**CASE_A, "ferritin": "150000"})
    assert first.outcome == "needs_confirmation"
    assert [w.check_id for w in first.warnings] == ["HS_DIAGNOSIS-ferritin-RANGE"]
    assert "found 150000" in first.warnings[0].message
    second = save(subject, {**CASE_A, "ferritin": "150000"},
                  confirmed={"HS_DIAGNOSIS-ferritin-RANGE"})
    assert second.outcome == "saved"
    assert [r.field for r in audit_rows(action="check.confirmed")] == [
        "HS_DIAGNOSIS-ferritin-RANGE"]


class MedicalHistory:
    """A cross-form context whose medical history form says what the test wants."""

    def __init__(self, values):
        self._values = values

    def values(self, crf_key, visit_key=None):
        return self._values if crf_key == "medical_history" else None


@pytest.mark.parametrize("history, warned", [
    ({"immunosuppression": "Y"}, True),
    ({"immunosuppression": "N"}, False),
    ({"immunosuppression": None}, False),  # not answered there (or a null flavor)
    (None, False),  # no medical history form yet
])
def test_immunosuppression_should_agree_with_the_medical_history(history, warned):
    parsed, _ = services.parse(DEFINITION, Submitted(CASE_A), "Europe/Paris")
    findings = services.run_checks(DEFINITION, services.derive(DEFINITION, parsed),
                                   MedicalHistory(history))
    hsdx03 = [f for f in findings if f.check_id == "HSDX-03"]
    assert bool(hsdx03) is warned
    if warned:
        assert hsdx03[0].severity == "soft"
        assert "'no' here but 'yes' on the medical history form" in hsdx03[0].message


def test_a_disagreement_with_the_medical_history_asks_for_confirmation(make):
    subject = make.subject("01")
    context = MedicalHistory({"immunosuppression": "Y"})
    first = save(subject, CASE_A, context=context)
    assert first.outcome == "needs_confirmation"
    assert [w.check_id for w in first.warnings] == ["HSDX-03"]
    assert save(subject, CASE_A, context=context, confirmed={"HSDX-03"}).outcome == "saved"


def test_without_a_medical_history_form_the_casebook_check_stays_silent(make):
    assert save(make.subject("01"), CASE_A).outcome == "saved"


def test_the_check_reads_the_medical_history_saved_in_the_casebook(make):
    subject = make.subject("01")
    history = save_form(system_actor(), subject, "medical_history", Slot("D0"),
                        Submitted({"immunosuppression": "Y"}))
    assert history.outcome == "saved"
    result = save(subject, CASE_A)
    assert result.outcome == "needs_confirmation"
    assert [w.check_id for w in result.warnings] == ["HSDX-03"]
    assert save(subject, {**CASE_A, "immunosuppression": "Y"}).outcome == "saved"


def test_every_value_answered_or_marked_not_done_makes_the_form_complete(make):
    subject = make.subject("01")
    not_done = {k: ("NI", "") for k in ("leukocytes", "scd25", "nk_low")}
    result = save_form(system_actor(), subject, "hs_diagnosis", Slot("D0"),
                       Submitted(CASE_A, not_done))
    assert result.outcome == "saved" and result.instance.status == "complete"


def test_a_value_left_empty_leaves_the_form_incomplete(make):
    result = save(make.subject("01"), CASE_A)  # white cells, sCD25 and NK activity left empty
    assert result.outcome == "saved" and result.instance.status == "incomplete"


# --- one save through the service ------------------------------------------------------------


def test_a_saved_diagnosis_stores_the_computed_items_and_recomputes_them_on_change(make):
    subject = make.subject("01")
    first = save(subject, CASE_A)
    assert first.outcome == "saved"
    stored = services.instance_values(first.instance, DEFINITION)
    assert statuses(stored) == ("MET", "MET", "MET", "NOT_MET", "MET", "NOT_DONE", "MET",
                                "NOT_DONE")
    assert (stored["hlh_count"], stored["hlh_assessed"]) == (5, 6)
    assert (stored["hscore"], stored["hscore_probability"]) == (243, "99 %")
    created = {r.item: (r.value.new_value, r.reason_text)
               for r in audit_rows(action="item.create") if r.item in ("hscore", "hlh_count",
                                                                        "hlh_tg_fibrinogen")}
    assert created == {"hscore": ("243", "derived value recalculated"),
                       "hlh_count": ("5", "derived value recalculated"),
                       "hlh_tg_fibrinogen": ("NOT_MET", "derived value recalculated")}

    not_yet = save(subject, {**CASE_A, "ferritin": "6500"})
    assert not_yet.outcome == "needs_reason" and not_yet.changed == ["ferritin"]
    again = save(subject, {**CASE_A, "ferritin": "6500"},
                 reason=Reason("entry_error", "ferritin 6 500 on the lab report"))
    assert again.outcome == "saved"
    assert services.instance_values(again.instance, DEFINITION)["hscore"] == 258
    updates = {r.item: (r.value.old_value, r.value.new_value, r.reason_code, r.reason_text)
               for r in audit_rows(action="item.update")}
    assert updates == {
        "ferritin": ("2597", "6500", "entry_error", "ferritin 6 500 on the lab report"),
        "hs_ferritin": ("35", "50", "system", "derived value recalculated"),
        "hscore": ("243", "258", "system", "derived value recalculated"),
        "hscore_probability": ("99 %", "> 99 %", "system", "derived value recalculated"),
    }


def test_the_saved_counts_are_what_inclusion_criterion_i2_reads(make):
    from ecrf.study.eligibility import for_subject

    subject = make.subject("01")
    assert save(subject, CASE_C).outcome == "saved"
    i2 = next(c for c in for_subject(subject).criteria if c.id == "I2")
    assert i2.met is False and "HScore 145" in i2.detail
