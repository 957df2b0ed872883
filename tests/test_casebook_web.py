"""Data entry through the web: the page is built from the definition, bad input keeps every value,
a change asks for its reason, each item shows its history."""

from __future__ import annotations

import re

import pytest

from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, save_form
from tests.factories import audit_rows

FORM = "/subjects/{code}/visits/D1/1/forms/toy_vitals/1"


def _token(page: str) -> str:
    return re.search(r'name="submission_token" type="hidden" value="([^"]+)"', page).group(1)


def _version(page: str) -> str:
    m = re.search(r'name="row_version" type="hidden" value="([^"]*)"', page)
    return m.group(1) if m else ""


def _post(client, code, data, page=None):
    page = page or client.get(FORM.format(code=code)).get_data(as_text=True)
    return client.post(FORM.format(code=code), data={
        "submission_token": _token(page), "row_version": _version(page), **data})


def test_the_casebook_grid_shows_each_visit_and_the_form_statuses(make, login_as, client):
    subject = make.included("01")
    login_as("investigator", site="01")
    page = client.get(f"/subjects/{subject.code}/casebook").get_data(as_text=True)
    assert "Day 1" in page and "Toy vital signs" in page and "not started" in page
    save_form(system_actor(), subject, "toy_vitals", Slot("D1"), Submitted({"height": "170"}))
    page = client.get(f"/subjects/{subject.code}/casebook").get_data(as_text=True)
    assert "status-incomplete" in page


