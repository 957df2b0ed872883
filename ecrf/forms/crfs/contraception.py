"""Contraception and pregnancy (D0): the pregnancy test before the first dose, the highly effective
method, and a pregnancy during the study.

Whether the patient is a woman of childbearing potential (WOCBP) is answered once, on the
demographics form; the checks here read it there (cross-form). A WOCBP is included only after a
negative pregnancy test before the first dose and with a highly effective method kept during the
treatment and ``settings.CONTRACEPTION_DAYS_AFTER_LAST_DOSE`` day(s) after (inclusion criterion I6,
exclusion E2; CTFG 2014/2020, domain notes 6). These checks warn and do not block: what happened must
be recordable, and the eligibility (ecrf/study/eligibility.py) refuses the inclusion.

The methods are the CTFG "highly effective" list (domain notes 6.2), one code per method and route.
"""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from ecrf.forms.definition import CRF, Check, Group, Item
from ecrf.forms.items import Choice, Date, DateTime, PartialDate, Text, YesNo
from ecrf.i18n import msg
from ecrf.study import settings

TEST_TYPES = (("SERUM", "Serum"), ("URINE", "Urine"))
RESULTS = (("NEG", "Negative"), ("POS", "Positive"))
#: CTFG highly effective methods (failure rate below 1 % a year with consistent, correct use)
METHODS = (
    ("COMBINED_ORAL", "Combined (oestrogen and progestogen) hormonal contraception that inhibits "
                      "ovulation: oral"),
    ("COMBINED_VAGINAL", "Combined (oestrogen and progestogen) hormonal contraception that inhibits "
                         "ovulation: intravaginal"),
    ("COMBINED_PATCH", "Combined (oestrogen and progestogen) hormonal contraception that inhibits "
                       "ovulation: transdermal"),
    ("PROGESTOGEN_ORAL", "Progestogen-only hormonal contraception that inhibits ovulation: oral"),
    ("PROGESTOGEN_INJECTABLE", "Progestogen-only hormonal contraception that inhibits ovulation: "
                               "injectable"),
    ("PROGESTOGEN_IMPLANT", "Implantable progestogen-only hormonal contraception that inhibits "
                            "ovulation"),
    ("IUD", "Intrauterine device (IUD)"),
    ("IUS", "Intrauterine hormone-releasing system (IUS)"),
    ("TUBAL_OCCLUSION", "Bilateral tubal occlusion"),
    ("VASECTOMISED_PARTNER", "Vasectomised partner (only if the sole partner, with azoospermia "
                             "confirmed)"),
    ("ABSTINENCE", "Sexual abstinence (no heterosexual intercourse during the whole risk period, "
                   "in line with the participant's usual lifestyle)"),
)


def _is(key: str, code: str):
    return lambda v: v.get(key) == code


def _wocbp(context) -> bool:
    """Whether the demographics form says the patient is a woman of childbearing potential."""
    if context is None:
        return False
    demographics = context.values("demographics")
    return demographics is not None and demographics.get("wocbp") == "Y"


def _local_date(value, context) -> date:
    return value.astimezone(ZoneInfo(context.subject.site.timezone)).date()


def _inclusion(context) -> date | None:
    return None if context is None else context.subject.inclusion_date


def _after(partial: str, day: date) -> bool:
    """A partial date (YYYY, YYYY-MM, YYYY-MM-DD) is surely after ``day`` at its precision."""
    return partial > day.isoformat()[:len(partial)]


# --- checks ----------------------------------------------------------------------------------


def _method_kept_after_last_dose(v, context):
    """I6: the method is kept from the first dose to CONTRACEPTION_DAYS_AFTER_LAST_DOSE after."""
    from datetime import timedelta

    if not _wocbp(context):
        return None
    doses = [d["dose_date"] for _, d in context.all_values("dosing")
             if d.get("given") == "Y" and d.get("dose_date") is not None]
    if not doses:
        return None
    needed = max(doses) + timedelta(days=settings.CONTRACEPTION_DAYS_AFTER_LAST_DOSE)
    if v["method_stop"] < needed:
        return msg("The method stopped on %(stopped)s: it must be kept until %(needed)s, "
                   "%(days)s day(s) after the last dose (%(last)s).", stopped=v["method_stop"],
                   needed=needed, days=settings.CONTRACEPTION_DAYS_AFTER_LAST_DOSE,
                   last=max(doses))
    return None


def _test_needed(v, context):
    if v["pregnancy_test"] == "N" and _wocbp(context):
        return msg("A woman of childbearing potential (demographics) is included only after a "
                   "negative pregnancy test before the first dose (I6); found no test.")
    return None


def _positive_test(v):
    if v["pregnancy_test_result"] == "POS":
        return msg("The pregnancy test before the first dose is positive: a pregnant woman cannot "
                   "be included (exclusion E2). Confirm the result.")
    return None


def _method_needed(v, context):
    if v["contraception_used"] == "N" and _wocbp(context):
        days = settings.CONTRACEPTION_DAYS_AFTER_LAST_DOSE
        return msg("A woman of childbearing potential (demographics) needs a highly effective "
                   "method from the first dose to %(days)s day(s) after the last (I6); found none.",
                   days=days)
    return None


