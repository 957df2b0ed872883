"""HLH-2004 criteria (Henter 2007): each threshold on both sides, combined criteria, "not done", case A."""

from __future__ import annotations

import pytest

from ecrf.scores.hlh2004 import CRITERIA, Status, hlh2004

pytestmark = pytest.mark.requirement("E6-4.3.4")

MET, NOT_MET, NOT_DONE = Status.MET, Status.NOT_MET, Status.NOT_DONE

# A patient meeting none of the eight criteria, all assessed; each test changes only what it is about.
NEGATIVE = dict(
    fever_c=37.0, splenomegaly=False, hemoglobin_g_dl=12.0, platelets_g_l=200, neutrophils_g_l=3.0,
    triglycerides_mmol_l=1.0, fibrinogen_g_l=3.0, hemophagocytosis=False, nk_activity_low=False,
    ferritin_ug_l=200, scd25_u_ml=800,
)
NOTHING = {name: None for name in NEGATIVE}


def assess(**changes):
    return hlh2004(**{**NEGATIVE, **changes})


def test_negative_patient_meets_none_of_eight_assessed():
    result = assess()
    assert (result.criteria_met, result.criteria_assessed) == (0, 8)
    assert dict(result.status) == dict.fromkeys(CRITERIA, NOT_MET)
    assert result.not_assessed == ()
    assert not result.meets_criteria


# --- Worked case A (README §3-4) --------------------------------------------------------------------------

CASE_A = dict(
    fever_c=38.8, splenomegaly=True, hemoglobin_g_dl=8.6, platelets_g_l=34, neutrophils_g_l=1.209,
    triglycerides_mmol_l=1.80, fibrinogen_g_l=1.535, hemophagocytosis=True, nk_activity_low=None,
    ferritin_ug_l=2597, scd25_u_ml=None,
)


def test_case_a_meets_5_of_6_assessed_criteria():
    result = hlh2004(**CASE_A)
    assert dict(result.status) == {
        "fever": MET, "splenomegaly": MET, "cytopenias": MET, "triglycerides_fibrinogen": NOT_MET,
        "hemophagocytosis": MET, "nk_activity": NOT_DONE, "ferritin": MET, "scd25": NOT_DONE,
    }
    assert (result.criteria_met, result.criteria_assessed) == (5, 6)
    assert result.not_assessed == ("nk_activity", "scd25")
    assert result.meets_criteria


# --- Single-value thresholds ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("changes", "criterion", "status"),
    [
        pytest.param({"fever_c": 38.5}, "fever", MET, id="fever exactly 38.5 is met"),
        pytest.param({"fever_c": 38.4}, "fever", NOT_MET, id="fever 38.4 is not met"),
        pytest.param({"ferritin_ug_l": 500}, "ferritin", MET, id="ferritin exactly 500 is met"),
        pytest.param({"ferritin_ug_l": 499}, "ferritin", NOT_MET, id="ferritin 499 is not met"),
        pytest.param({"scd25_u_ml": 2400}, "scd25", MET, id="sCD25 exactly 2400 is met"),
        pytest.param({"scd25_u_ml": 2399}, "scd25", NOT_MET, id="sCD25 2399 is not met"),
        pytest.param({"splenomegaly": True}, "splenomegaly", MET, id="splenomegaly present is met"),
        pytest.param({"hemophagocytosis": True}, "hemophagocytosis", MET, id="hemophagocytosis seen is met"),
        pytest.param({"nk_activity_low": True}, "nk_activity", MET, id="low NK activity is met"),
    ],
)
def test_single_criteria(changes, criterion, status):
    result = assess(**changes)
    assert result.status[criterion] == status
    assert result.criteria_met == (status == MET)


# --- Criterion 3: cytopenias affecting >= 2 of 3 lineages ------------------------------------------------

# Each lineage threshold is strict ("<"): pair it with one other cytopenic lineage.
@pytest.mark.parametrize(
    ("changes", "status"),
    [
        pytest.param({"hemoglobin_g_dl": 8.9}, MET, id="Hb 8.9 g/dL counts"),
        pytest.param({"hemoglobin_g_dl": 9.0}, NOT_MET, id="Hb exactly 9.0 g/dL does not count"),
        pytest.param({"neutrophils_g_l": 0.99}, MET, id="neutrophils 0.99 x10^9/L count"),
        pytest.param({"neutrophils_g_l": 1.0}, NOT_MET, id="neutrophils exactly 1.0 x10^9/L do not count"),
    ],
)
def test_cytopenia_lineage_thresholds_with_low_platelets(changes, status):
    assert assess(platelets_g_l=50, **changes).status["cytopenias"] == status


