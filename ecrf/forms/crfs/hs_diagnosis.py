"""HS diagnosis (D0): the raw values behind the HLH-2004 criteria and the HScore, entered once.

Both scores are derived by ``ecrf.scores`` from the same values (domain notes, sections 3, 4 and 8):
each HLH-2004 criterion as met / not met / not done, the count met (``hlh_count``) and the count
assessed; the HScore points per item, total (``hscore``) and probability from Fardet's table. A value
left empty or given a null flavor counts as not done: the HLH-2004 criterion is not assessed, the
HScore item scores 0. Every value is required (the form stays incomplete until each one has a value
or a null flavor), so "not done" is said, not assumed. ``hlh_count`` and ``hscore`` are the keys
``ecrf.study.eligibility`` reads (I2).

Units are those of the score tables, one per value: hemoglobin in g/dL only (a value in g/L, 10 times
larger, falls outside the hard range and is refused with the rule); triglycerides in mmol/L only (the
domain notes give mg/dL equivalents but no factor for g/L); ferritin in µg/L (= ng/mL); counts in
10^9/L (= G/L); fibrinogen in g/L with two decimals (153.5 mg/dL is entered 1.54).
Hemophagocytosis is recorded from the bone-marrow aspirate; it feeds HLH-2004 criterion 5 and the
HScore. Known immunosuppression belongs to the medical history form: it is entered here too (a
derivation only sees its own form) and a cross-form soft check flags a disagreement.
"""

from __future__ import annotations

from decimal import Decimal

from ecrf.forms.definition import CRF, Check, Group, Item, Range
from ecrf.forms.items import Choice, Date, DecimalNumber, Integer, Text, YesNo
from ecrf.i18n import msg
from ecrf.scores import Hlh2004, HScore, Status, hlh2004, hscore
from ecrf.scores.hlh2004 import (
    CYTOPENIC_LINEAGES_NEEDED,
    FERRITIN_MIN_UG_L,
    FEVER_MIN_C,
    FIBRINOGEN_MAX_G_L,
    HEMOGLOBIN_BELOW_G_DL,
    NEUTROPHILS_BELOW_G_L,
    PLATELETS_BELOW_G_L,
    SCD25_MIN_U_ML,
    TRIGLYCERIDES_MIN_MMOL_L,
)
from ecrf.scores.hscore import HEMOGLOBIN_MAX_G_DL, LEUKOCYTES_MAX_G_L, MAX_TOTAL, PLATELETS_MAX_G_L

#: a derived HLH-2004 criterion, stored by code
CRITERION_STATUS = (("MET", "Met"), ("NOT_MET", "Not met"), ("NOT_DONE", "Not done"))
CODES = {Status.MET: "MET", Status.NOT_MET: "NOT_MET", Status.NOT_DONE: "NOT_DONE"}
#: the items each score reads
HLH2004_INPUTS = ("temperature", "splenomegaly", "hemoglobin", "platelets", "neutrophils",
                  "triglycerides", "fibrinogen", "hemophagocytosis", "nk_low", "ferritin", "scd25")
HSCORE_INPUTS = ("immunosuppression", "temperature", "hepatomegaly", "splenomegaly", "hemoglobin",
                 "leukocytes", "platelets", "ferritin", "triglycerides", "fibrinogen", "ast",
                 "hemophagocytosis")


def _flag(value: str | None) -> bool | None:
    return None if value is None else value == "Y"


def marrow_done(v) -> bool:
    return v.get("marrow_done") == "Y"


def _hlh(v) -> Hlh2004:
    return hlh2004(
        fever_c=v.get("temperature"), splenomegaly=_flag(v.get("splenomegaly")),
        hemoglobin_g_dl=v.get("hemoglobin"), platelets_g_l=v.get("platelets"),
        neutrophils_g_l=v.get("neutrophils"), triglycerides_mmol_l=v.get("triglycerides"),
        fibrinogen_g_l=v.get("fibrinogen"), hemophagocytosis=_flag(v.get("hemophagocytosis")),
        nk_activity_low=_flag(v.get("nk_low")), ferritin_ug_l=v.get("ferritin"),
        scd25_u_ml=v.get("scd25"))


