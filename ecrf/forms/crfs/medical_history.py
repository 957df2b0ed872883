"""Medical history (D0): known underlying immunosuppression, the etiology of the hemophagocytic
syndrome (HS), comorbidities and HS treatments before inclusion, and the ICU admission.

Known underlying immunosuppression is an HScore item (Fardet 2014: HIV-positive, or a long-term
immunosuppressive treatment such as glucocorticoids, ciclosporin or azathioprine); the HS diagnosis
form asks it again for the score and checks it agrees with this form (HSDX-03).

The ICU admission date and time lives here, in its own group ``icu_admission`` (item
``icu_admission_at``): inclusion criterion I3 ("admitted to the ICU") reads it, and it dates the
organ failure that led to inclusion.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from ecrf.forms.definition import CRF, Check, Group, Item
from ecrf.forms.items import DateTime, MultiChoice, Text, YesNo
from ecrf.i18n import Message, msg

IMMUNOSUPPRESSION = (
    ("HIV", "HIV infection"),
    ("THERAPY", "Long-term immunosuppressive therapy (glucocorticoids, ciclosporin, "
                "azathioprine...)"),
    ("OTHER", "Other"),
)
ETIOLOGIES = (
    ("VIRAL", "Infection: viral"),
    ("BACTERIAL", "Infection: bacterial"),
    ("INTRACELLULAR", "Infection: intracellular or parasitic"),
    ("MALIGNANCY", "Malignancy / lymphoma"),
    ("AUTOIMMUNE", "Autoimmune disease / macrophage activation syndrome"),
    ("IDIOPATHIC", "Idiopathic: no cause found"),
    ("OTHER", "Other"),
)


def _is(key: str, code: str):
    return lambda v: v.get(key) == code


def _has(key: str, code: str):
    return lambda v: code in (v.get(key) or ())


def _a_cause_is_named(v) -> bool:
    return any(code != "IDIOPATHIC" for code in v.get("etiology") or ())


def _idiopathic_alone(v):
    if "IDIOPATHIC" in v["etiology"] and len(v["etiology"]) > 1:
        # the codelist's labels, translated where shown (the CRF extractor puts them in the catalog)
        others = Message.join(", ", (Message(dict(ETIOLOGIES)[c], {}) for c in v["etiology"]
                                     if c != "IDIOPATHIC"))
        return msg("Idiopathic means no cause was found: it cannot go with %(others)s.",
                   others=others)
    return None


def _admitted_by_inclusion(v, context):
    """The ICU admission is on or before the day of inclusion (criterion I3), once included."""
    included = None if context is None else context.subject.inclusion_date
    if included is None:
        return None
    admitted = v["icu_admission_at"].astimezone(ZoneInfo(context.subject.site.timezone)).date()
    if admitted > included:
        return msg("The ICU admission (%(admitted)s) is after the inclusion (%(included)s): the "
                   "patient must be in the ICU when included (I3).", admitted=admitted,
                   included=included)
    return None


DEFINITION = CRF(
    key="medical_history",
    title="Medical history and HS etiology",
    version=1,
    description="Immunosuppression, HS etiology, comorbidities, prior HS treatment, ICU admission.",
    groups=(
        Group("immunosuppression", "Underlying immunosuppression", (
            Item("immunosuppression", "Known underlying immunosuppression", YesNo(), required=True,
                 critical=True, sas_name="IMMUNO",
                 help="HScore item: HIV-positive, or a long-term immunosuppressive treatment."),
            Item("immunosuppression_type", "Which", MultiChoice(IMMUNOSUPPRESSION), required=True,
                 show_if=_is("immunosuppression", "Y"), show_if_items=("immunosuppression",),
                 sas_name="IMMUNOTY"),
            Item("immunosuppression_other", "Other immunosuppression", Text(200), required=True,
                 show_if=_has("immunosuppression_type", "OTHER"),
                 show_if_items=("immunosuppression_type",), sas_name="IMMUNOOT"),
        )),
        Group("etiology", "Etiology of the hemophagocytic syndrome", (
            Item("etiology", "Etiology", MultiChoice(ETIOLOGIES), required=True, critical=True,
                 sas_name="HSETIOL", help="Tick every cause found; idiopathic when none is."),
            Item("etiology_detail", "Etiology, detail", Text(500), required=True,
                 show_if=_a_cause_is_named, show_if_items=("etiology",), sas_name="HSETIOLD",
                 help="The agent, the malignancy or the disease (e.g. EBV, diffuse large B-cell "
                      "lymphoma, adult-onset Still's disease)."),
        )),
        Group("history", "History", (
            Item("comorbidities", "Comorbidities", Text(2000), sas_name="COMORB"),
            Item("prior_treatment", "HS treated before inclusion", YesNo(), required=True,
                 sas_name="PRIORTRT"),
            Item("prior_treatment_detail", "HS treatments before inclusion", Text(2000),
                 required=True, show_if=_is("prior_treatment", "Y"),
                 show_if_items=("prior_treatment",), sas_name="PRIORTXT",
                 help="Drug, dose and dates (e.g. etoposide, dexamethasone, anakinra, IVIG)."),
        )),
        Group("icu_admission", "ICU admission", (
            Item("icu_admission_at", "Date and time of ICU admission", DateTime(), required=True,
                 critical=True, sas_name="ICUADMDT",
                 help="Admission to the ICU where the patient is included."),
        )),
    ),
    checks=(
        Check("MH-01", "hard", ("etiology",), _idiopathic_alone),
        Check("MH-02", "soft", ("icu_admission_at",), _admitted_by_inclusion, cross_form=True),
    ),
)
