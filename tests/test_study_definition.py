"""Definitions are validated at start-up, versioned, and under change control (Annex 11 §10)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from ecrf import create_app
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, definition_for, save_form
from ecrf.forms import registry
from ecrf.forms.definition import CRF, Check, DefinitionError, Group, Item
from ecrf.forms.items import Integer
from ecrf.study import settings
from ecrf.study.change_control import record_if_changed
from ecrf.study.schedule import SCHEDULE, Visit
from tests.factories import audit_rows


def _crf(*items, checks=(), key="bad"):
    return CRF(key=key, title="Bad", version=1, groups=(Group("g", "G", tuple(items)),),
               checks=checks)


@pytest.mark.requirement("E6-4.3.4")
@pytest.mark.parametrize("definition, message", [
    (_crf(Item("a", "A", Integer()), Item("a", "A again", Integer())), "duplicate item keys"),
    (_crf(Item("a", "A", Integer(), show_if=lambda v: True, show_if_items=("zz",))),
     "refers to unknown item 'zz'"),
    (_crf(Item("a", "A", Integer()), checks=(Check("X-1", "hard", ("nope",), lambda v: None),)),
     "check X-1 refers to unknown item 'nope'"),
    (_crf(Item("a_rather_long_key", "A", Integer())), "SAS name of at most 8"),
    (_crf(Item("a", "A", Integer()), checks=(Check("X-1", "fatal", ("a",), lambda v: None),)),
     "severity must be hard or soft"),
])
def test_a_bad_definition_stops_with_a_message_naming_it(definition, message):
    with pytest.raises(DefinitionError, match=message) as info:
        definition.validate()
    assert "CRF 'bad' v1" in str(info.value)


def test_the_schedule_may_only_expect_declared_crfs():
    bad = SCHEDULE.extended(Visit("X", "X", 3, forms=("no_such_form",)))
    with pytest.raises(DefinitionError, match="visit X expects unknown CRF 'no_such_form'"):
        create_app("test", SCHEDULE=bad)


def test_two_crfs_may_not_share_an_oid(monkeypatch):
    reg = registry.Registry()
    reg.add(_crf(Item("a", "A", Integer()), key="one"))
    clash = CRF(key="two", title="Two", version=1, oid="F.ONE",
                groups=(Group("g", "G", (Item("a", "A", Integer()),)),))
    reg.add(clash)
    with pytest.raises(DefinitionError, match="OID F.ONE is already used"):
        reg.validate()


@pytest.mark.requirement("A11-10")
def test_forms_in_progress_keep_their_version_after_an_amendment(make, app, monkeypatch):
    subject = make.subject("01")
    before = save_form(system_actor(), subject, "toy_vitals", Slot("D1"),
                       Submitted({"height": "170"})).instance
    assert before.crf_version == 1
    amended = registry.load(None, app.extensions["ecrf.registry"].schedule, ["tests.toy_crf_v2"])
    monkeypatch.setitem(app.extensions, "ecrf.registry", amended)
    assert definition_for("toy_vitals", before).version == 1  # data keep their version
    kept = save_form(system_actor(), subject, "toy_vitals", Slot("D1"),
                     Submitted({"height": "170", "weight": "70", "fever": "N"}))
    assert kept.outcome == "saved" and kept.instance.crf_version == 1
    refused = save_form(system_actor(), subject, "toy_vitals", Slot("D1"),
                        Submitted({"height": "170", "spo2": "97"}))
    assert "Unknown item 'spo2'" in refused.errors["_form"][0]  # not in version 1
    other = make.subject("01")
    new = save_form(system_actor(), other, "toy_vitals", Slot("D1"),
                    Submitted({"spo2": "97", "fever": "N", "weight": "60"}))
    assert new.outcome == "saved" and new.instance.crf_version == 2


@pytest.mark.requirement("A11-10", "E6-4.3.4")
def test_a_changed_definition_or_setting_is_recorded_once(make, app, monkeypatch):
    assert record_if_changed() in (True, False)  # whatever the test database held
    assert record_if_changed() is False
    monkeypatch.setattr(settings, "DAILY_FOLLOW_UP_DAYS", 7)
    assert record_if_changed() is True
    assert record_if_changed() is False
    row = audit_rows(action="study.definition_changed")[-1]
    content = json.loads(row.value.new_value)
    assert content["crf_versions"]["toy_vitals"] == [1] and len(content["fingerprint"]) == 64
    assert row.username == "system" and row.value.old_value is not None


@pytest.mark.requirement("A11-10")
def test_the_first_request_of_an_app_server_records_the_running_definition(fresh_app):
    from ecrf.extensions import db

    fresh_app.test_client().get("/auth/login")
    db.session.remove()
    rows = db.session.scalars(sa.select(sa.text("action")).select_from(sa.text("audit_trail"))
                              .where(sa.text("action = 'study.definition_changed'"))).all()
    assert len(rows) == 1