@pytest.mark.requirement("ALCOA-legible")
def test_the_form_page_is_rendered_from_the_definition_with_labels(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    for label in ("Weight (kg)", "Highest temperature (°C)", "Body mass index (kg/m2)", "Onset"):
        assert label in page
    assert 'for="weight"' in page and 'id="weight"' in page
    assert 'readonly' in page  # the derived BMI


@pytest.mark.requirement("GDPR-3")
def test_free_text_items_warn_against_identifying_the_patient(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    warnings = re.findall(r'<p class="note privacy" id="([a-z_]+)-privacy">', page)
    assert warnings == ["comment"]  # the toy CRF's one free-text item, not its numbers or choices
    assert "write no name, initials, date of birth" in page


def test_bad_input_keeps_every_typed_value_with_the_error_next_to_the_item(make, login_as, client,
                                                                            db):
    subject = make.subject("01")
    login_as("investigator", site="01")
    response = _post(client, subject.code, {"weight": "72,5", "height": "tall", "fever": "Y",
                                            "temperature": "38.9"})
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "A whole number is expected; found &#39;tall&#39;" in page
    assert 'value="72,5"' in page and 'value="tall"' in page and 'value="38.9"' in page
    assert not audit_rows(action="item.create")


@pytest.mark.requirement("P11-10e-2", "A11-9", "EMA-1", "EMA-7", "E6-4.2.4", "ALCOA-original")
def test_a_web_save_then_a_change_with_its_reason_then_the_item_history(make, login_as, client):
    subject = make.subject("01")
    user = login_as("investigator", site="01")
    first = _post(client, subject.code, {"weight": "72.5", "height": "180", "fever": "N"})
    assert first.status_code == 302
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    asked = _post(client, subject.code, {"weight": "74", "height": "180", "fever": "N"}, page)
    assert asked.status_code == 400 and "give the reason for change" in asked.get_data(as_text=True)
    done = _post(client, subject.code, {"weight": "74", "height": "180", "fever": "N",
                                        "reason_code": "new_information",
                                        "reason_text": "re-weighed on a calibrated scale"}, page)
    assert done.status_code == 302
    history = client.get(FORM.format(code=subject.code) + "/items/weight/history")
    text = history.get_data(as_text=True)
    assert history.status_code == 200 and user.username in text
    assert "72.5" in text and "74" in text and "re-weighed on a calibrated scale" in text
    rows = audit_rows(action="item.update", item="weight")
    assert rows[0].role == "investigator" and rows[0].actor_site == "01"


def test_a_double_submitted_post_saves_once(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    data = {"weight": "70", "fever": "N"}
    assert _post(client, subject.code, data, page).status_code == 302
    assert _post(client, subject.code, data, page).status_code == 302
    assert len(audit_rows(action="item.create", item="weight")) == 1


def test_two_users_editing_the_same_form_the_second_gets_a_conflict_page(make, login_as, client,
                                                                         app):
    subject = make.subject("01")
    save_form(system_actor(), subject, "toy_vitals", Slot("D1"),
              Submitted({"weight": "70", "fever": "N"}))
    login_as("investigator", site="01")
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    save_form(system_actor(), subject, "toy_vitals", Slot("D1"),
              Submitted({"weight": "71", "fever": "N"}), reason=Reason("entry_error", "first"))
    response = _post(client, subject.code, {"weight": "75", "fever": "N",
                                            "reason_code": "entry_error"}, page)
    text = response.get_data(as_text=True)
    assert response.status_code == 409 and "Someone else saved this form" in text
    assert "71" in text and 'value="75"' in text  # both values, nothing lost


def test_a_monitor_reads_the_form_but_cannot_save_it(make, login_as, client):
    subject = make.subject("01")
    login_as("monitor", site="01")
    page = client.get(FORM.format(code=subject.code))
    assert page.status_code == 200 and "Save</button>" not in page.get_data(as_text=True)
    refused = _post(client, subject.code, {"weight": "70"}, page.get_data(as_text=True))
    assert refused.status_code == 403 and audit_rows(action="access.denied")


def test_an_investigator_of_another_site_gets_404_on_the_form(make, login_as, client):
    subject = make.subject("01")
    make.site("02")
    login_as("investigator", site="02")
    assert client.get(FORM.format(code=subject.code)).status_code == 404


def test_a_form_not_expected_at_a_visit_is_not_found(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    assert client.get(f"/subjects/{subject.code}/visits/D2/1/forms/toy_vitals/1").status_code == 404


def test_a_scheduled_visit_does_not_repeat(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    assert client.get(f"/subjects/{subject.code}/visits/D1/2/forms/toy_vitals/1").status_code == 404


def test_numbers_are_typed_in_text_inputs_so_a_wrong_entry_reaches_the_server(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    height = re.search(r'<input[^>]*id="height"[^>]*>', page).group(0)
    assert 'type="text"' in height and 'inputmode="numeric"' in height


def test_each_unscheduled_visit_gets_its_own_number(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    grid = client.get(f"/subjects/{subject.code}/casebook").get_data(as_text=True)
    assert "/visits/UNS/1/forms/adverse_event/0" in grid and "new unscheduled visit (#1)" in grid
    ae = {"term": "10002272", "grade": "3", "onset": "2026-03-02", "serious": "N",
          "causality": "UNLIKELY", "action": "DOSE NOT CHANGED", "outcome": "NOT RECOVERED/NOT RESOLVED"}
    save_form(system_actor(), subject, "adverse_event", Slot("UNS", 1, None), Submitted(ae))
    grid = client.get(f"/subjects/{subject.code}/casebook").get_data(as_text=True)
    assert "/visits/UNS/2/forms/adverse_event/0" in grid
    page = client.get(f"/subjects/{subject.code}/visits/UNS/2/forms/adverse_event/0")
    assert page.status_code == 200


@pytest.mark.requirement("EMA-7")
def test_an_item_history_lists_the_value_changes_not_the_queries_on_it(make, login_as, client):
    subject = make.subject("01")
    saved = save_form(system_actor(), subject, "toy_vitals", Slot("D1"),
                      Submitted({"weight": "210", "fever": "N"}), confirmed={"TOY_VITALS-weight-RANGE"})
    assert saved.ok, saved.errors
    assert audit_rows(action="query.create", item="weight")  # a system query on the item
    login_as("investigator", site="01")
    page = client.get(FORM.format(code=subject.code) + "/items/weight/history").get_data(as_text=True)
    rows = re.findall(r"<tr>.*?</tr>", page, re.S)[1:]  # the header aside
    assert len(rows) == len(audit_rows(entity_type="item", item="weight")) == 1
