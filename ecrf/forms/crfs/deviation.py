"""Protocol deviations (repeating): date, category, description, action taken. The system raises
one itself when data behind eligibility are corrected after inclusion and the subject no longer
meets the criteria."""

from __future__ import annotations

from ecrf.forms.definition import CRF, Group, Item
from ecrf.forms.items import Choice, Date, Text, YesNo

CATEGORIES = (("ELIGIBILITY", "Eligibility criteria not met"), ("CONSENT", "Informed consent"),
              ("DOSING", "Study treatment"), ("VISIT", "Visit or assessment missed or late"),
              ("PROHIBITED", "Prohibited medication"), ("SAFETY", "Safety reporting"),
              ("OTHER", "Other"))

DEFINITION = CRF(
    key="deviation",
    title="Protocol deviation",
    version=1,
    repeating=True,
    groups=(
        Group("deviation", "Deviation", (
            Item("deviation_date", "Date", Date(), required=True, sas_name="DEVDATE"),
            Item("category", "Category", Choice(CATEGORIES), required=True),
            Item("description", "Description", Text(2000), required=True, sas_name="DESCR"),
            Item("major", "Major deviation", YesNo()),
            Item("action", "Action taken", Text(1000)),
            Item("raised_by_system", "Raised by the system", YesNo(), sas_name="SYSTEM",
                 help="Set by the system when it found the deviation itself."),
        )),
    ),
)
