"""Laboratory and HS activity: the markers followed during the study (ferritin, triglycerides,
fibrinogen, liver enzymes, LDH, blood counts, CRP, sCD25 when done)."""

from __future__ import annotations

from decimal import Decimal

from ecrf.forms.definition import CRF, Check, Group, Item, Range
from ecrf.forms.items import DateTime, DecimalNumber, Integer
from ecrf.i18n import msg

D = Decimal


def _anc_below_wbc(v):
    if v["anc"] > v["wbc"]:
        return msg("Neutrophils (%(anc)s) cannot exceed leukocytes (%(wbc)s).", anc=v["anc"],
                   wbc=v["wbc"])
    return None


DEFINITION = CRF(
    key="labs",
    title="Laboratory and HS activity",
    version=1,
    groups=(
        Group("sample", "Sample", (
            Item("sampled_at", "Date and time of the sample", DateTime(), required=True,
                 sas_name="SAMPLEAT"),
        )),
        Group("hs", "HS activity", (
            Item("ferritin", "Ferritin", Integer(), unit="µg/L", hard=Range(0, 2_000_000),
                 soft=Range(0, 100_000), critical=True, sas_name="FERRITIN"),
            Item("triglycerides", "Triglycerides", DecimalNumber(2), unit="mmol/L",
                 hard=Range(D(0), D(150)), sas_name="TG"),
            Item("fibrinogen", "Fibrinogen", DecimalNumber(2), unit="g/L",
                 hard=Range(D(0), D(20)), sas_name="FIBRINO"),
            Item("scd25", "Soluble CD25", Integer(), unit="U/mL", hard=Range(0, 1_000_000),
                 help="If done."),
            Item("crp", "C-reactive protein", DecimalNumber(1), unit="mg/L",
                 hard=Range(D(0), D(1000))),
        )),
        Group("liver", "Liver", (
            Item("ast", "AST", Integer(), unit="U/L", hard=Range(0, 100_000)),
            Item("alt", "ALT", Integer(), unit="U/L", hard=Range(0, 100_000)),
            Item("ldh", "LDH", Integer(), unit="U/L", hard=Range(0, 100_000)),
        )),
        Group("counts", "Blood counts", (
            Item("hb", "Hemoglobin", DecimalNumber(1), unit="g/dL", hard=Range(D(1), D(25)),
                 critical=True),
            Item("wbc", "Leukocytes", DecimalNumber(2), unit="10^9/L",
                 hard=Range(D(0), D(1000))),
            Item("anc", "Neutrophils", DecimalNumber(2), unit="10^9/L",
                 hard=Range(D(0), D(1000)), critical=True),
            Item("platelets", "Platelets", Integer(), unit="10^9/L", hard=Range(0, 2000),
                 critical=True, sas_name="PLAT"),
        )),
    ),
    checks=(Check("LAB-01", "hard", ("anc", "wbc"), _anc_below_wbc),),
)
