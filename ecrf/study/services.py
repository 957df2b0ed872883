"""Sites and subjects: activation, enrolment with race-free pseudonymous codes, status changes."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask_babel import gettext as _

from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.database import utcnow
from ecrf.extensions import db
from ecrf.i18n import tr
from ecrf.study import eligibility
from ecrf.study.models import Site, Subject, SubjectCounter, SubjectStatus, status_label

S = SubjectStatus
#: allowed status changes and whether they need a reason
TRANSITIONS: dict[tuple[str, str], bool] = {
    (S.SCREENING, S.INCLUDED): False,
    (S.SCREENING, S.SCREEN_FAILURE): True,
    (S.SCREENING, S.WITHDRAWN): True,
    (S.INCLUDED, S.COMPLETED): False,
    (S.INCLUDED, S.WITHDRAWN): True,
    **{(s, S.REMOVED): True for s in (S.SCREENING, S.INCLUDED, S.SCREEN_FAILURE)},
}


class StudyError(ValueError):
    """A study action that cannot be done; the message says why."""


def create_site(actor: Actor, code: str, name: str, timezone: str = "Europe/Paris") -> Site:
    code = code.strip()
    if not (code.isdigit() and len(code) == 2):
        raise StudyError(_("A site code is two digits, e.g. 01."))
    if db.session.scalar(sa.select(Site).where(Site.code == code)) is not None:
        raise StudyError(_("Site %(code)s exists.", code=code))
    if not name.strip():
        raise StudyError(_("A site needs a name."))
    with unit_of_work(actor, Reason.system("site created")):
        site = Site(code=code, name=name.strip(), timezone=timezone)
        db.session.add(site)
        db.session.flush()
        db.session.add(SubjectCounter(site_id=site.id, last_number=0))
    return site


def activate_site(actor: Actor, site: Site, when: datetime | None = None) -> None:
    """Record the date from which the site may enrol."""
    if site.activated_at is not None:
        raise StudyError(_("Site %(code)s was activated on %(date)s.", code=site.code,
                           date=f"{site.activated_at:%Y-%m-%d}"))
    with unit_of_work(actor, Reason.system("site activated")):
        site.activated_at = when or utcnow()


def enrol_subject(actor: Actor, site: Site) -> Subject:
    """Give the next code ``<site>-<NNN>`` under a row lock on the site's counter."""
    if not site.is_active_at(utcnow()):
        raise StudyError(_("Site %(code)s is not activated: it cannot enrol yet.", code=site.code))
    with unit_of_work(actor):
        counter = db.session.execute(
            sa.select(SubjectCounter).where(SubjectCounter.site_id == site.id)
            .with_for_update().execution_options(populate_existing=True)
        ).scalar_one()
        counter.last_number += 1
        number = counter.last_number
        subject = Subject(site=site, number=number, code=f"{site.code}-{number:03d}",
                          status=S.SCREENING.value)
        db.session.add(subject)
    return subject


def change_subject_status(actor: Actor, subject: Subject, new_status: str,
                          reason: Reason | None = None) -> None:
    try:
        new = SubjectStatus(new_status)
    except ValueError:
        raise StudyError(_("Unknown status %(status)s.", status=repr(new_status))) from None
    key = (SubjectStatus(subject.status), new)
    if key not in TRANSITIONS:
        raise StudyError(_("A subject cannot go from %(old)s to %(new)s.",
                           old=status_label(subject.status), new=status_label(new.value)))
    if TRANSITIONS[key] and (reason is None or not reason.text.strip()):
        raise StudyError(_("Changing the status to %(new)s needs a reason.",
                           new=status_label(new.value)))
    status_reason = reason.text if reason else None
    if new in (S.INCLUDED, S.SCREEN_FAILURE):
        found = eligibility.for_subject(subject)  # computed from the data, never ticked
        if new is S.INCLUDED and not found.eligible:
            # the user's language for the refusal (a Message's str is English)
            raise StudyError(_("The subject is not eligible: %(criteria)s.",
                               criteria=tr(found.summary())))
        if new is S.SCREEN_FAILURE and not found.eligible:
            # the stored reason stays English
            status_reason = f"{status_reason} (criteria: {str(found.summary())})"
    with unit_of_work(actor, reason or Reason.system(f"status {new.value}")):
        subject.status = new.value
        subject.status_reason = status_reason
        if new is S.INCLUDED:  # D0 of the schedule, as a date at the site
            subject.inclusion_date = utcnow().astimezone(ZoneInfo(subject.site.timezone)).date()


def log_screening(actor: Actor, site: Site, *, screened_on, age: int, sex: str,
                  subject: Subject | None = None, reason_not_included: str | None = None):
    """Record a screened patient in the site's log: enrolled (with the subject) or not (why)."""
    from ecrf.study.models import ScreeningEntry

    reason_not_included = (reason_not_included or "").strip() or None
    if sex not in ("M", "F"):
        raise StudyError(_("Sex is M or F."))
    if not 0 <= age <= 120:
        raise StudyError(_("The age must be between 0 and 120 years; found %(age)s.", age=age))
    if screened_on > utcnow().date():
        raise StudyError(_("The screening date cannot be in the future."))
    if (subject is None) == (reason_not_included is None):
        raise StudyError(_("Either the patient was enrolled (choose the subject) or say why not."))
    if subject is not None and subject.site_id != site.id:
        raise StudyError(_("The subject is not of this site."))
    with unit_of_work(actor):
        entry = ScreeningEntry(site=site, screened_on=screened_on, age=age, sex=sex,
                               subject=subject, reason_not_included=reason_not_included)
        db.session.add(entry)
    return entry