def _hscore(v) -> HScore | None:
    """None when no HScore value is entered (an item not done scores 0, as in Fardet's table)."""
    if all(v.get(key) is None for key in HSCORE_INPUTS):
        return None
    return hscore(
        immunosuppression=_flag(v.get("immunosuppression")), temperature_c=v.get("temperature"),
        hepatomegaly=_flag(v.get("hepatomegaly")), splenomegaly=_flag(v.get("splenomegaly")),
        hemoglobin_g_dl=v.get("hemoglobin"), leukocytes_g_l=v.get("leukocytes"),
        platelets_g_l=v.get("platelets"), ferritin_ng_ml=v.get("ferritin"),
        triglycerides_mmol_l=v.get("triglycerides"), fibrinogen_g_l=v.get("fibrinogen"),
        ast_u_l=v.get("ast"), bone_marrow_hemophagocytosis=_flag(v.get("hemophagocytosis")))


def _criterion(name: str):
    def derive(v):
        return CODES[_hlh(v).status[name]]
    return derive


def _hlh_count(v):
    result = _hlh(v)
    return result.criteria_met if result.criteria_assessed else None


def _hlh_assessed(v):
    return _hlh(v).criteria_assessed


def _points(name: str):
    def derive(v):
        score = _hscore(v)
        return None if score is None else score.points[name]
    return derive


def _hscore_total(v):
    score = _hscore(v)
    return None if score is None else score.total


def _hscore_probability(v):
    score = _hscore(v)
    return None if score is None else str(score.probability)


# --- edit checks -----------------------------------------------------------------------------


def _marrow_date_needed(v):
    if marrow_done(v) and v.get("marrow_date") is None:
        return msg("The bone-marrow aspirate was done: give its date (found no date).")
    return None


def _neutrophils_within_leukocytes(v):
    if v["neutrophils"] > v["leukocytes"]:
        return msg("Neutrophils (%(neutrophils)s) cannot exceed leukocytes (%(leukocytes)s) "
                   "×10^9/L: check both values.", neutrophils=v["neutrophils"],
                   leukocytes=v["leukocytes"])
    return None


def _as_on_medical_history(v, context):
    if context is None:
        return None
    history = context.values("medical_history")
    recorded = None if history is None else history.get("immunosuppression")
    if recorded in ("Y", "N") and recorded != v["immunosuppression"]:
        if recorded == "N":
            return msg("Known immunosuppression is 'yes' here but 'no' on the medical history "
                       "form: the two should agree.")
        return msg("Known immunosuppression is 'no' here but 'yes' on the medical history form: "
                   "the two should agree.")
    return None


# --- items -----------------------------------------------------------------------------------

WORST = "around the diagnosis"


def _status_item(key: str, label: str, criterion: str, sources: tuple[str, ...], sas: str) -> Item:
    return Item(key, label, Choice(CRITERION_STATUS), derive=_criterion(criterion),
                derive_from=sources, sas_name=sas)


def _points_item(key: str, label: str, name: str, sources: tuple[str, ...], sas: str) -> Item:
    return Item(key, f"HScore points: {label}", Integer(), derive=_points(name),
                derive_from=sources, sas_name=sas)


def _g(x: float) -> str:
    return f"{x:g}"


