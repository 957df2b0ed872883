"""Serious adverse events: the 24-hour reporting clock, the data managers' alert list, and an
e-mail to the data managers when an SMTP server is configured (EU CTR art. 41)."""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import joinedload, selectinload

from ecrf.casebook.models import FormInstance, ItemValue
from ecrf.database import utcnow
from ecrf.extensions import db
from ecrf.study.models import Subject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriousEvent:
    subject: str
    site: str
    number: int
    term: str
    aware_at: datetime | None
    due_at: datetime | None
    reported_at: datetime | None
    visit_key: str
    visit_repeat: int

    @property
    def overdue(self) -> bool:
        """Not reported within 24 hours of awareness (reported late, or still not reported)."""
        if self.due_at is None:
            return False
        return (self.reported_at or utcnow()) > self.due_at


def serious_events(site_ids: set[int] | None = None) -> list[SeriousEvent]:
    """Every adverse event recorded as serious, with its reporting clock (newest first)."""
    from ecrf.forms.items import ctcae_terms

    serious = (sa.select(ItemValue.form_instance_id)
               .where(ItemValue.item_key == "serious", ItemValue.value_text == "Y"))
    stmt = (sa.select(FormInstance).join(Subject)
            .where(FormInstance.crf_key == "adverse_event", FormInstance.id.in_(serious))
            .options(selectinload(FormInstance.values),  # not one query per event
                     joinedload(FormInstance.subject).joinedload(Subject.site))
            .order_by(FormInstance.id.desc()))
    if site_ids is not None:
        stmt = stmt.where(Subject.site_id.in_(site_ids))
    events = []
    for instance in db.session.scalars(stmt):
        values = {v.item_key: v for v in instance.values}

        def dt(key, values=values):
            return values[key].value_dt if key in values else None

        term_code = values["term"].value_text if "term" in values else None
        events.append(SeriousEvent(
            instance.subject.code, instance.subject.site.code, instance.form_repeat,
            ctcae_terms().get(term_code, {}).get("term", term_code or "?"),
            dt("aware_at"), dt("report_due"), dt("reported_at"), instance.visit_key,
            instance.visit_repeat))
    return events


def notify_serious_event(subject, instance) -> bool:
    """E-mail the active data managers about a serious event, when SMTP is configured."""
    from ecrf.access.models import Grant
    from ecrf.auth.models import User

    server = current_app.config.get("MAIL_SERVER")
    if not server:
        return False
    event = next((e for e in serious_events({subject.site_id})
                  if e.subject == subject.code and e.number == instance.form_repeat), None)
    if event is None:
        return False
    recipients = sorted({u.email for u in db.session.scalars(
        sa.select(User).join(Grant, Grant.user_id == User.id).where(
            Grant.role == "data_manager", Grant.revoked_at.is_(None), User.is_active.is_(True)))
        if u.email})
    if not recipients:
        return False
    message = EmailMessage()
    message["Subject"] = f"[ecrf] Serious adverse event {subject.code} AE #{event.number}"
    message["From"] = current_app.config.get("MAIL_SENDER", "ecrf@localhost")
    message["To"] = ", ".join(recipients)
    due = f"{event.due_at:%Y-%m-%d %H:%M} UTC" if event.due_at else "unknown (awareness time " \
        "not entered)"
    message.set_content(
        f"A serious adverse event was recorded for subject {subject.code} (site {event.site}): "
        f"AE #{event.number}.\nReport to the sponsor due by: {due}.\n"
        "No clinical detail is sent by e-mail: open the casebook to see it.\n")
    try:
        with smtplib.SMTP(server, int(current_app.config.get("MAIL_PORT", 25)), timeout=10) as smtp:
            smtp.send_message(message)
    except OSError as e:  # the alert list on the home page stays the record
        log.warning("serious adverse event e-mail not sent: %s", e)
        return False
    return True
