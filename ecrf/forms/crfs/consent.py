"""Informed consent (D0): who consented and when, the patient's later continuation consent, and a
withdrawal of consent.

The consent pathway of the site sheet (domain notes 1.4, inclusion criterion I5): the patient signs;
or, when the patient cannot consent, a relative or the trusted person ("personne de confiance")
signs; or, with nobody present, the patient is included in an emergency (noted in the ICU chart).
After a relative's consent or an emergency inclusion, the patient's own consent to continue is
sought as soon as his or her condition allows: it is obtained (with its date and time), or it is
not, and why (died, never regained the capacity to consent, refused; after a refusal, whether the
data already collected may be used). All date-times are entered in the site's local time.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from ecrf.forms.definition import CRF, Check, Group, Item
from ecrf.forms.items import Choice, Date, DateTime, YesNo
from ecrf.i18n import msg

CONSENT_TYPES = (
    ("PATIENT", "The patient"),
    ("RELATIVE", "A relative or the trusted person (the patient cannot consent)"),
    ("EMERGENCY", "Emergency inclusion, no relative present"),
)
#: the consent types after which the patient's own consent to continue is sought
NEEDS_CONTINUATION = {"RELATIVE", "EMERGENCY"}
RELATIONSHIPS = (
    ("SPOUSE", "Spouse or partner"),
    ("CHILD", "Child"),
    ("PARENT", "Parent"),
    ("SIBLING", "Brother or sister"),
    ("OTHER_FAMILY", "Other family member"),
    ("TRUSTED", "Trusted person (personne de confiance), not family"),
    ("OTHER", "Other close person"),
)
NOT_OBTAINED = (
    ("DIED", "The patient died before being able to consent"),
    ("NO_CAPACITY", "The patient never regained the capacity to consent"),
    ("REFUSED", "The patient refused to continue"),
)
#: the item holding the first consent's date and time, for each consent type
FIRST_CONSENT = {"PATIENT": "patient_signed_at", "RELATIVE": "relative_signed_at",
                 "EMERGENCY": "emergency_at"}
SIGNATURE_LABEL = {"PATIENT": msg("the patient's signature"),
                   "RELATIVE": msg("the relative's signature"),
                   "EMERGENCY": msg("the emergency inclusion")}
#: CONS-01's message for each consent type (one sentence each, to be translated whole)
SIGNATURE_MISSING = {
    "PATIENT": msg("A consent signed by the patient needs the date and time of the patient's "
                   "signature (found none)."),
    "RELATIVE": msg("A consent signed by a relative or the trusted person needs the date and time "
                    "of the relative's signature (found none)."),
    "EMERGENCY": msg("An emergency inclusion needs the date and time of the emergency inclusion "
                     "(found none)."),
}


def _type_is(*types: str):
    return lambda v: v.get("consent_type") in types


def _is(key: str, code: str):
    return lambda v: v.get(key) == code


def _first_consent(v):
    key = FIRST_CONSENT.get(v.get("consent_type"))
    return None if key is None else v.get(key)


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


# --- checks ----------------------------------------------------------------------------------


def _signature_of_the_type(v):
    kind = v["consent_type"]
    if v.get(FIRST_CONSENT[kind]) is None:
        return SIGNATURE_MISSING[kind]
    return None


def _continuation_after_first_consent(v):
    first = _first_consent(v)
    if first is not None and v["continuation_at"] < first:
        return msg("The patient's continuation consent (%(continuation)s) cannot be before "
                   "%(signature)s (%(first)s).", continuation=_when(v["continuation_at"]),
                   signature=SIGNATURE_LABEL[v["consent_type"]], first=_when(first))
    return None


def _withdrawal_after_consent(v, context):
    """Compares the withdrawal date with the consent's date at the site (a cross-form check only
    to know the site's time zone; without a context, in UTC)."""
    first = _first_consent(v)
    if first is None:
        return None
    tz = context.subject.site.timezone if context is not None else "UTC"
    consented_on = first.astimezone(ZoneInfo(tz)).date()
    if v["withdrawal_date"] < consented_on:
        return msg("Consent cannot be withdrawn (%(withdrawn)s) before it was given "
                   "(%(consented)s).", withdrawn=v["withdrawal_date"], consented=consented_on)
    return None


DEFINITION = CRF(
    key="consent",
    title="Informed consent",
    version=1,
    description="Who consented and when, the patient's continuation consent, withdrawal.",
    groups=(
        Group("consent", "Consent at inclusion", (
            Item("consent_type", "Consent given by", Choice(CONSENT_TYPES), required=True,
                 critical=True, sas_name="CONSTYPE",
                 help="A relative or the trusted person signs when the patient cannot consent; "
                      "with nobody present the patient is included in an emergency."),
            Item("patient_signed_at", "Date and time of the patient's signature", DateTime(),
                 required=True, critical=True, show_if=_type_is("PATIENT"),
                 show_if_items=("consent_type",), sas_name="PATSIGDT"),
            Item("relative_signed_at", "Date and time of the relative's signature", DateTime(),
                 required=True, critical=True, show_if=_type_is("RELATIVE"),
                 show_if_items=("consent_type",), sas_name="RELSIGDT"),
            Item("relationship", "Relationship of the signatory to the patient",
                 Choice(RELATIONSHIPS), required=True, show_if=_type_is("RELATIVE"),
                 show_if_items=("consent_type",), sas_name="RELATION"),
            Item("emergency_at", "Date and time of the emergency inclusion", DateTime(),
                 required=True, critical=True, show_if=_type_is("EMERGENCY"),
                 show_if_items=("consent_type",), sas_name="EMERGDT",
                 help="As noted in the ICU chart."),
        )),
        Group("continuation", "The patient's consent to continue", (
            Item("continuation", "Continuation consent signed by the patient", YesNo(),
                 required=True, critical=True, show_if=_type_is(*NEEDS_CONTINUATION),
                 show_if_items=("consent_type",), sas_name="CONTCONS",
                 help="Sought as soon as the patient's condition allows; leave empty until then."),
            Item("continuation_at", "Date and time of the patient's continuation consent", DateTime(),
                 required=True, critical=True, show_if=_is("continuation", "Y"),
                 show_if_items=("continuation",), sas_name="CONTDT"),
            Item("not_obtained_reason", "Why it was not obtained", Choice(NOT_OBTAINED),
                 required=True, show_if=_is("continuation", "N"), show_if_items=("continuation",),
                 sas_name="CONTNRSN"),
            Item("data_use", "The data already collected may be used", YesNo(), required=True,
                 critical=True, show_if=_is("not_obtained_reason", "REFUSED"),
                 show_if_items=("not_obtained_reason",), sas_name="DATAUSE",
                 help="The patient's decision when refusing to continue."),
        )),
        Group("withdrawal", "Withdrawal of consent", (
            Item("withdrawn", "Consent withdrawn", YesNo(), required=True, critical=True,
                 sas_name="WITHDRWN"),
            Item("withdrawal_date", "Date of withdrawal", Date(), required=True, critical=True,
                 show_if=_is("withdrawn", "Y"), show_if_items=("withdrawn",), sas_name="WDDATE"),
        )),
    ),
    checks=(
        Check("CONS-01", "hard", ("consent_type",), _signature_of_the_type),
        Check("CONS-02", "hard", ("continuation_at",), _continuation_after_first_consent),
        Check("CONS-03", "hard", ("withdrawal_date",), _withdrawal_after_consent, cross_form=True),
    ),
)
