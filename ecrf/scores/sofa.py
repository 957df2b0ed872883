"""SOFA score (Vincent et al., Intensive Care Med 1996), as tabulated for Sepsis-3 (Singer et al., JAMA 2016,
table 1; https://pmc.ncbi.nlm.nih.gov/articles/PMC4968574/table/T1). Six organs score 0-4 each; total 0-24.

Boundary rules (docs: shared/domain/README.md section 2, "Boundary rules ecrf applies"):

* Respiration, PaO2/FiO2 in mmHg: < 400 -> 1, < 300 -> 2, < 200 -> 3, < 100 -> 4; 3 and 4 only with
  respiratory support (invasive or non-invasive ventilation, CPAP). Without support the score stops at 2.
* Coagulation, platelets 10^9/L: < 150 -> 1, < 100 -> 2, < 50 -> 3, < 20 -> 4.
* Liver, bilirubin mg/dL, bands closed at their lower bound: >= 1.2 -> 1, >= 2.0 -> 2, >= 6.0 -> 3,
  >= 12.0 -> 4 (so 1.9 -> 1, 12.0 -> 4).
* Cardiovascular, the single highest level: MAP < 70 mmHg -> 1; dopamine <= 5 or dobutamine (any dose) -> 2;
  dopamine > 5, epinephrine <= 0.1 or norepinephrine <= 0.1 -> 3; dopamine > 15, epinephrine > 0.1 or
  norepinephrine > 0.1 -> 4 (ug/kg/min, given for >= 1 h). A dose of 0 or None means "not given".
  Dopamine 5 scores 2: the 1996 paper's "<= 5" / "> 5", not Sepsis-3's "< 5" / "5.1-15".
* CNS, Glasgow Coma Scale 3-15: 13-14 -> 1, 10-12 -> 2, 6-9 -> 3, < 6 -> 4.
* Renal, the higher of creatinine (mg/dL, closed at lower bound: >= 1.2 -> 1, >= 2.0 -> 2, >= 3.5 -> 3,
  >= 5.0 -> 4) and 24-h urine output (< 500 mL/day -> 3, < 200 mL/day -> 4). Renal replacement therapy is
  recorded by the form but is not an item of the 1996 score and is not scored here.

Units: bilirubin and creatinine in umol/L are converted to mg/dL first (/ 17.1 and / 88.4, in decimal
arithmetic so 34.2 umol/L is exactly 2.0 mg/dL), then banded; the umol/L column of the published table
(e.g. bilirubin 33-101 -> 2) is a rounded rendering and is not used. PaO2 in kPa is converted with
7.50062 mmHg/kPa (:func:`pao2_fio2_ratio`) and banded in mmHg, so 53.3 kPa at FiO2 1.0 (399.8 mmHg) scores 1.

Missing data: a component whose inputs are all None is None and named in ``missing``; ``total`` sums the
other components. Imputation (e.g. "missing = normal" at baseline, last value carried forward) is a
protocol decision left to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import ge, gt, lt
from types import MappingProxyType

from ecrf.scores._common import Band, Number, band_points, checked, exact_product, exact_ratio

COMPONENTS = ("respiration", "coagulation", "liver", "cardiovascular", "cns", "renal")

BILIRUBIN_UMOL_L_PER_MG_DL = 17.1
CREATININE_UMOL_L_PER_MG_DL = 88.4
MMHG_PER_KPA = 7.50062
FIO2_MIN, FIO2_MAX = 0.21, 1.0

# PaO2/FiO2, mmHg. Rows scoring above RESPIRATION_MAX_WITHOUT_SUPPORT need respiratory support.
RESPIRATION: tuple[Band, ...] = ((lt, 100, 4), (lt, 200, 3), (lt, 300, 2), (lt, 400, 1))
RESPIRATION_MAX_WITHOUT_SUPPORT = 2
# Platelets, 10^9/L.
COAGULATION: tuple[Band, ...] = ((lt, 20, 4), (lt, 50, 3), (lt, 100, 2), (lt, 150, 1))
# Bilirubin, mg/dL.
LIVER: tuple[Band, ...] = ((ge, 12.0, 4), (ge, 6.0, 3), (ge, 2.0, 2), (ge, 1.2, 1))
# Mean arterial pressure, mmHg, and catecholamines, ug/kg/min ("> 0" = given at any dose).
MAP: tuple[Band, ...] = ((lt, 70, 1),)
DOPAMINE: tuple[Band, ...] = ((gt, 15, 4), (gt, 5, 3), (gt, 0, 2))
DOBUTAMINE: tuple[Band, ...] = ((gt, 0, 2),)
EPINEPHRINE: tuple[Band, ...] = ((gt, 0.1, 4), (gt, 0, 3))
NOREPINEPHRINE: tuple[Band, ...] = ((gt, 0.1, 4), (gt, 0, 3))
# Glasgow Coma Scale.
CNS: tuple[Band, ...] = ((lt, 6, 4), (lt, 10, 3), (lt, 13, 2), (lt, 15, 1))
GCS_MIN, GCS_MAX = 3, 15
# Creatinine, mg/dL, and 24-h urine output, mL/day.
CREATININE: tuple[Band, ...] = ((ge, 5.0, 4), (ge, 3.5, 3), (ge, 2.0, 2), (ge, 1.2, 1))
URINE_OUTPUT: tuple[Band, ...] = ((lt, 200, 4), (lt, 500, 3))

_MICROMOLAR = ("umol/L", "\u00b5mol/L", "\u03bcmol/L")  # ASCII u, micro sign, Greek mu


@dataclass(frozen=True)
class SofaScore:
    """One SOFA assessment: the six component scores (None = not assessable) and their sum."""

    total: int
    respiration: int | None
    coagulation: int | None
    liver: int | None
    cardiovascular: int | None
    cns: int | None
    renal: int | None
    missing: tuple[str, ...]

    @property
    def components(self) -> MappingProxyType[str, int | None]:
        return MappingProxyType({name: getattr(self, name) for name in COMPONENTS})


def pao2_fio2_ratio(pao2: Number, pao2_unit: str, fio2: Number, fio2_unit: str) -> float:
    """PaO2/FiO2 in mmHg, from PaO2 in "mmHg" or "kPa" (x 7.50062) and FiO2 as "%" or "fraction".

    Raises ValueError for an unknown unit, a PaO2 <= 0, or an FiO2 outside 0.21-1.0 (21-100 %) after
    conversion.
    """
    pao2_value = checked("pao2", pao2)
    if pao2_value <= 0:
        raise ValueError(f"pao2 must be greater than 0, got {pao2!r}")
    if pao2_unit == "mmHg":
        pao2_mmhg: Number = pao2
    elif pao2_unit == "kPa":
        pao2_mmhg = exact_product(pao2, MMHG_PER_KPA)
    else:
        raise ValueError(f'pao2_unit must be "mmHg" or "kPa", got {pao2_unit!r}')

    checked("fio2", fio2)
    if fio2_unit == "%":
        fraction = exact_ratio(fio2, 100)
    elif fio2_unit == "fraction":
        fraction = float(fio2)
    else:
        raise ValueError(f'fio2_unit must be "%" or "fraction", got {fio2_unit!r}')
    if not FIO2_MIN <= fraction <= FIO2_MAX:
        if fio2_unit == "fraction" and FIO2_MIN * 100 <= fraction <= FIO2_MAX * 100:
            hint = ' (a percentage entered with unit "fraction"?)'
        elif fio2_unit == "%" and FIO2_MIN <= float(fio2) <= FIO2_MAX:
            hint = ' (a fraction entered with unit "%"?)'
        else:
            hint = ""
        raise ValueError(
            f"FiO2 must be between {FIO2_MIN} and {FIO2_MAX} (21-100 %; room air is 0.21), got {fio2!r}"
            f" {fio2_unit} = {fraction:g} as a fraction{hint}"
        )
    return exact_ratio(pao2_mmhg, fraction)


def to_mg_dl(name: str, value: Number, unit: str | None, umol_l_per_mg_dl: float) -> float:
    """A bilirubin or creatinine value in mg/dL, from "mg/dL" or "umol/L"."""
    checked(name, value)
    if unit == "mg/dL":
        return float(value)
    if unit in _MICROMOLAR:
        return exact_ratio(value, umol_l_per_mg_dl)
    raise ValueError(f'{name}_unit must be "mg/dL" or "umol/L", got {unit!r}')


def _respiration(pao2_fio2: Number | None, respiratory_support: bool | None) -> int | None:
    if pao2_fio2 is None:
        return None
    ratio = checked("pao2_fio2", pao2_fio2)
    if ratio <= 0:
        raise ValueError(f"pao2_fio2 must be greater than 0, got {pao2_fio2!r}")
    points = band_points(ratio, RESPIRATION)
    if points <= RESPIRATION_MAX_WITHOUT_SUPPORT:
        return points
    if respiratory_support is None:
        raise ValueError("respiratory_support must be recorded (True/False) when the P/F ratio is below 200")
    if not isinstance(respiratory_support, bool):
        raise TypeError(f"respiratory_support must be True or False, got {respiratory_support!r}")
    return points if respiratory_support else RESPIRATION_MAX_WITHOUT_SUPPORT


def _cardiovascular(
    map_mmhg: Number | None,
    doses: tuple[tuple[str, Number | None, tuple[Band, ...]], ...],
) -> int | None:
    if map_mmhg is None and all(dose is None for _, dose, _ in doses):
        return None
    levels = [0]
    if map_mmhg is not None:
        levels.append(band_points(checked("map_mmhg", map_mmhg), MAP))
    for name, dose, bands in doses:
        if dose is not None:
            levels.append(band_points(checked(name, dose), bands))
    return max(levels)


def _cns(gcs: int | None) -> int | None:
    if gcs is None:
        return None
    value = checked("gcs", gcs)
    if value != int(value) or not GCS_MIN <= value <= GCS_MAX:
        raise ValueError(f"gcs must be a whole number from {GCS_MIN} to {GCS_MAX}, got {gcs!r}")
    return band_points(value, CNS)


def _renal(
    creatinine: Number | None, creatinine_unit: str | None, urine_output_ml_day: Number | None
) -> int | None:
    if creatinine is None and urine_output_ml_day is None:
        return None
    levels = []
    if creatinine is not None:
        mg_dl = to_mg_dl("creatinine", creatinine, creatinine_unit, CREATININE_UMOL_L_PER_MG_DL)
        levels.append(band_points(mg_dl, CREATININE))
    if urine_output_ml_day is not None:
        levels.append(band_points(checked("urine_output_ml_day", urine_output_ml_day), URINE_OUTPUT))
    return max(levels)


def sofa(
    *,
    pao2_fio2: Number | None,
    respiratory_support: bool | None,
    platelets: Number | None,
    bilirubin: Number | None,
    bilirubin_unit: str | None,
    map_mmhg: Number | None,
    dopamine: Number | None,
    dobutamine: Number | None,
    epinephrine: Number | None,
    norepinephrine: Number | None,
    gcs: int | None,
    creatinine: Number | None,
    creatinine_unit: str | None,
    urine_output_ml_day: Number | None,
) -> SofaScore:
    """SOFA from the day's worst values; see the module docstring for every threshold and unit.

    ``respiratory_support`` may be None only when it cannot change the score (P/F >= 200 or not measured).
    """
    scores: dict[str, int | None] = {
        "respiration": _respiration(pao2_fio2, respiratory_support),
        "coagulation":
            None if platelets is None else band_points(checked("platelets", platelets), COAGULATION),
        "liver": None if bilirubin is None else band_points(
            to_mg_dl("bilirubin", bilirubin, bilirubin_unit, BILIRUBIN_UMOL_L_PER_MG_DL), LIVER
        ),
        "cardiovascular": _cardiovascular(
            map_mmhg,
            (
                ("dopamine", dopamine, DOPAMINE),
                ("dobutamine", dobutamine, DOBUTAMINE),
                ("epinephrine", epinephrine, EPINEPHRINE),
                ("norepinephrine", norepinephrine, NOREPINEPHRINE),
            ),
        ),
        "cns": _cns(gcs),
        "renal": _renal(creatinine, creatinine_unit, urine_output_ml_day),
    }
    return SofaScore(
        total=sum(points for points in scores.values() if points is not None),
        missing=tuple(name for name in COMPONENTS if scores[name] is None),
        **scores,
    )
