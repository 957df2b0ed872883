"""Ruxolitinib dosing (repeating): one record per day and slot (morning / evening), given or not,
dose and tablets, route, status against the plan with a reason whenever not as planned, the
adverse event that caused it, and a permanent discontinuation with its date and reason."""

from __future__ import annotations

from decimal import Decimal

from ecrf.forms.definition import CRF, Check, Group, Item, Range
from ecrf.forms.items import Choice, Date, DecimalNumber, Integer, Text, Time, YesNo
from ecrf.i18n import msg
from ecrf.study import settings

SLOTS = (("AM", "Morning"), ("PM", "Evening"))
ROUTES = (("ORAL", "Oral"), ("NG", "Nasogastric or other enteral tube"))
STATUS = (("PLANNED", "As planned"), ("REDUCED", "Reduced"), ("INCREASED", "Increased"),
          ("INTERRUPTED", "Interrupted"), ("STOPPED", "Permanently stopped"))
REASONS = (("AE", "Adverse event"), ("THROMBOCYTOPENIA", "Thrombocytopenia"),
           ("NEUTROPENIA", "Neutropenia"), ("BILIRUBIN", "Hyperbilirubinaemia"),
           ("RENAL", "Renal failure / renal replacement"),
           ("CYP3A4", "Interacting drug (CYP3A4 inhibitor)"),
           ("ENTERAL", "Enteral route unavailable (ileus, vomiting, fasting)"),
           ("ERROR", "Medication error"), ("INVESTIGATOR", "Investigator decision"),
           ("WITHDRAWAL", "Patient or relative withdrawal"), ("DEATH", "Death"),
           ("OTHER", "Other"))
STOP_REASONS = (("COURSE_END", "End of the planned course"), ("HS_CONTROLLED", "HS controlled"),
                ("TOXICITY", "Toxicity"), ("DEATH", "Death"),
                ("CONSENT_WITHDRAWN", "Withdrawal of consent"),
                ("LST", "Withdrawal of life-sustaining treatment"), ("PREGNANCY", "Pregnancy"),
                ("OTHER", "Other"))


def _given(v):
    return v.get("given") == "Y"


def _not_as_planned(v):
    return v.get("status") not in (None, "PLANNED")


def _stopped(v):
    return v.get("status") == "STOPPED"


#: DOSE-01's messages by status (one sentence each, to be translated whole)
REASON_MISSING = {
    "REDUCED": msg("The dose is reduced: give the reason."),
    "INCREASED": msg("The dose is increased: give the reason."),
    "INTERRUPTED": msg("The dose is interrupted: give the reason."),
    "STOPPED": msg("The dose is stopped: give the reason."),
}
NOT_GIVEN = {
    "PLANNED": msg("A dose not given is interrupted or permanently stopped, not planned."),
    "REDUCED": msg("A dose not given is interrupted or permanently stopped, not reduced."),
    "INCREASED": msg("A dose not given is interrupted or permanently stopped, not increased."),
}


def _reason_needed(v):
    if _not_as_planned(v) and v.get("reason") is None:
        return REASON_MISSING[v["status"]]
    if v.get("given") == "N" and v["status"] not in ("INTERRUPTED", "STOPPED"):
        return NOT_GIVEN[v["status"]]
    return None


def _ae_link(v):
    if v.get("reason") == "AE" and v.get("ae_number") is None:
        return msg("The reason is an adverse event: give its number (AE #).")
    return None


def _tablets_match(v):
    total = Decimal(v["tablet_strength"]) * v["tablets"]
    if total != v["dose_mg"]:
        return msg("%(tablets)s tablet(s) of %(strength)s mg make %(total)s mg, not %(dose)s mg.",
                   tablets=v["tablets"], strength=v["tablet_strength"], total=total,
                   dose=v["dose_mg"])
    return None


def _dose_vs_plan(v):
    planned = Decimal(settings.PLANNED_DOSE_MG)
    status, dose = v["status"], v["dose_mg"]
    if status == "PLANNED" and dose != planned:
        return msg("%(dose)s mg is not the planned %(planned)s mg: say it is reduced or "
                   "increased.", dose=dose, planned=planned)
    if status == "REDUCED" and dose >= planned:
        return msg("A reduced dose is below the planned %(planned)s mg; found %(dose)s mg.",
                   planned=planned, dose=dose)
    if status == "INCREASED" and dose <= planned:
        return msg("An increased dose is above the planned %(planned)s mg; found %(dose)s mg.",
                   planned=planned, dose=dose)
    return None


def _ae_exists(v, context):
    numbers = {i.form_repeat for i, _ in context.all_values("adverse_event")}
    if v["ae_number"] not in numbers:
        return msg("There is no adverse event #%(number)s for this subject.",
                   number=v["ae_number"])
    return None


