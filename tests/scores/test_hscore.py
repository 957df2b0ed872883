"""HScore (Fardet 2014): points table and its boundaries, probability table, README §3 cases A, B, C."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecrf.scores.hscore import ITEMS, MAX_TOTAL, PROBABILITY_TABLE, hscore, hscore_probability

pytestmark = pytest.mark.requirement("E6-4.3.4")

# A patient scoring 0 on every item; each test changes only what it is about.
NEUTRAL = dict(
    immunosuppression=False, temperature_c=37.0, hepatomegaly=False, splenomegaly=False, hemoglobin_g_dl=13.0,
    leukocytes_g_l=7.0, platelets_g_l=250, ferritin_ng_ml=300, triglycerides_mmol_l=1.0, fibrinogen_g_l=4.0,
    ast_u_l=20, bone_marrow_hemophagocytosis=False,
)
NOTHING = {name: None for name in NEUTRAL}


def score(**changes):
    return hscore(**{**NEUTRAL, **changes})


def test_neutral_patient_scores_zero():
    result = score()
    assert result.total == 0
    assert dict(result.points) == dict.fromkeys(ITEMS, 0)
    assert result.missing == ()


# --- Worked cases (README §3) -----------------------------------------------------------------------------

CASE_A = dict(  # SLE-associated HS case report; total WBC not given
    immunosuppression=False, temperature_c=38.8, hepatomegaly=False, splenomegaly=True, hemoglobin_g_dl=8.6,
    leukocytes_g_l=None, platelets_g_l=34, ferritin_ng_ml=2597, triglycerides_mmol_l=1.80,
    fibrinogen_g_l=1.535, ast_u_l=717, bone_marrow_hemophagocytosis=True,
)
CASE_B = dict(
    immunosuppression=True, temperature_c=39.6, hepatomegaly=True, splenomegaly=True, hemoglobin_g_dl=8.0,
    leukocytes_g_l=2.1, platelets_g_l=40, ferritin_ng_ml=12000, triglycerides_mmol_l=4.5, fibrinogen_g_l=1.2,
    ast_u_l=250, bone_marrow_hemophagocytosis=None,
)
CASE_C = dict(
    immunosuppression=False, temperature_c=38.2, hepatomegaly=False, splenomegaly=True, hemoglobin_g_dl=8.5,
    leukocytes_g_l=6.0, platelets_g_l=90, ferritin_ng_ml=1800, triglycerides_mmol_l=2.0, fibrinogen_g_l=3.0,
    ast_u_l=45, bone_marrow_hemophagocytosis=True,
)


@pytest.mark.parametrize(
    ("case", "points", "total", "probability"),
    [
        pytest.param(CASE_A, (0, 33, 23, 24, 35, 44, 30, 19, 35), 243, "99 %", id="case A: 243, ~99 %"),
        pytest.param(CASE_B, (18, 49, 38, 34, 50, 64, 30, 19, 0), 302, "> 99 %", id="case B: 302, > 99 %"),
        pytest.param(CASE_C, (0, 0, 23, 24, 0, 44, 0, 19, 35), 145, "16 %", id="case C: 145, 16-25 %"),
    ],
)
def test_worked_cases(case, points, total, probability):
    result = hscore(**case)
    assert tuple(result.points[item] for item in ITEMS) == points
    assert result.total == total
    assert str(result.probability) == probability


def test_case_a_meets_the_jakahdi_threshold_and_case_c_does_not():
    assert hscore(**CASE_A).total >= 200
    assert hscore(**CASE_C).total < 200


def test_case_a_with_leukocytes_at_most_5_scores_253():
    result = hscore(**{**CASE_A, "leukocytes_g_l": 5.0})
    assert result.points["cytopenias"] == 34
    assert result.total == 253


def test_case_a_lists_the_unknown_leukocyte_count_as_missing():
    assert hscore(**CASE_A).missing == ("leukocytes_g_l",)


def test_case_b_marrow_not_done_is_missing_and_scores_0():
    result = hscore(**CASE_B)
    assert result.points["bone_marrow_hemophagocytosis"] == 0
    assert result.missing == ("bone_marrow_hemophagocytosis",)


# --- Points table boundaries ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("changes", "item", "points"),
    [
        pytest.param({"temperature_c": 38.3}, "temperature", 0, id="temperature 38.3 scores 0"),
        pytest.param({"temperature_c": 38.4}, "temperature", 33, id="temperature exactly 38.4 scores 33"),
        pytest.param({"temperature_c": 39.4}, "temperature", 33, id="temperature exactly 39.4 scores 33"),
        pytest.param({"temperature_c": 39.5}, "temperature", 49, id="temperature 39.5 scores 49"),
        pytest.param({"ferritin_ng_ml": 1999}, "ferritin", 0, id="ferritin 1999 scores 0"),
        pytest.param({"ferritin_ng_ml": 2000}, "ferritin", 35, id="ferritin exactly 2000 scores 35"),
        pytest.param({"ferritin_ng_ml": 6000}, "ferritin", 35, id="ferritin exactly 6000 scores 35"),
        pytest.param({"ferritin_ng_ml": 6001}, "ferritin", 50, id="ferritin 6001 scores 50"),
        pytest.param({"triglycerides_mmol_l": 1.49}, "triglycerides", 0, id="TG 1.49 scores 0"),
        pytest.param({"triglycerides_mmol_l": 1.5}, "triglycerides", 44, id="TG exactly 1.5 scores 44"),
        pytest.param({"triglycerides_mmol_l": 4.0}, "triglycerides", 44, id="TG exactly 4.0 scores 44"),
        pytest.param({"triglycerides_mmol_l": 4.01}, "triglycerides", 64, id="TG 4.01 scores 64"),
        pytest.param({"fibrinogen_g_l": 2.5}, "fibrinogen", 30, id="fibrinogen exactly 2.5 g/L scores 30"),
        pytest.param({"fibrinogen_g_l": 2.51}, "fibrinogen", 0, id="fibrinogen 2.51 g/L scores 0"),
        pytest.param({"ast_u_l": 29}, "ast", 0, id="AST 29 scores 0"),
        pytest.param({"ast_u_l": 30}, "ast", 19, id="AST exactly 30 scores 19"),
        pytest.param({"immunosuppression": True}, "immunosuppression", 18, id="immunosuppression scores 18"),
        pytest.param(
            {"bone_marrow_hemophagocytosis": True}, "bone_marrow_hemophagocytosis", 35,
            id="marrow hemophagocytosis scores 35",
        ),
    ],
)
def test_item_boundaries(changes, item, points):
    result = score(**changes)
    assert result.points[item] == points
    assert result.total == points


@pytest.mark.parametrize(
    ("hepatomegaly", "splenomegaly", "points"),
    [
        pytest.param(False, False, 0, id="no organomegaly scores 0"),
        pytest.param(True, False, 23, id="hepatomegaly alone scores 23"),
        pytest.param(False, True, 23, id="splenomegaly alone scores 23"),
        pytest.param(True, True, 38, id="hepatomegaly and splenomegaly score 38"),
    ],
)
def test_organomegaly_combines_liver_and_spleen(hepatomegaly, splenomegaly, points):
    assert score(hepatomegaly=hepatomegaly, splenomegaly=splenomegaly).points["organomegaly"] == points


@pytest.mark.parametrize(
    ("hemoglobin", "leukocytes", "platelets", "points"),
    [
        pytest.param(13.0, 7.0, 250, 0, id="no cytopenic lineage scores 0"),
        pytest.param(8.0, 7.0, 250, 0, id="one lineage scores 0"),
        pytest.param(8.0, 3.0, 250, 24, id="two lineages score 24"),
        pytest.param(8.0, 3.0, 50, 34, id="three lineages score 34"),
    ],
)
def test_cytopenias_count_lineages(hemoglobin, leukocytes, platelets, points):
    result = score(hemoglobin_g_dl=hemoglobin, leukocytes_g_l=leukocytes, platelets_g_l=platelets)
    assert result.points["cytopenias"] == points


# Each lineage threshold is inclusive: pair it with a second cytopenic lineage (24) or not (0).
@pytest.mark.parametrize(
    ("changes", "points"),
    [
        pytest.param({"hemoglobin_g_dl": 9.2}, 24, id="Hb exactly 9.2 g/dL counts"),
        pytest.param({"hemoglobin_g_dl": 9.3}, 0, id="Hb 9.3 g/dL does not count"),
        pytest.param({"leukocytes_g_l": 5.0}, 24, id="leukocytes exactly 5 x10^9/L count"),
        pytest.param({"leukocytes_g_l": 5.1}, 0, id="leukocytes 5.1 x10^9/L do not count"),
        pytest.param({"platelets_g_l": 110}, 24, id="platelets exactly 110 x10^9/L count"),
        pytest.param({"platelets_g_l": 111}, 0, id="platelets 111 x10^9/L do not count"),
    ],
)
def test_cytopenia_lineage_thresholds(changes, points):
    other = "platelets_g_l" if "platelets_g_l" not in changes else "hemoglobin_g_dl"
    second_lineage = {"platelets_g_l": 50, "hemoglobin_g_dl": 8.0}[other]
    assert score(**changes, **{other: second_lineage}).points["cytopenias"] == points


def test_leukocytes_not_neutrophils_define_the_white_cell_lineage():
    # Case A's ANC of 1.209 x10^9/L is not a leukocyte count: only Hb and platelets count.
    assert hscore(**CASE_A).points["cytopenias"] == 24


# --- Missing inputs ---------------------------------------------------------------------------------------

def test_nothing_recorded_scores_0_with_every_input_missing():
    result = hscore(**NOTHING)
    assert result.total == 0
    assert result.missing == tuple(NEUTRAL)
    assert str(result.probability) == "< 1 %"


def test_unknown_hepatomegaly_with_splenomegaly_scores_23():
    result = score(hepatomegaly=None, splenomegaly=True)
    assert result.points["organomegaly"] == 23
    assert result.missing == ("hepatomegaly",)


def test_an_unknown_lineage_does_not_count():
    result = score(hemoglobin_g_dl=8.0, leukocytes_g_l=None, platelets_g_l=50)
    assert result.points["cytopenias"] == 24
    assert result.missing == ("leukocytes_g_l",)


def test_maximum_is_337_and_302_without_bone_marrow():
    worst = dict(CASE_B, bone_marrow_hemophagocytosis=True)
    assert hscore(**worst).total == MAX_TOTAL == 337
    assert hscore(**dict(worst, bone_marrow_hemophagocytosis=None)).total == 302


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param({"splenomegaly": "yes"}, TypeError, id="an observation is True or False"),
        pytest.param({"ferritin_ng_ml": "2000"}, TypeError, id="a value is a number"),
        pytest.param({"ast_u_l": -1}, ValueError, id="a value is not negative"),
    ],
)
def test_bad_inputs_are_refused(changes, error):
    with pytest.raises(error):
        score(**changes)


# --- Probability table ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("total", "probability"),
    [
        pytest.param(0, "< 1 %", id="0 -> < 1 %"),
        pytest.param(90, "< 1 %", id="90 -> < 1 %"),
        pytest.param(99, "< 1 %", id="99 -> < 1 % (row 90)"),
        pytest.param(100, "1 %", id="100 -> 1 %"),
        pytest.param(145, "16 %", id="145 -> 16 % (row 140)"),
        pytest.param(169, "40 %", id="169 -> 40 % (best cut-off, row 160)"),
        pytest.param(170, "54 %", id="170 -> 54 % (table, not the logistic formula's 69 %)"),
        pytest.param(199, "80 %", id="199 -> 80 %"),
        pytest.param(200, "88 %", id="200 -> 88 %"),
        pytest.param(205, "88 %", id="205 -> 88 %"),
        pytest.param(249, "99 %", id="249 -> 99 %"),
        pytest.param(250, "> 99 %", id="250 -> > 99 %"),
        pytest.param(337, "> 99 %", id="337 -> > 99 %"),
    ],
)
def test_probability_is_the_highest_row_not_above_the_score(total, probability):
    assert str(hscore_probability(total)) == probability


@pytest.mark.parametrize(("row", "percent", "qualifier"), PROBABILITY_TABLE)
def test_each_published_row_is_returned_at_its_own_score(row, percent, qualifier):
    result = hscore_probability(row)
    assert (result.row, result.percent, result.qualifier) == (row, percent, qualifier)


@pytest.mark.parametrize("total", [-1, 338, 200.5, True])
def test_probability_refuses_impossible_scores(total):
    with pytest.raises(ValueError, match="0 to 337"):
        hscore_probability(total)


def test_probability_is_monotonic_over_every_possible_score():
    rows = [hscore_probability(total) for total in range(MAX_TOTAL + 1)]
    assert rows == sorted(rows)
    assert [row.percent for row in rows] == sorted(row.percent for row in rows)


# --- Properties -------------------------------------------------------------------------------------------

def maybe(strategy):
    return st.none() | strategy


HSCORE_INPUTS = dict(
    immunosuppression=maybe(st.booleans()),
    temperature_c=maybe(st.floats(min_value=34, max_value=42)),
    hepatomegaly=maybe(st.booleans()),
    splenomegaly=maybe(st.booleans()),
    hemoglobin_g_dl=maybe(st.floats(min_value=2, max_value=20)),
    leukocytes_g_l=maybe(st.floats(min_value=0, max_value=100)),
    platelets_g_l=maybe(st.floats(min_value=0, max_value=1000)),
    ferritin_ng_ml=maybe(st.floats(min_value=0, max_value=100000)),
    triglycerides_mmol_l=maybe(st.floats(min_value=0, max_value=30)),
    fibrinogen_g_l=maybe(st.floats(min_value=0, max_value=10)),
    ast_u_l=maybe(st.floats(min_value=0, max_value=10000)),
    bone_marrow_hemophagocytosis=maybe(st.booleans()),
)


@settings(database=None, max_examples=300)
@given(**HSCORE_INPUTS)
def test_total_lies_in_0_to_337_and_is_the_sum_of_the_points(**inputs):
    result = hscore(**inputs)
    assert 0 <= result.total <= MAX_TOTAL
    assert result.total == sum(result.points.values())
    assert tuple(result.points) == ITEMS
    assert result.probability == hscore_probability(result.total)


@settings(database=None, max_examples=300)
@given(first=st.fixed_dictionaries(HSCORE_INPUTS), second=st.fixed_dictionaries(HSCORE_INPUTS))
def test_probability_is_monotonic_in_the_score(first, second):
    low, high = sorted((hscore(**first), hscore(**second)), key=lambda result: result.total)
    assert low.probability <= high.probability
    assert low.probability.percent <= high.probability.percent
