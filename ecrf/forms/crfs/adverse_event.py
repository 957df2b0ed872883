"""Adverse event (repeating): a CTCAE v5.0 term and grade, seriousness, causality to ruxolitinib,
expectedness, action taken and outcome (CDISC terms), and for a serious event the moment the site
learned of it, which starts the 24-hour reporting clock (EU CTR art. 41)."""

from __future__ import annotations

from datetime import timedelta

from ecrf.forms.definition import CRF, Check, Group, Item
from ecrf.forms.items import (
    Choice,
    CtcaeTerm,
    DateTime,
    MultiChoice,
    PartialDate,
    Text,
    YesNo,
    ctcae_terms,
)
from ecrf.i18n import msg

GRADES = (("1", "1 Mild"), ("2", "2 Moderate"), ("3", "3 Severe"), ("4", "4 Life-threatening"),
          ("5", "5 Death"))
SERIOUSNESS = (("DEATH", "Results in death"), ("LIFE", "Life-threatening"),
               ("HOSP", "Requires or prolongs hospitalisation"),
               ("DISAB", "Persistent or significant disability or incapacity"),
               ("CONG", "Congenital anomaly or birth defect"),
               ("OTHER", "Other important medical event"))
#: WHO-UMC causality; certain, probable and possible count as related
CAUSALITY = (("CERTAIN", "Certain"), ("PROBABLE", "Probable / likely"), ("POSSIBLE", "Possible"),
             ("UNLIKELY", "Unlikely"), ("CONDITIONAL", "Conditional / unclassified"),
             ("UNASSESSABLE", "Unassessable / unclassifiable"))
RELATED = {"CERTAIN", "PROBABLE", "POSSIBLE"}
ACTION = (("DOSE NOT CHANGED", "Dose not changed"), ("DOSE REDUCED", "Dose reduced"),
          ("DOSE INCREASED", "Dose increased"), ("DRUG INTERRUPTED", "Drug interrupted"),
          ("DRUG WITHDRAWN", "Drug withdrawn"), ("NOT APPLICABLE", "Not applicable"),
          ("UNKNOWN", "Unknown"))
OUTCOME = (("RECOVERED/RESOLVED", "Recovered / resolved"),
           ("RECOVERING/RESOLVING", "Recovering / resolving"),
           ("NOT RECOVERED/NOT RESOLVED", "Not recovered / not resolved"),
           ("RECOVERED/RESOLVED WITH SEQUELAE", "Recovered / resolved with sequelae"),
           ("FATAL", "Fatal"), ("UNKNOWN", "Unknown"))
REPORTING_HOURS = 24


def is_serious(v) -> bool:
    return v.get("serious") == "Y"


def _related(v):
    causality = v.get("causality")
    if causality is None:
        return None
    return "Y" if causality in RELATED else "N"


def _deadline(v):
    aware = v.get("aware_at")
    return None if aware is None or not is_serious(v) else aware + timedelta(hours=REPORTING_HOURS)


def _grade_defined(v):
    grades = ctcae_terms()[v["term"]]["grades"]
    if int(v["grade"]) not in grades:
        term = ctcae_terms()[v["term"]]["term"]
        # the term is CTCAE's own (English) terminology: it is shown as it is
        return msg("CTCAE v5.0 defines no grade %(grade)s for %(term)s (grades: %(grades)s).",
                   grade=v["grade"], term=term, grades=", ".join(map(str, grades)))
    return None


def _end_after_onset(v):
    onset, end = v["onset"], v["end"]
    # compare at the precision both dates have: "2026-03" is not after "2026-03-05"
    n = min(len(onset), len(end))
    if end[:n] < onset[:n]:
        return msg("The end (%(end)s) is before the onset (%(onset)s).", end=end, onset=onset)
    return None


def _serious_needs_criterion(v):
    if is_serious(v) and not v.get("criteria"):
        return msg("A serious event needs at least one seriousness criterion.")
    return None


