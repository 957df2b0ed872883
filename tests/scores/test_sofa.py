"""SOFA (Vincent 1996 as tabulated for Sepsis-3): every boundary rule of README §2, units, the worked case."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecrf.scores.sofa import COMPONENTS, pao2_fio2_ratio, sofa

pytestmark = pytest.mark.requirement("E6-4.3.4")

# A patient whose six components all score 0; each test changes only what it is about.
NORMAL = dict(
    pao2_fio2=450, respiratory_support=False, platelets=250, bilirubin=0.6, bilirubin_unit="mg/dL",
    map_mmhg=85, dopamine=None, dobutamine=None, epinephrine=None, norepinephrine=None, gcs=15,
    creatinine=0.8, creatinine_unit="mg/dL", urine_output_ml_day=1800,
)
NOTHING = {name: None for name in NORMAL}


def score(**changes):
    return sofa(**{**NORMAL, **changes})


def test_normal_patient_scores_zero():
    result = score()
    assert result.total == 0
    assert result.missing == ()
    assert dict(result.components) == dict.fromkeys(COMPONENTS, 0)


# --- Worked example (README §2) ---------------------------------------------------------------------------

WORKED_CASE = dict(
    pao2_fio2=180, respiratory_support=True, platelets=35, bilirubin=43, bilirubin_unit="umol/L",
    map_mmhg=None, dopamine=None, dobutamine=None, epinephrine=None, norepinephrine=0.15, gcs=15,
    creatinine=186, creatinine_unit="umol/L", urine_output_ml_day=None,
)


def test_worked_case_on_invasive_ventilation_scores_14():
    result = sofa(**WORKED_CASE)
    assert (result.respiration, result.coagulation, result.liver) == (3, 3, 2)
    assert (result.cardiovascular, result.cns, result.renal) == (4, 0, 2)
    assert result.total == 14
    assert result.missing == ()


def test_worked_case_without_respiratory_support_scores_13():
    result = sofa(**{**WORKED_CASE, "respiratory_support": False})
    assert result.respiration == 2
    assert result.total == 13


# --- Respiration ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("pao2_fio2", "support", "points"),
    [
        pytest.param(400, False, 0, id="P/F exactly 400 scores 0"),
        pytest.param(399, False, 1, id="P/F 399 scores 1"),
        pytest.param(399.9, False, 1, id="P/F 399.9 scores 1 (< 400)"),
        pytest.param(300, False, 1, id="P/F exactly 300 scores 1"),
        pytest.param(299, False, 2, id="P/F 299 scores 2"),
        pytest.param(200, True, 2, id="P/F exactly 200 with support scores 2"),
        pytest.param(199, True, 3, id="P/F 199 with support scores 3"),
        pytest.param(100, True, 3, id="P/F exactly 100 with support scores 3"),
        pytest.param(99, True, 4, id="P/F 99 with support scores 4"),
    ],
)
def test_respiration_bands(pao2_fio2, support, points):
    assert score(pao2_fio2=pao2_fio2, respiratory_support=support).respiration == points


@pytest.mark.parametrize(
    ("pao2_fio2", "with_support", "without_support"),
    [
        pytest.param(199, 3, 2, id="P/F 199: 3 with support, 2 without"),
        pytest.param(99, 4, 2, id="P/F 99: 4 with support, 2 without"),
        pytest.param(40, 4, 2, id="P/F 40: 4 with support, 2 without"),
    ],
)
def test_respiration_3_and_4_need_respiratory_support(pao2_fio2, with_support, without_support):
    assert score(pao2_fio2=pao2_fio2, respiratory_support=True).respiration == with_support
    assert score(pao2_fio2=pao2_fio2, respiratory_support=False).respiration == without_support


@pytest.mark.parametrize("pao2_fio2", [450, 250, 200])
def test_respiratory_support_may_be_unrecorded_when_it_cannot_change_the_score(pao2_fio2):
    assert score(pao2_fio2=pao2_fio2, respiratory_support=None).respiration == score(
        pao2_fio2=pao2_fio2, respiratory_support=False
    ).respiration


def test_respiratory_support_must_be_recorded_below_200():
    with pytest.raises(ValueError, match="respiratory_support must be recorded"):
        score(pao2_fio2=150, respiratory_support=None)


# --- P/F ratio from PaO2 and FiO2 -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("pao2", "pao2_unit", "fio2", "fio2_unit", "ratio"),
    [
        pytest.param(90, "mmHg", 45, "%", 200.0, id="90 mmHg at 45 % is 200"),
        pytest.param(90, "mmHg", 0.45, "fraction", 200.0, id="90 mmHg at 0.45 is 200"),
        pytest.param(84, "mmHg", 21, "%", 400.0, id="84 mmHg on room air (21 %) is 400"),
        pytest.param(60, "mmHg", 100, "%", 60.0, id="FiO2 100 % equals fraction 1.0"),
        pytest.param(12, "kPa", 0.5, "fraction", 180.01488, id="12 kPa at 0.5 is 180.01 mmHg"),
        pytest.param(10, "kPa", 1, "fraction", 75.0062, id="1 kPa is 7.50062 mmHg"),
    ],
)
def test_pao2_fio2_ratio_units(pao2, pao2_unit, fio2, fio2_unit, ratio):
    assert pao2_fio2_ratio(pao2, pao2_unit, fio2, fio2_unit) == pytest.approx(ratio, abs=1e-9)


# In binary floating point 56 / 0.28 is 199.99999999999997 (and 112 / 0.28, 84 / 0.28, 55 / 0.55 fall just
# below 400, 300, 100); the helper computes in decimal so a ratio exactly at a threshold stays on it.
@pytest.mark.parametrize(
    ("pao2", "fio2_percent", "points"),
    [
        pytest.param(112, 28, 0, id="112 mmHg at 28 % is exactly 400 and scores 0"),
        pytest.param(84, 28, 1, id="84 mmHg at 28 % is exactly 300 and scores 1"),
        pytest.param(56, 28, 2, id="56 mmHg at 28 % is exactly 200 and scores 2 even with support"),
        pytest.param(55, 55, 3, id="55 mmHg at 55 % is exactly 100 and scores 3"),
    ],
)
def test_a_ratio_exactly_at_a_threshold_stays_on_it(pao2, fio2_percent, points):
    ratio = pao2_fio2_ratio(pao2, "mmHg", fio2_percent, "%")
    assert ratio in (100.0, 200.0, 300.0, 400.0)
    assert score(pao2_fio2=ratio, respiratory_support=True).respiration == points


@pytest.mark.parametrize(
    ("kpa", "points"),
    [
        pytest.param(53.4, 0, id="53.4 kPa (400.5 mmHg) scores 0"),
        pytest.param(53.3, 1, id="53.3 kPa (399.8 mmHg) scores 1: banded in mmHg after conversion"),
        pytest.param(40, 1, id="40 kPa (300.02 mmHg) scores 1"),
        pytest.param(39.9, 2, id="39.9 kPa (299.3 mmHg) scores 2"),
    ],
)
def test_kpa_is_converted_to_mmhg_before_banding(kpa, points):
    ratio = pao2_fio2_ratio(kpa, "kPa", 1.0, "fraction")
    assert score(pao2_fio2=ratio).respiration == points


@pytest.mark.parametrize(
    ("fio2", "fio2_unit"),
    [
        pytest.param(20, "%", id="FiO2 20 % is below room air"),
        pytest.param(0.20, "fraction", id="FiO2 0.20 is below room air"),
        pytest.param(101, "%", id="FiO2 101 % is above 100 %"),
        pytest.param(1.01, "fraction", id="FiO2 1.01 is above 1.0"),
        pytest.param(0, "%", id="FiO2 0 %"),
    ],
)
def test_impossible_fio2_is_refused(fio2, fio2_unit):
    with pytest.raises(ValueError, match=r"FiO2 must be between 0\.21 and 1\.0"):
        pao2_fio2_ratio(80, "mmHg", fio2, fio2_unit)


@pytest.mark.parametrize(("fio2", "unit"), [(0.21, "fraction"), (1.0, "fraction"), (21, "%"), (100, "%")])
def test_fio2_limits_are_accepted(fio2, unit):
    assert pao2_fio2_ratio(80, "mmHg", fio2, unit) > 0


def test_percentage_entered_as_fraction_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="percentage entered with unit \"fraction\""):
        pao2_fio2_ratio(80, "mmHg", 40, "fraction")


def test_fraction_entered_as_percentage_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="fraction entered with unit \"%\""):
        pao2_fio2_ratio(80, "mmHg", 0.4, "%")


@pytest.mark.parametrize(
    ("pao2", "pao2_unit", "fio2_unit", "message"),
    [
        pytest.param(80, "torr", "%", "pao2_unit", id="unknown PaO2 unit"),
        pytest.param(80, "mmHg", "ratio", "fio2_unit", id="unknown FiO2 unit"),
        pytest.param(0, "mmHg", "%", "pao2 must be greater than 0", id="PaO2 of 0"),
        pytest.param(-5, "kPa", "%", "pao2 must be >= 0", id="negative PaO2"),
    ],
)
def test_pao2_fio2_ratio_refuses_bad_input(pao2, pao2_unit, fio2_unit, message):
    with pytest.raises(ValueError, match=message):
        pao2_fio2_ratio(pao2, pao2_unit, 50, fio2_unit)


# --- Coagulation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("platelets", "points"),
    [
        pytest.param(150, 0, id="platelets exactly 150 score 0"),
        pytest.param(149, 1, id="platelets 149 score 1"),
        pytest.param(100, 1, id="platelets exactly 100 score 1"),
        pytest.param(99, 2, id="platelets 99 score 2"),
        pytest.param(50, 2, id="platelets exactly 50 score 2"),
        pytest.param(49, 3, id="platelets 49 score 3"),
        pytest.param(20, 3, id="platelets exactly 20 score 3"),
        pytest.param(19, 4, id="platelets 19 score 4"),
        pytest.param(0, 4, id="platelets 0 score 4"),
    ],
)
def test_coagulation_bands(platelets, points):
    assert score(platelets=platelets).coagulation == points


# --- Liver ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("bilirubin_mg_dl", "points"),
    [
        pytest.param(1.1, 0, id="bilirubin 1.1 mg/dL scores 0"),
        pytest.param(1.2, 1, id="bilirubin exactly 1.2 mg/dL scores 1"),
        pytest.param(1.9, 1, id="bilirubin 1.9 mg/dL scores 1"),
        pytest.param(1.99, 1, id="bilirubin 1.99 mg/dL scores 1 (bands closed at lower bound)"),
        pytest.param(2.0, 2, id="bilirubin exactly 2.0 mg/dL scores 2"),
        pytest.param(5.9, 2, id="bilirubin 5.9 mg/dL scores 2"),
        pytest.param(6.0, 3, id="bilirubin exactly 6.0 mg/dL scores 3"),
        pytest.param(11.9, 3, id="bilirubin 11.9 mg/dL scores 3"),
        pytest.param(12.0, 4, id="bilirubin exactly 12.0 mg/dL scores 4"),
        pytest.param(25.0, 4, id="bilirubin 25 mg/dL scores 4"),
    ],
)
def test_liver_bands(bilirubin_mg_dl, points):
    assert score(bilirubin=bilirubin_mg_dl, bilirubin_unit="mg/dL").liver == points


@pytest.mark.parametrize(
    ("mg_dl", "umol_l"),
    [
        pytest.param(1.2, 20.52, id="1.2 mg/dL == 20.52 umol/L"),
        pytest.param(2.0, 34.2, id="2.0 mg/dL == 34.2 umol/L"),
        pytest.param(6.0, 102.6, id="6.0 mg/dL == 102.6 umol/L"),
        pytest.param(12.0, 205.2, id="12.0 mg/dL == 205.2 umol/L"),
    ],
)
def test_bilirubin_in_umol_l_scores_like_the_same_value_in_mg_dl(mg_dl, umol_l):
    in_mg = score(bilirubin=mg_dl, bilirubin_unit="mg/dL").liver
    in_umol = score(bilirubin=umol_l, bilirubin_unit="umol/L").liver
    assert in_umol == in_mg
    assert in_umol > score(bilirubin=mg_dl - 0.01, bilirubin_unit="mg/dL").liver


@pytest.mark.parametrize(
    ("umol_l", "points"),
    [
        pytest.param(34.1, 1, id="bilirubin 34.1 umol/L (1.994 mg/dL) scores 1"),
        pytest.param(33, 1, id="bilirubin 33 umol/L (1.93 mg/dL) scores 1: converted, not the table column"),
        pytest.param(43, 2, id="bilirubin 43 umol/L (2.51 mg/dL) scores 2"),
        pytest.param(204, 3, id="bilirubin 204 umol/L (11.93 mg/dL) scores 3"),
    ],
)
def test_bilirubin_umol_l_is_converted_then_banded(umol_l, points):
    assert score(bilirubin=umol_l, bilirubin_unit="umol/L").liver == points


@pytest.mark.parametrize("unit", ["umol/L", "\u00b5mol/L", "\u03bcmol/L"])
def test_micromolar_unit_spellings(unit):
    assert score(bilirubin=34.2, bilirubin_unit=unit).liver == 2


# --- Cardiovascular ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("changes", "points"),
    [
        pytest.param({"map_mmhg": 70}, 0, id="MAP exactly 70 scores 0"),
        pytest.param({"map_mmhg": 69}, 1, id="MAP 69 scores 1"),
        pytest.param({"dopamine": 5}, 2, id="dopamine exactly 5 scores 2 (1996: <= 5)"),
        pytest.param({"dopamine": 5.1}, 3, id="dopamine 5.1 scores 3"),
        pytest.param({"dopamine": 15}, 3, id="dopamine exactly 15 scores 3"),
        pytest.param({"dopamine": 15.1}, 4, id="dopamine 15.1 scores 4"),
        pytest.param({"dobutamine": 0.5}, 2, id="dobutamine at a low dose scores 2"),
        pytest.param({"dobutamine": 20}, 2, id="dobutamine at a high dose scores 2"),
        pytest.param({"epinephrine": 0.1}, 3, id="epinephrine exactly 0.1 scores 3"),
        pytest.param({"epinephrine": 0.11}, 4, id="epinephrine 0.11 scores 4"),
        pytest.param({"norepinephrine": 0.01}, 3, id="norepinephrine at any dose up to 0.1 scores 3"),
        pytest.param({"norepinephrine": 0.1}, 3, id="norepinephrine exactly 0.1 scores 3"),
        pytest.param({"norepinephrine": 0.11}, 4, id="norepinephrine 0.11 scores 4"),
        pytest.param({"norepinephrine": 0}, 0, id="a dose of 0 is not given"),
        pytest.param(
            {"map_mmhg": 55, "dobutamine": 5, "norepinephrine": 0.05}, 3, id="the highest level wins"
        ),
        pytest.param(
            {"map_mmhg": None, "norepinephrine": 0.15}, 4, id="a vasopressor scores without a recorded MAP"
        ),
    ],
)
def test_cardiovascular_levels(changes, points):
    assert score(**changes).cardiovascular == points


# --- CNS --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("gcs", "points"),
    [
        pytest.param(15, 0, id="GCS 15 scores 0"),
        pytest.param(14, 1, id="GCS 14 scores 1"),
        pytest.param(13, 1, id="GCS 13 scores 1"),
        pytest.param(12, 2, id="GCS 12 scores 2"),
        pytest.param(10, 2, id="GCS 10 scores 2"),
        pytest.param(9, 3, id="GCS 9 scores 3"),
        pytest.param(6, 3, id="GCS 6 scores 3"),
        pytest.param(5, 4, id="GCS 5 scores 4"),
        pytest.param(3, 4, id="GCS 3 scores 4"),
    ],
)
def test_cns_bands(gcs, points):
    assert score(gcs=gcs).cns == points


@pytest.mark.parametrize("gcs", [2, 16, 12.5, 0])
def test_gcs_outside_3_to_15_is_refused(gcs):
    with pytest.raises(ValueError, match="gcs must be a whole number from 3 to 15"):
        score(gcs=gcs)


# --- Renal ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("creatinine_mg_dl", "points"),
    [
        pytest.param(1.1, 0, id="creatinine 1.1 mg/dL scores 0"),
        pytest.param(1.2, 1, id="creatinine exactly 1.2 mg/dL scores 1"),
        pytest.param(1.9, 1, id="creatinine 1.9 mg/dL scores 1"),
        pytest.param(2.0, 2, id="creatinine exactly 2.0 mg/dL scores 2"),
        pytest.param(3.4, 2, id="creatinine 3.4 mg/dL scores 2"),
        pytest.param(3.5, 3, id="creatinine exactly 3.5 mg/dL scores 3"),
        pytest.param(4.9, 3, id="creatinine 4.9 mg/dL scores 3"),
        pytest.param(5.0, 4, id="creatinine exactly 5.0 mg/dL scores 4"),
    ],
)
def test_renal_creatinine_bands(creatinine_mg_dl, points):
    assert score(creatinine=creatinine_mg_dl, creatinine_unit="mg/dL").renal == points


@pytest.mark.parametrize(
    ("mg_dl", "umol_l"),
    [
        pytest.param(1.2, 106.08, id="1.2 mg/dL == 106.08 umol/L"),
        pytest.param(2.0, 176.8, id="2.0 mg/dL == 176.8 umol/L"),
        pytest.param(3.5, 309.4, id="3.5 mg/dL == 309.4 umol/L"),
        pytest.param(5.0, 442.0, id="5.0 mg/dL == 442 umol/L"),
    ],
)
def test_creatinine_in_umol_l_scores_like_the_same_value_in_mg_dl(mg_dl, umol_l):
    in_mg = score(creatinine=mg_dl, creatinine_unit="mg/dL").renal
    in_umol = score(creatinine=umol_l, creatinine_unit="umol/L").renal
    assert in_umol == in_mg
    assert in_umol > score(creatinine=mg_dl - 0.01, creatinine_unit="mg/dL").renal


@pytest.mark.parametrize(
    ("urine_output", "points"),
    [
        pytest.param(500, 0, id="urine output exactly 500 mL/day scores 0"),
        pytest.param(499, 3, id="urine output 499 mL/day scores 3"),
        pytest.param(200, 3, id="urine output exactly 200 mL/day scores 3"),
        pytest.param(199, 4, id="urine output 199 mL/day scores 4"),
        pytest.param(0, 4, id="anuria scores 4"),
    ],
)
def test_renal_urine_output_bands(urine_output, points):
    assert score(urine_output_ml_day=urine_output).renal == points


@pytest.mark.parametrize(
    ("creatinine", "urine_output", "points"),
    [
        pytest.param(2.0, 150, 4, id="urine output worse than creatinine"),
        pytest.param(5.0, 1500, 4, id="creatinine worse than urine output"),
        pytest.param(None, 450, 3, id="urine output alone"),
        pytest.param(3.5, None, 3, id="creatinine alone"),
    ],
)
def test_renal_takes_the_higher_of_creatinine_and_urine_output(creatinine, urine_output, points):
    assert score(creatinine=creatinine, urine_output_ml_day=urine_output).renal == points


def test_renal_replacement_therapy_is_not_a_sofa_1996_input():
    assert set(inspect.signature(sofa).parameters) == set(NORMAL)
    with pytest.raises(TypeError):
        sofa(**NORMAL, renal_replacement=True)


# --- Units and input checks -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"bilirubin_unit": "mg/L"}, "bilirubin_unit", id="unknown bilirubin unit"),
        pytest.param({"bilirubin_unit": None}, "bilirubin_unit", id="bilirubin without a unit"),
        pytest.param({"creatinine_unit": "mmol/L"}, "creatinine_unit", id="unknown creatinine unit"),
        pytest.param({"platelets": -1}, "platelets must be >= 0", id="negative platelets"),
        pytest.param({"norepinephrine": -0.1}, "norepinephrine must be >= 0", id="negative dose"),
        pytest.param({"pao2_fio2": 0}, "pao2_fio2 must be greater than 0", id="P/F of 0"),
        pytest.param({"map_mmhg": float("nan")}, "finite", id="MAP not a number"),
    ],
)
def test_bad_inputs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        score(**changes)


def test_a_unit_without_a_value_is_ignored():
    assert score(bilirubin=None, bilirubin_unit="umol/L").missing == ("liver",)


# --- Missing components -----------------------------------------------------------------------------------

def test_nothing_recorded_gives_total_0_and_every_component_missing():
    result = sofa(**NOTHING)
    assert result.total == 0
    assert result.missing == COMPONENTS
    assert all(points is None for points in result.components.values())


@pytest.mark.parametrize(
    ("component", "absent"),
    [
        ("respiration", {"pao2_fio2": None, "respiratory_support": None}),
        ("respiration", {"pao2_fio2": None, "respiratory_support": True}),
        ("coagulation", {"platelets": None}),
        ("liver", {"bilirubin": None, "bilirubin_unit": None}),
        ("cardiovascular", {"map_mmhg": None, "norepinephrine": None}),
        ("cns", {"gcs": None}),
        ("renal", {"creatinine": None, "urine_output_ml_day": None}),
    ],
)
def test_a_component_without_inputs_is_none_and_listed_missing(component, absent):
    result = sofa(**{**WORKED_CASE, **absent})
    assert getattr(result, component) is None
    assert result.missing == (component,)
    assert result.total == 14 - sofa(**WORKED_CASE).components[component]


def test_total_sums_only_the_recorded_components():
    result = sofa(**{**NOTHING, "platelets": 35, "gcs": 8})
    assert (result.coagulation, result.cns, result.total) == (3, 3, 6)
    assert result.missing == ("respiration", "liver", "cardiovascular", "renal")


def test_result_is_immutable():
    result = score()
    with pytest.raises(AttributeError):
        result.total = 3


# --- Properties -------------------------------------------------------------------------------------------

def maybe(strategy):
    return st.none() | strategy


@settings(database=None, max_examples=300)
@given(
    pao2_fio2=maybe(st.floats(min_value=20, max_value=700)),
    respiratory_support=st.booleans(),
    platelets=maybe(st.floats(min_value=0, max_value=1000)),
    bilirubin=maybe(st.floats(min_value=0, max_value=700)),
    bilirubin_unit=st.sampled_from(["mg/dL", "umol/L"]),
    map_mmhg=maybe(st.floats(min_value=0, max_value=200)),
    dopamine=maybe(st.floats(min_value=0, max_value=50)),
    dobutamine=maybe(st.floats(min_value=0, max_value=40)),
    epinephrine=maybe(st.floats(min_value=0, max_value=2)),
    norepinephrine=maybe(st.floats(min_value=0, max_value=5)),
    gcs=maybe(st.integers(min_value=3, max_value=15)),
    creatinine=maybe(st.floats(min_value=0, max_value=2000)),
    creatinine_unit=st.sampled_from(["mg/dL", "umol/L"]),
    urine_output_ml_day=maybe(st.floats(min_value=0, max_value=10000)),
)
def test_total_is_the_sum_of_the_recorded_components_and_within_0_to_24(**inputs):
    result = sofa(**inputs)
    recorded = [points for points in result.components.values() if points is not None]
    assert result.total == sum(recorded)
    assert 0 <= result.total <= 24
    assert all(0 <= points <= 4 for points in recorded)
    assert result.missing == tuple(name for name, points in result.components.items() if points is None)