DEFINITION = CRF(
    key="hs_diagnosis",
    title="HS diagnosis (HLH-2004 and HScore)",
    version=1,
    description="Values around the diagnosis of hemophagocytic syndrome; both scores are computed. "
                "A value that was not measured is marked 'Not done': it counts as not done.",
    groups=(
        Group("clinical", "Clinical findings", (
            Item("temperature", "Highest temperature", DecimalNumber(1), required=True, unit="°C",
                 hard=Range(Decimal(25), Decimal(45)), soft=Range(Decimal(35), Decimal(42)),
                 critical=True, help=f"Highest {WORST}.", sas_name="TEMP"),
            Item("hepatomegaly", "Hepatomegaly", YesNo(), required=True, critical=True,
                 help="On examination or imaging.", sas_name="HEPATO"),
            Item("splenomegaly", "Splenomegaly", YesNo(), required=True, critical=True,
                 help="On examination or imaging.", sas_name="SPLENO"),
            Item("immunosuppression", "Known underlying immunosuppression", YesNo(), required=True,
                 critical=True, sas_name="IMMUNO",
                 help="As on the medical history form: HIV, or long-term immunosuppressive "
                      "treatment (glucocorticoids, ciclosporin, azathioprine)."),
        )),
        Group("blood_count", "Blood count", (
            Item("hemoglobin", "Hemoglobin, lowest", DecimalNumber(1), required=True, unit="g/dL",
                 hard=Range(Decimal(1), Decimal(25)), soft=Range(Decimal(4), Decimal(20)),
                 critical=True, sas_name="HB",
                 help=f"Lowest {WORST}, in g/dL (a value in g/L is 10 times larger: divide it)."),
            Item("leukocytes", "Leukocytes (white cells), lowest", DecimalNumber(2), required=True,
                 unit="10^9/L", hard=Range(Decimal(0), Decimal(1000)),
                 soft=Range(Decimal("0.1"), Decimal(100)), critical=True, sas_name="WBC",
                 help="Total white cells (HScore)."),
            Item("neutrophils", "Neutrophils, lowest", DecimalNumber(2), required=True, unit="10^9/L",
                 hard=Range(Decimal(0), Decimal(1000)), soft=Range(None, Decimal(80)),
                 critical=True, sas_name="ANC", help="Absolute neutrophil count (HLH-2004)."),
            Item("platelets", "Platelets, lowest", Integer(), required=True, unit="10^9/L",
                 hard=Range(0, 2000), soft=Range(5, 1000), critical=True, sas_name="PLAT"),
        )),
        Group("chemistry", "Biochemistry", (
            Item("ferritin", "Ferritin, highest", Integer(), required=True, unit="µg/L",
                 hard=Range(0, 2_000_000), soft=Range(None, 100_000), critical=True,
                 help=f"Highest {WORST}; µg/L = ng/mL.", sas_name="FERRITIN"),
            Item("triglycerides", "Triglycerides, highest (fasting)", DecimalNumber(2), required=True,
                 unit="mmol/L", hard=Range(Decimal(0), Decimal(150)),
                 soft=Range(Decimal("0.2"), Decimal(30)), critical=True, sas_name="TG",
                 help="Fasting value when available, in mmol/L (the value in mmol/L of the "
                      "laboratory report)."),
            Item("fibrinogen", "Fibrinogen, lowest", DecimalNumber(2), required=True, unit="g/L",
                 hard=Range(Decimal(0), Decimal(20)), soft=Range(Decimal("0.1"), Decimal(10)),
                 critical=True, sas_name="FIBRINO"),
            Item("ast", "AST (SGOT), highest", Integer(), required=True, unit="U/L",
                 hard=Range(0, 100_000), soft=Range(None, 10_000), critical=True, sas_name="AST"),
            Item("scd25", "Soluble CD25 (soluble IL-2 receptor)", Integer(), required=True, unit="U/mL",
                 hard=Range(0, 1_000_000), soft=Range(None, 100_000), sas_name="SCD25",
                 help="Often not done: then mark it 'Not done'."),
            Item("nk_low", "NK-cell activity low or absent", YesNo(), required=True, sas_name="NKLOW",
                 help="By the local laboratory's reference. Often not done: then mark it "
                      "'Not done'."),
        )),
        Group("marrow", "Bone-marrow aspirate", (
            Item("marrow_done", "Bone-marrow aspirate done", YesNo(), required=True, critical=True,
                 sas_name="BMDONE"),
            Item("marrow_date", "Date of the aspirate", Date(), required=True,
                 show_if=marrow_done, show_if_items=("marrow_done",), sas_name="BMDAT"),
            Item("hemophagocytosis", "Hemophagocytosis seen", YesNo(), required=True, critical=True,
                 show_if=marrow_done, show_if_items=("marrow_done",), sas_name="BMHEMO"),
            Item("marrow_result", "Result (cytology report)", Text(1000),
                 show_if=marrow_done, show_if_items=("marrow_done",), sas_name="BMRES"),
        )),
        Group("hlh2004", "HLH-2004 criteria (computed)", (
            _status_item("hlh_fever", f"1. Fever ≥ {_g(FEVER_MIN_C)} °C", "fever",
                         ("temperature",), "HLHFEVER"),
            _status_item("hlh_splenomegaly", "2. Splenomegaly", "splenomegaly",
                         ("splenomegaly",), "HLHSPLEN"),
            _status_item("hlh_cytopenias",
                         f"3. Cytopenias in ≥ {CYTOPENIC_LINEAGES_NEEDED} of 3 lineages "
                         f"(Hb < {_g(HEMOGLOBIN_BELOW_G_DL)} g/dL, platelets < "
                         f"{_g(PLATELETS_BELOW_G_L)}, neutrophils < "
                         f"{NEUTROPHILS_BELOW_G_L:.1f} ×10^9/L)", "cytopenias",
                         ("hemoglobin", "platelets", "neutrophils"), "HLHCYTO"),
            _status_item("hlh_tg_fibrinogen",
                         f"4. Triglycerides ≥ {TRIGLYCERIDES_MIN_MMOL_L:.1f} mmol/L and/or "
                         f"fibrinogen ≤ {_g(FIBRINOGEN_MAX_G_L)} g/L",
                         "triglycerides_fibrinogen", ("triglycerides", "fibrinogen"), "HLHTGFIB"),
            _status_item("hlh_hemophagocytosis", "5. Hemophagocytosis (bone marrow)",
                         "hemophagocytosis", ("hemophagocytosis",), "HLHHEMO"),
            _status_item("hlh_nk", "6. Low or absent NK-cell activity", "nk_activity",
                         ("nk_low",), "HLHNK"),
            _status_item("hlh_ferritin", f"7. Ferritin ≥ {_g(FERRITIN_MIN_UG_L)} µg/L",
                         "ferritin", ("ferritin",), "HLHFERR"),
            _status_item("hlh_scd25", f"8. Soluble CD25 ≥ {_g(SCD25_MIN_U_ML)} U/mL", "scd25",
                         ("scd25",), "HLHSCD25"),
            Item("hlh_count", "HLH-2004 criteria met (of 8)", Integer(), derive=_hlh_count,
                 derive_from=HLH2004_INPUTS, critical=True, sas_name="HLHCOUNT"),
            Item("hlh_assessed", "HLH-2004 criteria assessed (of 8)", Integer(),
                 derive=_hlh_assessed, derive_from=HLH2004_INPUTS, sas_name="HLHASSES",
                 help="A criterion is not assessed when its values are not done and could still "
                      "make it met."),
        )),
        Group("hscore", "HScore (computed; Fardet 2014)", (
            _points_item("hs_immuno", "known immunosuppression", "immunosuppression",
                         ("immunosuppression",), "HSPIMMU"),
            _points_item("hs_temperature", "temperature", "temperature", ("temperature",),
                         "HSPTEMP"),
            _points_item("hs_organomegaly", "organomegaly", "organomegaly",
                         ("hepatomegaly", "splenomegaly"), "HSPORGAN"),
            _points_item("hs_cytopenias",
                         f"cytopenias (Hb ≤ {_g(HEMOGLOBIN_MAX_G_DL)} g/dL, leukocytes ≤ "
                         f"{_g(LEUKOCYTES_MAX_G_L)}, platelets ≤ {_g(PLATELETS_MAX_G_L)} "
                         "×10^9/L)", "cytopenias", ("hemoglobin", "leukocytes", "platelets"),
                         "HSPCYTO"),
            _points_item("hs_ferritin", "ferritin", "ferritin", ("ferritin",), "HSPFERR"),
            _points_item("hs_triglycerides", "triglycerides", "triglycerides",
                         ("triglycerides",), "HSPTG"),
            _points_item("hs_fibrinogen", "fibrinogen", "fibrinogen", ("fibrinogen",), "HSPFIB"),
            _points_item("hs_ast", "AST", "ast", ("ast",), "HSPAST"),
            _points_item("hs_hemophagocytosis", "hemophagocytosis on bone-marrow aspirate",
                         "bone_marrow_hemophagocytosis", ("hemophagocytosis",), "HSPHEMO"),
            Item("hscore", f"HScore total (0-{MAX_TOTAL})", Integer(), derive=_hscore_total,
                 derive_from=HSCORE_INPUTS, critical=True, sas_name="HSCORE",
                 help="An item not done scores 0."),
            Item("hscore_probability", "Probability of hemophagocytic syndrome", Text(20),
                 derive=_hscore_probability, derive_from=HSCORE_INPUTS, sas_name="HSPROB",
                 help="The row of Fardet's table at or below the score."),
        )),
    ),
    checks=(
        Check("HSDX-01", "hard", ("marrow_done",), _marrow_date_needed),
        Check("HSDX-02", "hard", ("neutrophils", "leukocytes"), _neutrophils_within_leukocytes),
        Check("HSDX-03", "soft", ("immunosuppression",), _as_on_medical_history, cross_form=True),
    ),
)
