"""Daily SOFA (D0 to the last daily visit): the primary endpoint's raw data.

The worst value of each organ system over the 24 hours of the visit day; SI or conventional
units, with the unit stored. The P/F ratio, the six components and the total are derived by
``ecrf.scores`` (SOFA 1996 as tabulated for Sepsis-3); renal replacement is recorded, not scored.
"""

from __future__ import annotations

import re
from decimal import Decimal

from ecrf.forms.definition import CRF, Check, Group, Item, Range
from ecrf.forms.items import Choice, DecimalNumber, Integer, YesNo
from ecrf.i18n import Message, msg
from ecrf.scores import pao2_fio2_ratio, sofa

PAO2_UNITS = (("mmHg", "mmHg"), ("kPa", "kPa"))
FIO2_UNITS = (("%", "%"), ("fraction", "fraction (0.21-1.0)"))
CHEM_UNITS = (("umol/L", "µmol/L"), ("mg/dL", "mg/dL"))
SUPPORT = (("NONE", "None (room air or oxygen)"), ("HFNO", "High-flow nasal oxygen"),
           ("NIV", "Non-invasive ventilation"), ("CPAP", "CPAP"),
           ("IMV", "Invasive mechanical ventilation"))
#: respiratory support that allows respiration scores 3 and 4 (SOFA: "with respiratory support")
VENTILATED = {"NIV", "CPAP", "IMV"}
VASOPRESSORS = ("dopamine", "dobutamine", "epinephrine", "norepinephrine")


def _ratio(v) -> Decimal | None:
    if None in (v.get("pao2"), v.get("pao2_unit"), v.get("fio2"), v.get("fio2_unit")):
        return None
    ratio = pao2_fio2_ratio(v["pao2"], v["pao2_unit"], v["fio2"], v["fio2_unit"])
    return Decimal(str(ratio)).quantize(Decimal("1"))


def _score(v):
    support = v.get("resp_support")
    return sofa(
        pao2_fio2=_ratio(v),
        respiratory_support=None if support is None else support in VENTILATED,
        platelets=v.get("platelets"), bilirubin=v.get("bilirubin"),
        bilirubin_unit=v.get("bilirubin_unit"), map_mmhg=v.get("map"),
        dopamine=v.get("dopamine"), dobutamine=v.get("dobutamine"),
        epinephrine=v.get("epinephrine"), norepinephrine=v.get("norepinephrine"),
        gcs=v.get("gcs"), creatinine=v.get("creatinine"),
        creatinine_unit=v.get("creatinine_unit"), urine_output_ml_day=v.get("urine_output"))


def _component(name: str):
    def derive(v):
        return getattr(_score(v), name)
    return derive


def _total(v):
    score = _score(v)
    return None if len(score.missing) == 6 else score.total


#: the reason ``pao2_fio2_ratio`` gives for an FiO2 outside 0.21-1.0 once converted
_FIO2_OUT_OF_RANGE = re.compile(
    r"FiO2 must be between (?P<low>\S+) and (?P<high>\S+) \(21-100 %; room air is 0\.21\), "
    r"got (?P<value>.+) (?P<unit>%|fraction) = (?P<fraction>\S+) as a fraction(?P<hint>.*)",
    re.DOTALL)
_DECIMAL_REPR = re.compile(r"Decimal\('(?P<number>[^']*)'\)")


