"""Demographics (D0): sex, age at inclusion, weight and height, and a woman's childbearing potential.

The age in whole years at inclusion is what inclusion criterion I1 reads (adults older than
``settings.MINIMUM_AGE_YEARS``); the weight serves the doses per kilogram. The birth date is asked
only when ``settings.COLLECT_BIRTH_DATE`` is set: the item is then part of the definition, otherwise
it does not exist at all (no hidden item in the page, the export or the SAS names). The definition is
built from the setting when the module is imported; changing the setting once data exist is an
amendment and needs a new CRF version.

A woman of childbearing potential (WOCBP, CTFG 2014/2020, domain notes 6.1) is fertile from menarche
until post-menopause unless permanently sterile; the contraception form asks for her pregnancy test
and highly effective method.
"""

from __future__ import annotations

from decimal import Decimal

from ecrf.forms.definition import CRF, Check, Group, Item, Range
from ecrf.forms.items import Choice, Date, DecimalNumber, Integer, Text, YesNo
from ecrf.i18n import msg
from ecrf.study import settings

SEXES = (("M", "Male"), ("F", "Female"))
NOT_WOCBP = (
    ("POSTMENOPAUSAL", "Postmenopausal: no menses for 12 months without another medical cause"),
    ("HYSTERECTOMY", "Permanently sterile: hysterectomy"),
    ("SALPINGECTOMY", "Permanently sterile: bilateral salpingectomy"),
    ("OOPHORECTOMY", "Permanently sterile: bilateral oophorectomy"),
    ("OTHER", "Other medical reason"),
)
WOCBP_HELP = ("Fertile from menarche until post-menopause, unless permanently sterile "
              "(hysterectomy, bilateral salpingectomy or bilateral oophorectomy). Postmenopausal "
              "means no menses for 12 months without another medical cause; one FSH value alone "
              "is not enough.")


def _is(key: str, code: str):
    return lambda v: v.get(key) == code


def _adult(v):
    if v["age"] <= settings.MINIMUM_AGE_YEARS:
        return msg("The protocol includes adults older than %(minimum)s years (inclusion "
                   "criterion I1); found %(age)s.", minimum=settings.MINIMUM_AGE_YEARS, age=v["age"])
    return None


def _age_at_inclusion(v, context):
    """Whole years from the birth date to the inclusion date (today at the site while screening)."""
    born = v.get("birth_date")
    if born is None:
        return None
    subject = context.subject if context is not None else None
    on = subject.inclusion_date if subject is not None and subject.inclusion_date else None
    if on is None:
        from datetime import datetime
        from zoneinfo import ZoneInfo

        zone = subject.site.timezone if subject is not None else "UTC"
        on = datetime.now(ZoneInfo(zone)).date()
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def build(collect_birth_date: bool) -> CRF:
    """The demographics CRF, with or without the birth date."""
    birth = (Item("birth_date", "Birth date", Date(), required=True, critical=True,
                  sas_name="BRTHDT"),) if collect_birth_date else ()
    # with a birth date, the age at inclusion is computed by the server, never typed
    derived_age = {"derive": _age_at_inclusion, "derive_from": ("birth_date",),
                   "derive_context": True} if collect_birth_date else {}
    return CRF(
        key="demographics",
        title="Demographics",
        version=1,
        description="Sex, age, weight, height and childbearing potential.",
        groups=(
            Group("person", "Patient", (
                Item("sex", "Sex", Choice(SEXES), required=True, critical=True),
                *birth,
                Item("age", "Age at inclusion", Integer(), unit="years", required=True,
                     critical=True, hard=Range(0, 120), help="In whole years on the day of inclusion.",
                     **derived_age),
                Item("weight", "Weight", DecimalNumber(1), unit="kg", required=True, critical=True,
                     hard=Range(Decimal(10), Decimal(400)), soft=Range(Decimal(35), Decimal(200)),
                     help="Measured or estimated at ICU admission."),
                Item("height", "Height", Integer(), unit="cm", required=True,
                     hard=Range(50, 250), soft=Range(140, 210)),
            )),
            Group("wocbp", "Childbearing potential", (
                Item("wocbp", "Woman of childbearing potential", YesNo(), required=True,
                     critical=True, show_if=_is("sex", "F"), show_if_items=("sex",),
                     help=WOCBP_HELP),
                Item("not_wocbp_reason", "Why not of childbearing potential", Choice(NOT_WOCBP),
                     required=True, show_if=_is("wocbp", "N"), show_if_items=("wocbp",),
                     sas_name="NWOCBPR",
                     help="Documented in the medical records, by examination or by history."),
                Item("not_wocbp_other", "Other medical reason", Text(200), required=True,
                     show_if=_is("not_wocbp_reason", "OTHER"), show_if_items=("not_wocbp_reason",),
                     sas_name="NWOCBPO"),
            )),
        ),
        checks=(
            Check("DEM-01", "soft", ("age",), _adult),
        ),
    )


DEFINITION = build(settings.COLLECT_BIRTH_DATE)
