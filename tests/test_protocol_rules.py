"""Protocol rules after a save: eligibility corrected after inclusion raises a deviation; a
serious adverse event alerts the data managers."""

from __future__ import annotations

import pytest

from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook.services import CheckContext, Slot
from ecrf.demo import save_confirmed
from tests.factories import audit_rows


def deviations(subject):
    return [v for _, v in CheckContext(subject, Slot("X", form_repeat=0)).all_values("deviation")]


def test_an_age_corrected_to_18_after_inclusion_raises_a_deviation_by_the_system(make):
    subject = make.included("01")
    assert deviations(subject) == []
    save_confirmed(system_actor(), subject, "demographics", Slot("D0"),
                   {"sex": "M", "age": "18", "weight": "70", "height": "175"},
                   reason=Reason("entry_error", "age was misread"))
    found = deviations(subject)
    assert len(found) == 1
    assert found[0]["category"] == "ELIGIBILITY" and found[0]["raised_by_system"] == "Y"
    assert "I1 (age 18 years (not older than 18))" in found[0]["description"]
    created = audit_rows(action="form.create", form="deviation")
    assert created[-1].username == "system"
    # the same finding again does not raise a second deviation
    save_confirmed(system_actor(), subject, "demographics", Slot("D0"),
                   {"sex": "M", "age": "18", "weight": "71", "height": "175"},
                   reason=Reason("entry_error", "weight"))
    assert len(deviations(subject)) == 1


def test_a_correction_that_keeps_the_subject_eligible_raises_nothing(make):
    subject = make.included("01")
    save_confirmed(system_actor(), subject, "demographics", Slot("D0"),
                   {"sex": "M", "age": "60", "weight": "70", "height": "175"},
                   reason=Reason("entry_error", "age was misread"))
    assert deviations(subject) == []


def test_a_serious_event_triggers_the_alert_once(make, monkeypatch):
    sent = []
    monkeypatch.setattr("ecrf.study.safety.notify_serious_event",
                        lambda subject, instance: sent.append(instance.form_repeat) or True)
    subject = make.subject("01")
    values = {"term": "10040047", "grade": "4", "onset": "2026-03-02", "serious": "N",
              "causality": "POSSIBLE", "action": "DRUG INTERRUPTED",
              "outcome": "RECOVERING/RESOLVING"}
    save_confirmed(system_actor(), subject, "adverse_event", Slot("D1"), values)
    assert sent == []
    save_confirmed(system_actor(), subject, "adverse_event", Slot("D1"),
                   {**values, "serious": "Y", "criteria": ["LIFE"]},
                   reason=Reason("new_information", "became life-threatening"))
    assert sent == [1]


def test_a_death_date_ends_the_schedule(make, login_as, client):
    from datetime import timedelta

    subject = make.included("01")
    death = subject.inclusion_date + timedelta(days=2)
    save_confirmed(system_actor(), subject, "end_of_study", Slot("D90"), {
        "vital_d28": "DEAD", "vital_d90": "DEAD", "died": "Y", "death_date": str(death),
        "death_cause": "Refractory shock", "completed": "N", "termination_reason": "DEATH"})
    login_as("investigator", site="01")
    page = client.get(f"/subjects/{subject.code}/casebook").get_data(as_text=True)
    assert page.count("not expected (death)") >= 10  # D3..D14 daily SOFA and more
    assert "overdue" not in page.split("Day 3")[1].split("Day 4")[0]


@pytest.mark.requirement("ALCOA-attributable")
def test_inside_a_loaders_transaction_the_deviation_is_attributed_to_the_loader(make):
    from ecrf.audit.unit_of_work import Actor, unit_of_work
    from ecrf.demo import loader_actor

    subject = make.included("01")
    loader: Actor = loader_actor()
    with unit_of_work(loader):
        save_confirmed(loader, subject, "demographics", Slot("D0"),
                       {"sex": "M", "age": "18", "weight": "70", "height": "175"},
                       reason=Reason("entry_error", "age was misread"))
    assert len(deviations(subject)) == 1
    assert audit_rows(action="form.create", form="deviation")[-1].username == "demo-loader"