def _fio2_message(error: ValueError) -> Message | None:
    """SOFA-01's message for the one reason a user can meet through the form (the units are
    codelists and the PaO2 is positive): an FiO2 outside 0.21-1.0 once converted. The score library
    states it in English for developers; it is rebuilt here as messages to translate."""
    found = _FIO2_OUT_OF_RANGE.fullmatch(str(error))
    if found is None:
        return None
    value: str = found["value"]
    decimal = _DECIMAL_REPR.fullmatch(value)
    if decimal is not None:  # the value as Python writes it: the number alone once translated
        value = msg("Decimal('%(number)s')", number=decimal["number"])
    params = {"low": found["low"], "high": found["high"], "value": value, "unit": found["unit"],
              "fraction": found["fraction"]}
    hint = found["hint"]
    if hint == "":
        return msg("PaO2/FiO2 cannot be computed: FiO2 must be between %(low)s and %(high)s "
                   "(21-100 %%; room air is 0.21), got %(value)s %(unit)s = %(fraction)s as a "
                   "fraction.", **params)
    if hint == ' (a percentage entered with unit "fraction"?)':
        return msg("PaO2/FiO2 cannot be computed: FiO2 must be between %(low)s and %(high)s "
                   "(21-100 %%; room air is 0.21), got %(value)s %(unit)s = %(fraction)s as a "
                   "fraction (a percentage entered with unit \"fraction\"?).", **params)
    if hint == ' (a fraction entered with unit "%"?)':
        return msg("PaO2/FiO2 cannot be computed: FiO2 must be between %(low)s and %(high)s "
                   "(21-100 %%; room air is 0.21), got %(value)s %(unit)s = %(fraction)s as a "
                   "fraction (a fraction entered with unit \"%%\"?).", **params)
    return None


def _fio2_plausible(v):
    try:
        pao2_fio2_ratio(v["pao2"], v["pao2_unit"], v["fio2"], v["fio2_unit"])
    except ValueError as e:
        message = _fio2_message(e)
        if message is not None and str(message) == f"PaO2/FiO2 cannot be computed: {e}.":
            return message
        # any other reason: the library's own (English) words, as they always were
        return msg("PaO2/FiO2 cannot be computed: %(reason)s.", reason=str(e))
    return None


def _unit_needed(value_key: str, unit_key: str, label: Message):
    def rule(v):
        if v.get(unit_key):
            return None
        return msg("Give the unit of the %(label)s (%(value)s).", label=label, value=v[value_key])
    return rule


def _needs_support_type(v):
    try:
        ratio = _ratio(v)
    except ValueError:
        return None  # SOFA-01 explains an impossible FiO2
    if ratio is not None and ratio < 200 and v.get("resp_support") is None:
        return msg("P/F ratio is %(ratio)s (below 200): say which respiratory support the patient "
                   "had, it decides the respiration score.", ratio=ratio)
    return None


def _dose(key: str, label: str) -> Item:
    return Item(key, f"{label}, highest dose held for at least 1 hour", DecimalNumber(3),
                unit="µg/kg/min", hard=Range(Decimal(0), Decimal(100)),
                help="Leave empty when not given.", sas_name=key[:8].upper(), critical=True)


