"""Protocol rules that act after a save: a serious adverse event alerts the data managers; data
behind eligibility corrected after inclusion so that the subject no longer meets the criteria
raise a protocol deviation, by the system itself."""

from __future__ import annotations

import logging
from datetime import date

from ecrf.study import eligibility

log = logging.getLogger(__name__)

#: forms whose data decide eligibility (the D0 forms behind I1-I6 and E1-E12)
ELIGIBILITY_FORMS = {"consent", "demographics", "medical_history", "hs_diagnosis", "eligibility",
                     "contraception", "sofa_daily"}
DEVIATION_TEXT = "Eligibility data corrected after inclusion: the subject no longer meets {}"


def after_save(subject, crf_key: str, instance, old_text: dict, new_text: dict) -> None:
    if crf_key == "adverse_event" and new_text.get("serious") == "Y" \
            and old_text.get("serious") != "Y":
        from ecrf.study.safety import notify_serious_event

        notify_serious_event(subject, instance)
    corrected = any(old_text.get(k) is not None for k in new_text)
    if (crf_key in ELIGIBILITY_FORMS and corrected and subject.status == "included"
            and (crf_key != "sofa_daily" or instance.visit_key == "D0")):
        raise_eligibility_deviation(subject)


def raise_eligibility_deviation(subject) -> bool:
    """Record a deviation (once per finding) when the included subject is no longer eligible."""
    from ecrf.audit.unit_of_work import current_unit_of_work
    from ecrf.auth.services import system_actor
    from ecrf.casebook.services import CheckContext, Slot, Submitted, save_form

    found = eligibility.for_subject(subject)
    if found.eligible or not found.failed:
        return False  # data still missing is a query for the monitor, not a deviation
    text = DEVIATION_TEXT.format(", ".join(f"{c.id} ({c.detail})" for c in found.failed))
    existing = CheckContext(subject, Slot("D0", form_repeat=0)).all_values("deviation")
    if any(values.get("description") == text for _, values in existing):
        return False
    # attributed to the system account; inside a loader's transaction, to the loader acting
    open_work = current_unit_of_work()
    actor = open_work.actor if open_work is not None else system_actor()
    result = save_form(actor, subject, "deviation", Slot("D0", form_repeat=None),
                       Submitted({"deviation_date": date.today().isoformat(),
                                  "category": "ELIGIBILITY", "description": text, "major": "Y",
                                  "raised_by_system": "Y"}))
    if not result.ok:
        log.error("the eligibility deviation of %s was not saved: %s", subject.code, result.errors)
    return result.ok
