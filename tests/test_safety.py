"""Serious adverse events: the data managers see each one with its 24-hour deadline, and get an
e-mail when an SMTP server is configured (tested with a local SMTP server)."""

from __future__ import annotations

import socket
from datetime import timedelta
from email import message_from_bytes
from email.policy import default

import pytest
from aiosmtpd.controller import Controller

from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.database import utcnow
from ecrf.study.safety import notify_serious_event, serious_events

SAE = {"term": "10040047", "grade": "4", "onset": "2026-03-02", "serious": "Y",
       "criteria": ["LIFE"], "causality": "POSSIBLE", "action": "DRUG INTERRUPTED",
       "outcome": "RECOVERING/RESOLVING"}


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp(app, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setitem(app.config, "MAIL_SERVER", "127.0.0.1")
    monkeypatch.setitem(app.config, "MAIL_PORT", port)
    yield inbox
    controller.stop()


def save_sae(subject, aware_hours_ago: float, reported: bool = False):
    aware = (utcnow() - timedelta(hours=aware_hours_ago)).strftime("%Y-%m-%dT%H:%M")
    values = {**SAE, "aware_at": aware}
    if reported:
        values["reported_at"] = (utcnow() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    result = save_form(system_actor(), subject, "adverse_event", Slot("D1", form_repeat=None),
                       Submitted(values), confirmed={"AE-06"})
    assert result.ok, result.errors
    return result.instance


def test_each_serious_event_is_listed_with_its_24_hour_deadline(make):
    subject = make.subject("01")
    save_sae(subject, aware_hours_ago=2)
    save_sae(subject, aware_hours_ago=30)
    events = {e.number: e for e in serious_events()}
    assert set(events) == {1, 2}
    assert events[1].term == "Sepsis" and not events[1].overdue
    assert events[2].overdue  # aware 30 hours ago and not reported
    assert events[1].due_at - events[1].aware_at == timedelta(hours=24)


def test_a_serious_event_of_another_site_is_not_listed_for_a_site(make):
    save_sae(make.subject("02"), aware_hours_ago=1)
    assert serious_events({make.site("01").id}) == []


def test_saving_a_serious_event_e_mails_the_data_managers_without_clinical_detail(make, smtp):
    make.user("dm", role="data_manager")
    subject = make.subject("01")
    save_sae(subject, aware_hours_ago=1)  # the save itself sends the alert
    assert len(smtp.messages) == 1
    envelope = smtp.messages[0]
    body = message_from_bytes(envelope.content, policy=default).get_content()
    assert envelope.rcpt_tos == ["dm@example.org"]
    assert subject.code in body and "due by" in body and "AE #1" in body
    assert "Sepsis" not in body  # the term stays in the casebook


def test_no_smtp_server_means_no_e_mail_and_no_error(make, app):
    subject = make.subject("01")
    assert notify_serious_event(subject, save_sae(subject, aware_hours_ago=1)) is False