DEFINITION = CRF(
    key="sofa_daily",
    title="Daily SOFA",
    version=1,
    description="Worst value of each organ system over the visit day.",
    groups=(
        Group("respiration", "Respiration", (
            Item("pao2", "PaO2", DecimalNumber(1), hard=Range(Decimal(1), Decimal(800)),
                 critical=True, help="Lowest PaO2 of the day, with the FiO2 at that time."),
            Item("pao2_unit", "PaO2 unit", Choice(PAO2_UNITS), sas_name="PAO2U", critical=True),
            Item("fio2", "FiO2", DecimalNumber(2), hard=Range(Decimal("0.21"), Decimal(100)),
                 critical=True),
            Item("fio2_unit", "FiO2 unit", Choice(FIO2_UNITS), sas_name="FIO2U", critical=True),
            Item("resp_support", "Respiratory support at that time", Choice(SUPPORT),
                 sas_name="RESPSUP", critical=True),
            Item("pf_ratio", "PaO2/FiO2", Integer(), unit="mmHg", derive=_ratio,
                 derive_from=("pao2", "pao2_unit", "fio2", "fio2_unit"), sas_name="PFRATIO"),
        )),
        Group("coagulation", "Coagulation", (
            Item("platelets", "Platelets, lowest", Integer(), unit="10^9/L",
                 hard=Range(0, 2000), soft=Range(5, 1000), critical=True, sas_name="PLAT"),
        )),
        Group("liver", "Liver", (
            Item("bilirubin", "Bilirubin, highest", DecimalNumber(1), hard=Range(0, 2000),
                 critical=True, sas_name="BILI"),
            Item("bilirubin_unit", "Bilirubin unit", Choice(CHEM_UNITS), sas_name="BILIU", critical=True),
        )),
        Group("cardiovascular", "Cardiovascular", (
            Item("map", "Mean arterial pressure, lowest", Integer(), unit="mmHg",
                 hard=Range(10, 200), soft=Range(30, 150), critical=True),
            *(_dose(k, k.capitalize()) for k in VASOPRESSORS),
        )),
        Group("cns", "Central nervous system", (
            Item("gcs", "Glasgow coma scale, lowest (presumed without sedation)", Integer(),
                 hard=Range(3, 15), critical=True,
                 help="For a sedated patient, the score presumed without sedation."),
        )),
        Group("renal", "Renal", (
            Item("creatinine", "Creatinine, highest", DecimalNumber(1), hard=Range(0, 3000),
                 critical=True, sas_name="CREAT"),
            Item("creatinine_unit", "Creatinine unit", Choice(CHEM_UNITS), sas_name="CREATU", critical=True),
            Item("urine_output", "Urine output over 24 h", Integer(), unit="mL",
                 hard=Range(0, 20000), sas_name="UO24H", critical=True),
            Item("rrt", "Renal replacement therapy", YesNo(),
                 help="Recorded, not scored (SOFA 1996)."),
        )),
        Group("score", "SOFA score (computed)", (
            Item("sofa_resp", "Respiration", Integer(), derive=_component("respiration"),
                 derive_from=("pao2", "fio2", "resp_support"), sas_name="SOFARESP"),
            Item("sofa_coag", "Coagulation", Integer(), derive=_component("coagulation"),
                 derive_from=("platelets",), sas_name="SOFACOAG"),
            Item("sofa_liver", "Liver", Integer(), derive=_component("liver"),
                 derive_from=("bilirubin", "bilirubin_unit"), sas_name="SOFALIV"),
            Item("sofa_cardio", "Cardiovascular", Integer(), derive=_component("cardiovascular"),
                 derive_from=("map", *VASOPRESSORS), sas_name="SOFACARD"),
            Item("sofa_cns", "Central nervous system", Integer(), derive=_component("cns"),
                 derive_from=("gcs",), sas_name="SOFACNS"),
            Item("sofa_renal", "Renal", Integer(), derive=_component("renal"),
                 derive_from=("creatinine", "creatinine_unit", "urine_output"),
                 sas_name="SOFAREN"),
            Item("sofa_total", "SOFA total", Integer(), derive=_total,
                 derive_from=("pao2", "pao2_unit", "fio2", "fio2_unit", "resp_support",
                              "platelets", "bilirubin", "bilirubin_unit", "map", *VASOPRESSORS,
                              "gcs", "creatinine", "creatinine_unit", "urine_output"),
                 critical=True, sas_name="SOFATOT"),
        )),
    ),
    checks=(
        Check("SOFA-01", "hard", ("pao2", "pao2_unit", "fio2", "fio2_unit"), _fio2_plausible),
        Check("SOFA-02", "hard", ("pao2",), _unit_needed("pao2", "pao2_unit", msg("PaO2"))),
        Check("SOFA-03", "hard", ("fio2",), _unit_needed("fio2", "fio2_unit", msg("FiO2"))),
        Check("SOFA-04", "hard", ("bilirubin",),
              _unit_needed("bilirubin", "bilirubin_unit", msg("bilirubin"))),
        Check("SOFA-05", "hard", ("creatinine",),
              _unit_needed("creatinine", "creatinine_unit", msg("creatinine"))),
        Check("SOFA-06", "soft", ("pao2", "fio2"), _needs_support_type),
    ),
)
