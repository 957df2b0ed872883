"""An investigator fills the toy CRF in a real browser (21 CFR 11.10(e), EU Annex 11 §6 and §9).

The path is the one a user takes: log in, Subjects, the subject, its casebook, the D1 toy form.
On that form: a value out of the hard range is refused with the message next to the item and
nothing typed is lost; a value outside the soft range asks for a confirmation, which is audited; a
change to a saved value asks for its reason; the item's history shows both values, the reason and
who; the derived BMI follows the saved values and cannot be typed into. The live server runs with
CSRF on, so every save is posted by chromium with the token of the page.
"""

from __future__ import annotations

import re
import uuid

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from ecrf.audit.models import AuditRecord
from ecrf.extensions import db
from tests.factories import PASSWORD, Factories

pytestmark = pytest.mark.browser

SOFT_CHECK = "TOY_VITALS-weight-RANGE"
REASON_TEXT = "re-weighed on a calibrated scale"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _log_in(page, username: str) -> None:
    page.goto("/auth/login")
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def _open_toy_form_from_the_grid(page, code: str) -> None:
    """Subjects -> the subject -> its casebook -> the cell of visit D1 under "Toy vital signs"."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Subjects").click()
    page.get_by_role("link", name=code, exact=True).click()
    expect(page.get_by_role("heading", name=f"Subject {code}")).to_be_visible()
    page.get_by_role("link", name="Open the casebook").click()
    expect(page.get_by_role("heading", name=f"Casebook {code}")).to_be_visible()
    grid = page.get_by_role("table")
    headers = grid.get_by_role("columnheader").all_inner_texts()
    column = headers.index("Toy vital signs")  # 0 is "Visit", the row header
    day1 = grid.get_by_role("row").filter(
        has=page.get_by_role("rowheader", name="Day 1", exact=True))
    cell = day1.get_by_role("cell").nth(column - 1)
    link = cell.get_by_role("link")
    expect(link).to_have_text("not started")
    link.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Toy vital signs")
    expect(page.locator("#form-status")).to_have_text("not started")


def _save(page) -> None:
    page.get_by_role("button", name="Save", exact=True).click()


@pytest.mark.requirement("P11-10e-1", "A11-9")
def test_an_investigator_enters_corrects_confirms_changes_and_reads_the_history(live_server, page):
    username = _unique("ines")
    with live_server.context():
        make = Factories()
        make.user(username, role="investigator", site="01", full_name=f"Ines Entry {username[-6:]}")
        code = make.subject("01").code
    _log_in(page, username)
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    _open_toy_form_from_the_grid(page, code)
    form_url = page.url

    weight = page.get_by_label("Weight (kg)", exact=True)
    height = page.get_by_label("Height (cm)", exact=True)
    bmi = page.get_by_label("Body mass index (kg/m2)", exact=True)
    fever_yes = page.get_by_role("radio", name="Yes", exact=True)
    temperature = page.get_by_label("Highest temperature (°C)", exact=True)
    onset = page.get_by_label("Onset of fever", exact=True)
    measured_at = page.get_by_label("Measured at", exact=True)
    position = page.get_by_label("Position", exact=True)
    ecg = page.get_by_role("checkbox", name="ECG", exact=True)
    oximeter = page.get_by_role("checkbox", name="Pulse oximeter", exact=True)
    comment = page.get_by_label("Comment", exact=True)
    saved = page.get_by_role("status").filter(has_text="Saved.")

    # (a) a weight out of the hard range: nothing is saved, the message is next to the item,
    # and every value typed is still in its input
    weight.fill("500")
    height.fill("180")
    fever_yes.check()
    temperature.fill("38.9")
    onset.fill("2024-05")
    measured_at.fill("2024-05-02T08:30")
    position.select_option(label="Sitting")
    ecg.check()
    oximeter.check()
    comment.fill("calm, after breakfast")
    _save(page)
    expect(page.locator("main > .flash-error")).to_contain_text("Nothing was saved")
    error = page.locator("#item-weight").get_by_role("alert")
    expect(error).to_have_text("Weight must be between 1 and 400 kg; found 500.")
    expect(weight).to_have_attribute("aria-invalid", "true")
    expect(weight).to_have_accessible_description(re.compile("Weight must be between 1 and 400"))
    expect(page.locator(".item.has-error")).to_have_count(1)
    expect(weight).to_have_value("500")
    expect(height).to_have_value("180")
    expect(fever_yes).to_be_checked()
    expect(temperature).to_have_value("38.9")
    expect(onset).to_have_value("2024-05")
    expect(measured_at).to_have_value("2024-05-02T08:30")
    expect(position).to_have_value("SIT")
    expect(ecg).to_be_checked()
    expect(oximeter).to_be_checked()
    expect(page.get_by_role("checkbox", name="Arterial line", exact=True)).not_to_be_checked()
    expect(comment).to_have_value("calm, after breakfast")
    expect(page.locator("#form-status")).to_have_text("not started")
    expect(page.get_by_role("link", name="History of Weight")).to_have_count(0)

    # (b) corrected to a value outside the soft range: the page asks for a confirmation; once
    # ticked the form saves, and the confirmation is in the audit trail
    weight.fill("210")
    _save(page)
    expect(page.get_by_role("alert").filter(has_text="Please confirm these values")).to_be_visible()
    expect(page.locator(".item.has-error")).to_have_count(0)
    expect(weight).to_have_value("210")
    expect(comment).to_have_value("calm, after breakfast")
    confirm = page.get_by_role("group", name="Values to confirm").get_by_role("checkbox")
    expect(confirm).to_have_count(1)
    expect(confirm).to_have_accessible_name(re.compile(
        rf"Weight is usually between 35 and 200 kg; found 210\..*\({SOFT_CHECK}\)"))
    confirm.check()
    _save(page)
    expect(saved).to_be_visible()
    expect(page).to_have_url(form_url)
    expect(page.locator("#form-status")).to_have_text("complete")
    expect(weight).to_have_value("210")
    expect(bmi).to_have_value("64.8")  # 210 / 1.80²
    with live_server.context():
        confirmed = db.session.scalars(sa.select(AuditRecord).where(
            AuditRecord.action == "check.confirmed", AuditRecord.subject == code)).all()
        assert [(r.field, r.username, r.role, r.actor_site) for r in confirmed] == [
            (SOFT_CHECK, username, "investigator", "01")]
        assert "found 210" in confirmed[0].value.new_value

    # (c) a saved value changed: the page asks for the reason; with a reason from the list and an
    # explanation the change is saved
    weight.fill("80")
    _save(page)
    expect(page.get_by_role("alert").filter(has_text="give the reason for change")).to_contain_text(
        "(weight)")
    expect(weight).to_have_value("80")
    reason = page.get_by_role("group", name=re.compile("^Reason for change"))
    reason.get_by_label("Reason", exact=True).select_option(label="New or updated source information")
    reason.get_by_label("Explanation", exact=True).fill(REASON_TEXT)
    _save(page)
    expect(saved).to_be_visible()
    expect(weight).to_have_value("80")

    # (e) the derived BMI shows the value recomputed from the saved ones and cannot be typed into
    expect(bmi).to_have_value("24.7")  # 80 / 1.80²
    expect(bmi).not_to_be_editable()
    expect(bmi).to_have_attribute("readonly", "")
    expect(page.locator("#item-bmi")).to_contain_text("Computed by the system.")

    # (d) the history of the weight: both values, the reason and who
    page.get_by_role("link", name="History of Weight").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("History of Weight")
    rows = page.get_by_role("table").get_by_role("row")
    expect(rows).to_have_count(3)  # the header, the first save, the change
    created, changed = rows.nth(1).get_by_role("cell"), rows.nth(2).get_by_role("cell")
    # columns: When, Who, Role, Old value, New value, Reason
    expect(created.nth(1)).to_have_text(username)
    expect(created.nth(3)).to_have_text("")
    expect(created.nth(4)).to_have_text("210")
    expect(changed.nth(1)).to_have_text(username)
    expect(changed.nth(2)).to_have_text("investigator / 01")
    expect(changed.nth(3)).to_have_text("210")
    expect(changed.nth(4)).to_have_text("80")
    expect(changed.nth(5)).to_contain_text(REASON_TEXT)
    page.get_by_role("link", name="Toy vital signs").click()
    expect(page).to_have_url(form_url)
