"""Organ support (repeating): invasive or non-invasive ventilation, vasopressors, renal
replacement, ECMO, each with its start and stop (organ-support-free days are derived from it)."""

from __future__ import annotations

from ecrf.forms.definition import CRF, Check, Group, Item
from ecrf.forms.items import Choice, DateTime
from ecrf.i18n import msg

SUPPORTS = (("IMV", "Invasive mechanical ventilation"), ("NIV", "Non-invasive ventilation"),
            ("VASOPRESSOR", "Vasopressors"), ("RRT", "Renal replacement therapy"),
            ("ECMO_VV", "ECMO, veno-venous"), ("ECMO_VA", "ECMO, veno-arterial"))


def _stop_after_start(v):
    if v["stopped_at"] < v["started_at"]:
        return msg("The stop (%(stopped)s) is before the start.",
                   stopped=f"{v['stopped_at']:%Y-%m-%d %H:%M}")
    return None


DEFINITION = CRF(
    key="organ_support",
    title="Organ support",
    version=1,
    repeating=True,
    groups=(
        Group("support", "Support", (
            Item("support", "Support", Choice(SUPPORTS), required=True, critical=True),
            Item("started_at", "Start", DateTime(), required=True, sas_name="STARTAT"),
            Item("stopped_at", "Stop", DateTime(), help="Leave empty while ongoing.",
                 sas_name="STOPAT"),
        )),
    ),
    checks=(Check("OS-01", "hard", ("started_at", "stopped_at"), _stop_after_start),),
)
