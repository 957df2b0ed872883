"""Eligibility: the exclusion criteria E1-E12, each answered yes/no at screening.

The inclusion criteria I1-I6 are not ticked here: the system computes them from the data of the
other forms (age, HS diagnosis, ICU admission, SOFA at D0, consent, pregnancy test and
contraception); see ecrf/study/eligibility.py.
"""

from __future__ import annotations

from ecrf.forms.definition import CRF, Group, Item
from ecrf.forms.items import Text, YesNo

#: E1-E12 as in the French site sheet (domain notes, section 1.3)
EXCLUSIONS = (
    ("e1_moribund", "E1 Moribund patient, life expectancy below 48 hours"),
    ("e2_pregnant", "E2 Pregnant or breastfeeding"),
    ("e3_no_insurance", "E3 Not affiliated to a social security scheme"),
    ("e4_rux_allergy", "E4 Known hypersensitivity to ruxolitinib"),
    ("e5_lactose", "E5 Lactose intolerance"),
    ("e6_excipient", "E6 Hypersensitivity to an excipient (microcrystalline cellulose, magnesium "
                     "stearate, colloidal anhydrous silica, sodium starch glycolate type A, "
                     "povidone K30, hydroxypropylcellulose)"),
    ("e7_lst_limit", "E7 Decision to withhold or withdraw life-sustaining care before inclusion"),
    ("e8_pml", "E8 History of progressive multifocal leukoencephalopathy"),
    ("e9_skin_cancer", "E9 Uncontrolled skin cancer"),
    ("e10_psychiatric", "E10 Psychiatric care preventing understanding of the consent or follow-up"),
    ("e11_protection", "E11 Adult under legal protection (tutelle, curatelle, sauvegarde de justice)"),
    ("e12_deprived", "E12 Person deprived of liberty"),
)

DEFINITION = CRF(
    key="eligibility",
    title="Eligibility",
    version=1,
    description="Exclusion criteria; the inclusion criteria are computed from the data.",
    groups=(
        Group("exclusion", "Exclusion criteria (answer each)", tuple(
            Item(key, label, YesNo(), required=True, critical=True,
                 sas_name=key.split("_")[0].upper())
            for key, label in EXCLUSIONS)),
        Group("other", "Other", (
            Item("other_trial", "Currently participating in another interventional trial",
                 YesNo(), required=True, sas_name="OTHTRIAL"),
            Item("other_trial_name", "Which trial", Text(200),
                 show_if=lambda v: v.get("other_trial") == "Y", show_if_items=("other_trial",),
                 sas_name="OTHTRNM"),
        )),
    ),
)