def _not_after_discontinuation(v, context):
    if v.get("given") != "Y":
        return None
    for _, other in context.all_values("dosing"):
        stopped = other.get("stop_date") if other.get("status") == "STOPPED" else None
        if stopped is not None and v["dose_date"] > stopped:
            return msg("Ruxolitinib was permanently stopped on %(stopped)s: no dose can be given "
                       "on %(day)s.", stopped=stopped, day=v["dose_date"])
    return None


def _contraception_covers(v, context):
    """I6: a woman of childbearing potential has a highly effective method on every dosing day."""
    demographics = context.values("demographics") or {}
    if v.get("given") != "Y" or demographics.get("wocbp") != "Y":
        return None
    method = context.values("contraception") or {}
    start, stop = method.get("method_start"), method.get("method_stop")
    day = v["dose_date"]
    if method.get("contraception_used") != "Y" or start is None:
        return msg("No highly effective contraception is recorded for this woman of "
                   "childbearing potential (contraception form): confirm, and check before giving "
                   "the dose.")
    if start > day.isoformat()[:len(start)] or (stop is not None and stop < day):
        if not stop:
            return msg("The contraception recorded (%(start)s to ongoing) does not cover the dose "
                       "of %(day)s.", start=start, day=day)
        return msg("The contraception recorded (%(start)s to %(stop)s) does not cover the dose of "
                   "%(day)s.", start=start, stop=stop, day=day)
    return None


def _not_before_inclusion(v, context):
    d0 = context.subject.inclusion_date
    if d0 is None:
        return msg("No dose can be recorded before the subject is included.")
    if v["dose_date"] < d0:
        return msg("A dose on %(day)s is before inclusion on %(d0)s.", day=v["dose_date"], d0=d0)
    return None


DEFINITION = CRF(
    key="dosing",
    title="Ruxolitinib administration",
    version=1,
    repeating=True,
    groups=(
        Group("administration", "Administration", (
            Item("dose_date", "Date", Date(), required=True, critical=True, sas_name="DOSEDT"),
            Item("slot", "Slot", Choice(SLOTS), required=True),
            Item("given", "Given", YesNo(), required=True, critical=True),
            Item("time_given", "Time given", Time(), show_if=_given, show_if_items=("given",),
                 sas_name="TIMEGIV"),
            Item("dose_mg", "Dose given", DecimalNumber(1), unit="mg",
                 hard=Range(Decimal("2.5"), Decimal(50)), show_if=_given,
                 show_if_items=("given",), critical=True),
            Item("tablet_strength", "Tablet strength", Choice(tuple(
                (str(s), f"{s} mg") for s in settings.TABLET_STRENGTHS_MG)), show_if=_given,
                 show_if_items=("given",), sas_name="TABSTR"),
            Item("tablets", "Number of tablets", Integer(), hard=Range(1, 8), show_if=_given,
                 show_if_items=("given",), sas_name="TABLETS"),
            Item("route", "Route", Choice(ROUTES), show_if=_given, show_if_items=("given",)),
        )),
        Group("plan", "Against the plan", (
            Item("status", "Status against the plan", Choice(STATUS), required=True,
                 critical=True),
            Item("reason", "Reason", Choice(REASONS), show_if=_not_as_planned,
                 show_if_items=("status",)),
            Item("ae_number", "Adverse event causing it (AE #)", Integer(), hard=Range(1, 999),
                 show_if=_not_as_planned, show_if_items=("status",), sas_name="AENUM"),
            Item("reason_other", "Other reason", Text(200), show_if=_not_as_planned,
                 show_if_items=("status",), sas_name="REASOTH"),
        )),
        Group("discontinuation", "Permanent discontinuation", (
            Item("stop_date", "Date of permanent discontinuation", Date(), show_if=_stopped,
                 show_if_items=("status",), sas_name="STOPDT"),
            Item("stop_reason", "Reason for permanent discontinuation", Choice(STOP_REASONS),
                 show_if=_stopped, show_if_items=("status",), sas_name="STOPRSN"),
        )),
    ),
    checks=(
        Check("DOSE-01", "hard", ("status",), _reason_needed),
        Check("DOSE-02", "hard", ("reason",), _ae_link),
        Check("DOSE-03", "hard", ("dose_mg", "tablet_strength", "tablets"), _tablets_match),
        Check("DOSE-04", "hard", ("dose_mg", "status"), _dose_vs_plan),
        Check("DOSE-05", "hard", ("ae_number",), _ae_exists, cross_form=True),
        Check("DOSE-06", "hard", ("dose_date",), _not_before_inclusion, cross_form=True),
        Check("DOSE-07", "hard", ("dose_date",), _not_after_discontinuation, cross_form=True),
        Check("DOSE-08", "soft", ("dose_date",), _contraception_covers, cross_form=True),
    ),
)