def _test_timing(v, context):
    included = _inclusion(context)
    if included is None:
        return None
    tested = _local_date(v["pregnancy_test_at"], context)
    most = settings.PREGNANCY_TEST_MAX_DAYS_BEFORE_INCLUSION
    if tested > included:
        return msg("The pregnancy test (%(tested)s) is after the inclusion (%(included)s): it must "
                   "come before the first dose.", tested=tested, included=included)
    if (included - tested).days > most:
        return msg("The pregnancy test (%(tested)s) is %(days)s days before the inclusion "
                   "(%(included)s); it is expected at most %(most)s days before.", tested=tested,
                   days=(included - tested).days, included=included, most=most)
    return None


def _method_started_by_inclusion(v, context):
    included = _inclusion(context)
    if included is not None and _after(v["method_start"], included):
        return msg("The method started on %(started)s, after the inclusion (%(included)s): it "
                   "must be in place from the first dose.", started=v["method_start"],
                   included=included)
    return None


def _pregnancy_during_the_study(v, context):
    included = _inclusion(context)
    if included is not None and v["pregnancy_known_date"] < included:
        return msg("The pregnancy was known on %(known)s, before the inclusion (%(included)s): a "
                   "pregnancy at inclusion is exclusion E2, not a pregnancy during the study.",
                   known=v["pregnancy_known_date"], included=included)
    return None


DEFINITION = CRF(
    key="contraception",
    title="Contraception and pregnancy",
    version=1,
    description="Pregnancy test before the first dose, highly effective method, pregnancy report.",
    groups=(
        Group("pregnancy_test", "Pregnancy test before the first dose", (
            Item("pregnancy_test", "Pregnancy test done before the first dose", YesNo(),
                 required=True, critical=True, sas_name="PREGTEST",
                 help="Needed for a woman of childbearing potential (see demographics)."),
            Item("pregnancy_test_type", "Type of test", Choice(TEST_TYPES), required=True,
                 show_if=_is("pregnancy_test", "Y"), show_if_items=("pregnancy_test",),
                 sas_name="PREGTYPE"),
            Item("pregnancy_test_at", "Date and time of the sample", DateTime(), required=True,
                 critical=True, show_if=_is("pregnancy_test", "Y"),
                 show_if_items=("pregnancy_test",), sas_name="PREGDT"),
            Item("pregnancy_test_result", "Result", Choice(RESULTS), required=True, critical=True,
                 show_if=_is("pregnancy_test", "Y"), show_if_items=("pregnancy_test",),
                 sas_name="PREGRES"),
        )),
        Group("method", "Highly effective contraception", (
            Item("contraception_used", "A highly effective method is used from the first dose",
                 YesNo(), required=True, critical=True, sas_name="CONTRUSE",
                 help="Needed for a woman of childbearing potential, during the treatment and "
                      "after the last dose."),
            Item("method", "Method", Choice(METHODS), required=True, critical=True,
                 show_if=_is("contraception_used", "Y"), show_if_items=("contraception_used",)),
            Item("method_start", "Method used since", PartialDate(), required=True,
                 show_if=_is("contraception_used", "Y"), show_if_items=("contraception_used",),
                 sas_name="METHODST", help="The year, or the month, when the day is not known."),
            Item("method_stop", "Method stopped on", Date(),
                 show_if=_is("contraception_used", "Y"), show_if_items=("contraception_used",),
                 sas_name="METHODSP", help="Leave empty while the method is used."),
        )),
        Group("pregnancy", "Pregnancy during the study", (
            Item("pregnancy", "Pregnancy during the study", YesNo(), sas_name="PREG",
                 help="Report a pregnancy as soon as it is known, and follow it to its outcome."),
            Item("pregnancy_known_date", "Date the pregnancy became known", Date(), required=True,
                 critical=True, show_if=_is("pregnancy", "Y"), show_if_items=("pregnancy",),
                 sas_name="PREGKNDT"),
            Item("pregnancy_outcome", "Outcome of the pregnancy", Text(1000), required=True,
                 show_if=_is("pregnancy", "Y"), show_if_items=("pregnancy",), sas_name="PREGOUT"),
        )),
    ),
    checks=(
        Check("CONTRA-01", "soft", ("pregnancy_test",), _test_needed, cross_form=True),
        Check("CONTRA-02", "soft", ("pregnancy_test_result",), _positive_test),
        Check("CONTRA-03", "soft", ("contraception_used",), _method_needed, cross_form=True),
        Check("CONTRA-04", "soft", ("pregnancy_test_at",), _test_timing, cross_form=True),
        Check("CONTRA-05", "soft", ("method_start",), _method_started_by_inclusion,
              cross_form=True),
        Check("CONTRA-06", "soft", ("pregnancy_known_date",), _pregnancy_during_the_study,
              cross_form=True),
        Check("CONTRA-07", "soft", ("method_stop",), _method_kept_after_last_dose,
              cross_form=True),
    ),
)
