"""ICU and hospital course, and end of study: discharges, vital status at D28 and D90, date and
cause of death, early termination and its reason. A death date ends the schedule."""

from __future__ import annotations

from ecrf.forms.definition import CRF, Check, Group, Item
from ecrf.forms.items import Choice, Date, DateTime, Text, YesNo
from ecrf.i18n import msg

VITAL = (("ALIVE", "Alive"), ("DEAD", "Dead"), ("UNKNOWN", "Unknown (lost to follow-up)"))
TERMINATION = (("COMPLETED", "Completed the follow-up"), ("DEATH", "Death"),
               ("CONSENT_WITHDRAWN", "Consent withdrawn"), ("LOST", "Lost to follow-up"),
               ("INVESTIGATOR", "Investigator decision"), ("OTHER", "Other"))


def _dead(v):
    return "DEAD" in (v.get("vital_d28"), v.get("vital_d90")) or v.get("died") == "Y"


def _early(v):
    return v.get("completed") == "N"


def _dates_in_order(v):
    if v["hospital_discharge"] < v["icu_discharge"].date():
        return msg("Hospital discharge (%(hospital)s) is before ICU discharge (%(icu)s).",
                   hospital=v["hospital_discharge"], icu=v["icu_discharge"].date())
    return None


def _death_after_discharge(v):
    death, discharge = v.get("death_date"), v.get("icu_discharge")
    if death is not None and discharge is not None and death < discharge.date():
        return msg("The death (%(death)s) is before the ICU discharge (%(discharge)s).",
                   death=death, discharge=discharge.date())
    return None


def _death_needs_date(v):
    if _dead(v) and v.get("death_date") is None:
        return msg("The patient died: give the date of death.")
    return None


def _alive_at_d90_after_death(v):
    if v["vital_d28"] == "DEAD" and v["vital_d90"] == "ALIVE":
        return msg("Dead at D28 cannot be alive at D90.")
    return None


DEFINITION = CRF(
    key="end_of_study",
    title="ICU course and end of study",
    version=1,
    groups=(
        Group("course", "ICU and hospital course", (
            Item("icu_discharge", "ICU discharge", DateTime(), sas_name="ICUDISAT"),
            Item("lst_limitation", "Decision to limit life-sustaining treatment", YesNo(),
                 sas_name="LSTLIMIT"),
            Item("lst_date", "Date of that decision", Date(),
                 show_if=lambda v: v.get("lst_limitation") == "Y",
                 show_if_items=("lst_limitation",), sas_name="LSTDATE"),
            Item("hospital_discharge", "Hospital discharge", Date(), sas_name="HOSPDIS"),
        )),
        Group("vital", "Vital status", (
            Item("vital_d28", "Vital status at D28", Choice(VITAL), critical=True,
                 sas_name="VITALD28"),
            Item("vital_d90", "Vital status at D90", Choice(VITAL), critical=True,
                 sas_name="VITALD90"),
            Item("died", "Died during the study", YesNo(), critical=True),
            Item("death_date", "Date of death", Date(), show_if=_dead,
                 show_if_items=("vital_d28", "vital_d90", "died"), critical=True,
                 sas_name="DEATHDT"),
            Item("death_cause", "Cause of death", Text(500), show_if=_dead,
                 show_if_items=("vital_d28", "vital_d90", "died"), sas_name="DEATHCAU"),
        )),
        Group("end", "End of study", (
            Item("completed", "Completed the planned follow-up", YesNo(), required=True,
                 sas_name="COMPLETD"),
            Item("termination_reason", "Reason for early termination", Choice(TERMINATION),
                 show_if=_early, show_if_items=("completed",), sas_name="TERMRSN"),
            Item("termination_detail", "Detail", Text(500), show_if=_early,
                 show_if_items=("completed",), sas_name="TERMDET"),
        )),
    ),
    checks=(
        Check("EOS-01", "hard", ("icu_discharge", "hospital_discharge"), _dates_in_order),
        Check("EOS-02", "hard", ("death_date",), _death_after_discharge),
        Check("EOS-03", "hard", (), _death_needs_date),
        Check("EOS-04", "hard", ("vital_d28", "vital_d90"), _alive_at_d90_after_death),
    ),
)
