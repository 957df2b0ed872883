"""HS standard treatments and other concomitant medications (repeating): drug, dose, route,
start and stop; strong CYP3A4 inhibitors flagged (they call for a ruxolitinib dose adjustment)."""

from __future__ import annotations

from ecrf.forms.definition import CRF, Check, Group, Item
from ecrf.forms.items import Choice, PartialDate, Text, YesNo
from ecrf.i18n import msg

KINDS = (("HS", "HS standard treatment"), ("ETIOLOGY", "Treatment of the HS cause"),
         ("OTHER", "Other concomitant medication"))
HS_DRUGS = (("ETOPOSIDE", "Etoposide"), ("DEXAMETHASONE", "Dexamethasone"),
            ("METHYLPRED", "Methylprednisolone"), ("OTHER_STEROID", "Other corticosteroid"),
            ("IVIG", "Intravenous immunoglobulins"), ("ANAKINRA", "Anakinra"),
            ("TOCILIZUMAB", "Tocilizumab"), ("EMAPALUMAB", "Emapalumab"),
            ("CICLOSPORIN", "Ciclosporin"), ("RITUXIMAB", "Rituximab"),
            ("PLASMA_EXCHANGE", "Plasma exchange"), ("OTHER", "Other"))
ROUTES = (("IV", "Intravenous"), ("ORAL", "Oral"), ("ENTERAL", "Enteral tube"),
          ("SC", "Subcutaneous"), ("IM", "Intramuscular"), ("OTHER", "Other"))
#: strong CYP3A4 inhibitors common in the ICU (domain notes, section 7.3)
STRONG_CYP3A4 = ("voriconazole", "posaconazole", "itraconazole", "ketoconazole",
                 "clarithromycin", "ritonavir", "cobicistat")
#: their names as the message shows them (capitalised; French names differ: kétoconazole...)
INHIBITOR_NAMES = {"voriconazole": msg("Voriconazole"), "posaconazole": msg("Posaconazole"),
                   "itraconazole": msg("Itraconazole"), "ketoconazole": msg("Ketoconazole"),
                   "clarithromycin": msg("Clarithromycin"), "ritonavir": msg("Ritonavir"),
                   "cobicistat": msg("Cobicistat")}


def _is_hs(v):
    return v.get("kind") == "HS"


def _strong_cyp3a4(v):
    name = v["drug_name"].lower()
    found = [d for d in STRONG_CYP3A4 if d in name]
    if found and v.get("cyp3a4") != "Y":
        return msg("%(drug)s is a strong CYP3A4 inhibitor: tick the flag, and check the "
                   "ruxolitinib dose.", drug=INHIBITOR_NAMES[found[0]])
    return None


def _stop_after_start(v):
    start, stop = v["start"], v["stop"]
    n = min(len(start), len(stop))
    if stop[:n] < start[:n]:
        return msg("The stop (%(stop)s) is before the start (%(start)s).", stop=stop, start=start)
    return None


DEFINITION = CRF(
    key="concomitant",
    title="Concomitant treatment",
    version=1,
    repeating=True,
    groups=(
        Group("treatment", "Treatment", (
            Item("kind", "Kind", Choice(KINDS), required=True),
            Item("hs_drug", "HS treatment", Choice(HS_DRUGS), show_if=_is_hs,
                 show_if_items=("kind",), sas_name="HSDRUG"),
            Item("drug_name", "Drug (name)", Text(200), required=True, sas_name="DRUG"),
            Item("dose", "Dose and frequency", Text(100)),
            Item("route", "Route", Choice(ROUTES)),
            Item("start", "Start", PartialDate(), required=True),
            Item("stop", "Stop", PartialDate(), help="Leave empty while ongoing."),
            Item("cyp3a4", "Strong CYP3A4 inhibitor", YesNo(), sas_name="CYP3A4"),
        )),
    ),
    checks=(
        Check("CM-01", "soft", ("drug_name",), _strong_cyp3a4),
        Check("CM-02", "hard", ("start", "stop"), _stop_after_start),
    ),
)