def _fatal_needs_grade_5(v):
    if v["outcome"] == "FATAL" and v.get("grade") != "5":
        return msg("A fatal outcome needs grade 5.")
    if v.get("grade") == "5" and v["outcome"] != "FATAL":
        return msg("Grade 5 means death related to the event: the outcome is fatal.")
    return None


def _death_date_when_fatal(v):
    if v["outcome"] == "FATAL" and not v.get("end"):
        return msg("A fatal outcome needs the date of death as the end date.")
    return None


def _reported_late(v):
    due = _deadline(v)
    if due is not None and v["reported_at"] > due:
        hours = (v["reported_at"] - v["aware_at"]).total_seconds() / 3600
        return msg("Reported %(hours)s hours after the site became aware: past the "
                   "%(deadline)s-hour deadline. Confirm, and record why in the narrative.",
                   hours=f"{hours:.0f}", deadline=REPORTING_HOURS)
    return None


DEFINITION = CRF(
    key="adverse_event",
    title="Adverse event",
    version=1,
    repeating=True,
    groups=(
        Group("event", "Event", (
            Item("term", "CTCAE v5.0 term", CtcaeTerm(), required=True, critical=True),
            Item("verbatim", "Description as reported", Text(300), sas_name="VERBATIM"),
            Item("grade", "CTCAE grade (worst)", Choice(GRADES), required=True, critical=True),
            Item("onset", "Onset date", PartialDate(), required=True, critical=True),
            Item("end", "End date", PartialDate(),
                 help="Leave empty while ongoing. For a fatal event, the date of death."),
            Item("special_interest", "Adverse event of special interest (infection, thrombosis, "
                 "bleeding, cytopenia, PML, herpes zoster)", YesNo(), sas_name="AESI"),
        )),
        Group("seriousness", "Seriousness", (
            Item("serious", "Serious", YesNo(), required=True, critical=True),
            Item("criteria", "Seriousness criteria", MultiChoice(SERIOUSNESS),
                 show_if=is_serious, show_if_items=("serious",), critical=True,
                 sas_name="SERCRIT"),
            Item("aware_at", "Site became aware of the serious event", DateTime(),
                 show_if=is_serious, show_if_items=("serious",), critical=True,
                 help="Starts the 24-hour reporting clock.", sas_name="AWAREAT"),
            Item("report_due", "Report to the sponsor due by", DateTime(), derive=_deadline,
                 derive_from=("aware_at", "serious"), sas_name="REPDUE"),
            Item("reported_at", "Reported to the sponsor at", DateTime(),
                 show_if=is_serious, show_if_items=("serious",), critical=True,
                 sas_name="REPAT"),
        )),
        Group("assessment", "Assessment", (
            Item("causality", "Relationship to ruxolitinib (WHO-UMC)", Choice(CAUSALITY),
                 required=True, critical=True, sas_name="CAUSAL"),
            Item("related", "Related to ruxolitinib", Choice((("Y", "Related"),
                                                              ("N", "Not related"))),
                 derive=_related, derive_from=("causality",), sas_name="RELATED"),
            Item("expected", "Expected (reference safety information)", YesNo(),
                 sas_name="EXPECTED"),
            Item("action", "Action taken with ruxolitinib", Choice(ACTION), required=True),
            Item("outcome", "Outcome", Choice(OUTCOME), required=True),
            Item("treatment", "Treatment given", Text(300), sas_name="TREAT"),
        )),
    ),
    checks=(
        Check("AE-01", "hard", ("term", "grade"), _grade_defined),
        Check("AE-02", "hard", ("onset", "end"), _end_after_onset),
        Check("AE-03", "hard", ("serious",), _serious_needs_criterion),
        Check("AE-04", "hard", ("outcome",), _fatal_needs_grade_5),
        Check("AE-05", "hard", ("outcome",), _death_date_when_fatal),
        Check("AE-06", "soft", ("aware_at", "reported_at"), _reported_late),
    ),
)
