"""HLH-2004 diagnostic criteria (Henter et al., Pediatr Blood Cancer 2007;48:124-31), the eight clinical and
laboratory criteria; a diagnosis needs >= 5 of them (or a molecular diagnosis, not handled here).

Criteria (docs: shared/domain/README.md section 4; ">=" as in the Histiocyte Society table):

1. fever: temperature >= 38.5 deg C;
2. splenomegaly (observation);
3. cytopenias affecting >= 2 of 3 lineages: hemoglobin < 9 g/dL, platelets < 100 x10^9/L,
   neutrophils < 1.0 x10^9/L (adult thresholds; the infant Hb threshold < 10 g/dL does not apply here);
4. hypertriglyceridemia and/or hypofibrinogenemia: fasting triglycerides >= 3.0 mmol/L and/or
   fibrinogen <= 1.5 g/L (one criterion);
5. hemophagocytosis in bone marrow, spleen or lymph nodes (observation);
6. low or absent NK-cell activity (observation, local laboratory reference);
7. ferritin >= 500 ug/L;
8. soluble CD25 (sIL-2 receptor alpha) >= 2400 U/mL.

A None input means "not done". A criterion built from several values is decided as far as the values
allow: criterion 3 is met once two lineages are cytopenic and not met once two are normal; criterion 4 is
met once either value is abnormal and not met only when both were measured and normal. Otherwise (e.g. Hb
low, platelets normal, neutrophils not done) the criterion is "not done": it could still be met, so it is
not counted as assessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from ecrf.scores._common import Number, checked, checked_flag

CRITERIA = (
    "fever", "splenomegaly", "cytopenias", "triglycerides_fibrinogen", "hemophagocytosis", "nk_activity",
    "ferritin", "scd25",
)
DIAGNOSTIC_COUNT = 5

FEVER_MIN_C = 38.5
HEMOGLOBIN_BELOW_G_DL = 9.0
PLATELETS_BELOW_G_L = 100.0
NEUTROPHILS_BELOW_G_L = 1.0
CYTOPENIC_LINEAGES_NEEDED = 2
TRIGLYCERIDES_MIN_MMOL_L = 3.0
FIBRINOGEN_MAX_G_L = 1.5
FERRITIN_MIN_UG_L = 500.0
SCD25_MIN_U_ML = 2400.0


class Status(StrEnum):
    MET = "met"
    NOT_MET = "not met"
    NOT_DONE = "not done"


@dataclass(frozen=True)
class Hlh2004:
    criteria_met: int
    criteria_assessed: int
    status: MappingProxyType[str, Status]  # criterion -> status, in the order of CRITERIA
    not_assessed: tuple[str, ...]

    @property
    def meets_criteria(self) -> bool:
        """At least 5 of the 8 criteria met (the HLH-2004 clinical diagnosis)."""
        return self.criteria_met >= DIAGNOSTIC_COUNT


def _status(finding: bool | None) -> Status:
    if finding is None:
        return Status.NOT_DONE
    return Status.MET if finding else Status.NOT_MET


def _observed(name: str, value: bool | None) -> bool | None:
    return None if value is None else checked_flag(name, value)


def _below(name: str, value: Number | None, limit: float) -> bool | None:
    return None if value is None else checked(name, value) < limit


def _at_least(name: str, value: Number | None, limit: float) -> bool | None:
    return None if value is None else checked(name, value) >= limit


def _at_most(name: str, value: Number | None, limit: float) -> bool | None:
    return None if value is None else checked(name, value) <= limit


def _cytopenias(lineages: tuple[bool | None, ...]) -> bool | None:
    if sum(low is True for low in lineages) >= CYTOPENIC_LINEAGES_NEEDED:
        return True
    if sum(low is False for low in lineages) > len(lineages) - CYTOPENIC_LINEAGES_NEEDED:
        return False
    return None


def _either(findings: tuple[bool | None, ...]) -> bool | None:
    if any(finding is True for finding in findings):
        return True
    if all(finding is False for finding in findings):
        return False
    return None


def hlh2004(
    *,
    fever_c: Number | None,
    splenomegaly: bool | None,
    hemoglobin_g_dl: Number | None,
    platelets_g_l: Number | None,
    neutrophils_g_l: Number | None,
    triglycerides_mmol_l: Number | None,
    fibrinogen_g_l: Number | None,
    hemophagocytosis: bool | None,
    nk_activity_low: bool | None,
    ferritin_ug_l: Number | None,
    scd25_u_ml: Number | None,
) -> Hlh2004:
    """Status of each HLH-2004 criterion and the counts; see the module docstring for the thresholds."""
    findings = {
        "fever": _at_least("fever_c", fever_c, FEVER_MIN_C),
        "splenomegaly": _observed("splenomegaly", splenomegaly),
        "cytopenias": _cytopenias((
            _below("hemoglobin_g_dl", hemoglobin_g_dl, HEMOGLOBIN_BELOW_G_DL),
            _below("platelets_g_l", platelets_g_l, PLATELETS_BELOW_G_L),
            _below("neutrophils_g_l", neutrophils_g_l, NEUTROPHILS_BELOW_G_L),
        )),
        "triglycerides_fibrinogen": _either((
            _at_least("triglycerides_mmol_l", triglycerides_mmol_l, TRIGLYCERIDES_MIN_MMOL_L),
            _at_most("fibrinogen_g_l", fibrinogen_g_l, FIBRINOGEN_MAX_G_L),
        )),
        "hemophagocytosis": _observed("hemophagocytosis", hemophagocytosis),
        "nk_activity": _observed("nk_activity_low", nk_activity_low),
        "ferritin": _at_least("ferritin_ug_l", ferritin_ug_l, FERRITIN_MIN_UG_L),
        "scd25": _at_least("scd25_u_ml", scd25_u_ml, SCD25_MIN_U_ML),
    }
    status = {name: _status(findings[name]) for name in CRITERIA}
    not_assessed = tuple(name for name in CRITERIA if status[name] is Status.NOT_DONE)
    return Hlh2004(
        criteria_met=sum(value is Status.MET for value in status.values()),
        criteria_assessed=len(CRITERIA) - len(not_assessed),
        status=MappingProxyType(status),
        not_assessed=not_assessed,
    )