@pytest.mark.parametrize(
    ("platelets", "status"),
    [
        pytest.param(99, MET, id="platelets 99 x10^9/L count"),
        pytest.param(100, NOT_MET, id="platelets exactly 100 x10^9/L do not count"),
    ],
)
def test_platelet_threshold_with_low_hemoglobin(platelets, status):
    assert assess(hemoglobin_g_dl=8.0, platelets_g_l=platelets).status["cytopenias"] == status


@pytest.mark.parametrize(
    ("hemoglobin", "platelets", "neutrophils", "status"),
    [
        pytest.param(8.0, 200, 3.0, NOT_MET, id="one lineage is not enough"),
        pytest.param(8.0, 50, 3.0, MET, id="two lineages meet the criterion"),
        pytest.param(8.0, 50, 0.5, MET, id="three lineages meet the criterion"),
        pytest.param(8.0, 50, None, MET, id="two low lineages suffice with the third not done"),
        pytest.param(12.0, 200, None, NOT_MET, id="two normal lineages exclude it with the third not done"),
        pytest.param(8.0, 200, None, NOT_DONE, id="one low, one normal, one not done is undecided"),
        pytest.param(8.0, None, None, NOT_DONE, id="one low lineage and two not done is undecided"),
        pytest.param(None, None, None, NOT_DONE, id="no blood count is not done"),
    ],
)
def test_cytopenias_need_two_of_three_lineages(hemoglobin, platelets, neutrophils, status):
    result = assess(hemoglobin_g_dl=hemoglobin, platelets_g_l=platelets, neutrophils_g_l=neutrophils)
    assert result.status["cytopenias"] == status


# --- Criterion 4: hypertriglyceridemia and/or hypofibrinogenemia -----------------------------------------

@pytest.mark.parametrize(
    ("triglycerides", "fibrinogen", "status"),
    [
        pytest.param(3.0, 3.0, MET, id="TG exactly 3.0 mmol/L is met"),
        pytest.param(2.99, 3.0, NOT_MET, id="TG 2.99 mmol/L is not met"),
        pytest.param(1.0, 1.5, MET, id="fibrinogen exactly 1.5 g/L is met"),
        pytest.param(1.0, 1.535, NOT_MET, id="fibrinogen 1.535 g/L is not met (case A)"),
        pytest.param(1.0, 1.51, NOT_MET, id="fibrinogen 1.51 g/L is not met"),
        pytest.param(4.0, 1.0, MET, id="both abnormal count once"),
        pytest.param(4.0, None, MET, id="high TG suffices with fibrinogen not done"),
        pytest.param(None, 1.0, MET, id="low fibrinogen suffices with TG not done"),
        pytest.param(1.0, None, NOT_DONE, id="normal TG with fibrinogen not done is undecided"),
        pytest.param(None, 3.0, NOT_DONE, id="normal fibrinogen with TG not done is undecided"),
        pytest.param(None, None, NOT_DONE, id="neither done"),
    ],
)
def test_triglycerides_and_or_fibrinogen_is_one_criterion(triglycerides, fibrinogen, status):
    result = assess(triglycerides_mmol_l=triglycerides, fibrinogen_g_l=fibrinogen)
    assert result.status["triglycerides_fibrinogen"] == status
    assert result.criteria_met == (status == MET)


# --- Counting and "not done" ------------------------------------------------------------------------------

def test_nothing_done_assesses_no_criterion():
    result = hlh2004(**NOTHING)
    assert (result.criteria_met, result.criteria_assessed) == (0, 0)
    assert result.not_assessed == CRITERIA
    assert all(status == NOT_DONE for status in result.status.values())


def test_nk_activity_and_scd25_not_done_leave_six_assessable():
    result = assess(nk_activity_low=None, scd25_u_ml=None)
    assert result.criteria_assessed == 6
    assert result.not_assessed == ("nk_activity", "scd25")


@pytest.mark.parametrize(
    ("met", "diagnostic"),
    [pytest.param(4, False, id="4 criteria are not enough"), pytest.param(5, True, id="5 criteria are")],
)
def test_five_criteria_make_the_diagnosis(met, diagnostic):
    positives = [
        {"fever_c": 39.0}, {"splenomegaly": True}, {"ferritin_ug_l": 5000}, {"hemophagocytosis": True},
        {"scd25_u_ml": 5000},
    ][:met]
    result = assess(**{key: value for change in positives for key, value in change.items()})
    assert result.criteria_met == met
    assert result.meets_criteria is diagnostic


def test_status_values_read_as_on_the_form():
    assert [str(status) for status in Status] == ["met", "not met", "not done"]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param({"hemophagocytosis": 1}, TypeError, id="an observation is True or False"),
        pytest.param({"ferritin_ug_l": "high"}, TypeError, id="a value is a number"),
        pytest.param({"fever_c": float("inf")}, ValueError, id="a value is finite"),
    ],
)
def test_bad_inputs_are_refused(changes, error):
    with pytest.raises(error):
        assess(**changes)
