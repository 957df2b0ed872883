"""A JAKAHDI subject from enrolment to a serious adverse event, in a real browser.

An investigator of site 01 enrols a subject from the subject list, fills the D0 forms of the
casebook page by page (consent, demographics, medical history, HS diagnosis with HScore case A typed
with decimal commas, eligibility, and the daily SOFA of the worked case, total 14), reads
"Eligible" on the subject page and includes the subject; then fills the D1 SOFA (the plot shows two
points), adds a ruxolitinib administration and a serious adverse event whose 24-hour reporting
deadline is computed. A second subject aged 18 cannot be included: the refusal names I1. The audit
trail holds the investigator's item entries, the derived values with their system reason, and the
status change.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from ecrf.audit.models import AuditRecord
from ecrf.extensions import db
from ecrf.forms.crfs.eligibility import EXCLUSIONS
from tests.browser.conftest import TIMEOUT_MS
from tests.browser.helpers import log_in as _log_in
from tests.factories import Factories

try:
    from playwright.sync_api import expect
except ImportError as e:  # pragma: no cover - depends on the machine
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip(f"Playwright for Python is not installed: {e}", allow_module_level=True)

pytestmark = pytest.mark.browser

D0_ROW = re.compile(r"^Screening \/ inclusion \(D0\)")  # "/" escaped for Playwright's JS regex
D1_ROW = re.compile(r"^Day 1(\s|$)")  # not Day 10..14
LOCAL = "%Y-%m-%dT%H:%M"  # a datetime-local input's value


@pytest.fixture(autouse=True)
def _expect_waits_as_long_as_actions():
    """``expect`` waits as long as the context's actions do (a save recomputes scores)."""
    expect.set_options(timeout=TIMEOUT_MS)
    yield
    expect.set_options(timeout=None)  # back to Playwright's default


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _investigator(live_server) -> tuple[str, str, str]:
    """A new investigator of site 01: username, the site's label in the enrol list, time zone."""
    username = _unique("ivan")
    with live_server.context():
        make = Factories()
        make.user(username, role="investigator", site="01", full_name=f"Ivan Walk {username[-6:]}")
        site = make.site("01")
        return username, f"{site.code} {site.name}", site.timezone


def _group(scope, legend: str):
    """The fieldset of a yes/no or multiple-choice item, by its legend ("required" read aloud)."""
    return scope.get_by_role("group", name=re.compile(rf"^{re.escape(legend)}(\s+required)?$"))


def _choose(scope, legend: str, answer: str) -> None:
    _group(scope, legend).get_by_role("radio", name=answer, exact=True).check()


def _not_done(page, key: str, label: str) -> None:
    """Open the item's "No value?" and give the null flavor "Not done"."""
    page.locator(f"#item-{key}").get_by_text("No value?", exact=True).click()
    page.get_by_label(f"{label}: missing because", exact=True).select_option(label="Not done")


def _open_from_grid(page, code: str, row: re.Pattern, column: str, *, add: bool = False) -> None:
    """From the casebook grid: the cell of a visit (row) under a form (column header)."""
    expect(page.get_by_role("heading", name=f"Casebook {code}", exact=True)).to_be_visible()
    grid = page.get_by_role("table")
    headers = grid.get_by_role("columnheader").all_inner_texts()
    index = headers.index(column)  # 0 is "Visit", the row header
    visit = grid.get_by_role("row").filter(has=page.get_by_role("rowheader", name=row))
    cell = visit.get_by_role("cell").nth(index - 1)
    if add:
        cell.get_by_role("link", name="add", exact=True).click()
    else:
        link = cell.get_by_role("link")
        expect(link).to_have_text("not started")
        link.click()


def _save(page) -> list[str]:
    """Save; when the page asks to confirm values (soft checks), tick them and save again.

    Returns the texts confirmed. Fails with the page's messages when nothing was saved."""
    save = page.get_by_role("button", name="Save", exact=True)
    saved = page.get_by_role("status").filter(has_text="Saved.")
    refused = page.locator("main .flash-error")
    save.click()
    expect(saved.or_(refused)).to_be_visible()
    confirmed = []
    to_confirm = page.get_by_role("group", name="Values to confirm")
    if to_confirm.count():
        for box in to_confirm.get_by_role("checkbox").all():
            confirmed.append(box.locator("xpath=..").inner_text().strip())
            box.check()
        save.click()
        expect(saved.or_(refused)).to_be_visible()
    if not saved.count():
        errors = page.locator(".flash-error, .error").all_inner_texts()
        pytest.fail(f"{page.url} was not saved: {errors}")
    expect(page.locator("#form-status")).to_have_text("complete")
    return confirmed


def _back_to_grid(page, code: str) -> None:
    page.get_by_role("link", name=f"Casebook {code}", exact=True).click()
    expect(page.get_by_role("heading", name=f"Casebook {code}", exact=True)).to_be_visible()


def _fill_sofa(page, values: dict[str, str], selects: dict[str, str]) -> None:
    for label, value in values.items():
        page.get_by_label(label, exact=True).fill(value)
    for label, option in selects.items():
        page.get_by_label(label, exact=True).select_option(label=option)


def _audit(**filters) -> list[AuditRecord]:
    stmt = sa.select(AuditRecord).order_by(AuditRecord.seq)
    for key, value in filters.items():
        stmt = stmt.where(getattr(AuditRecord, key) == value)
    return list(db.session.scalars(stmt))


def test_an_investigator_enrols_screens_includes_and_follows_a_subject(live_server, page):
    username, site_label, tz = _investigator(live_server)
    now = datetime.now(ZoneInfo(tz)).replace(second=0, microsecond=0)
    _log_in(page, username)

    # 1. enrol from the subject list: the subject's page, in screening
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Subjects").click()
    expect(page.get_by_role("heading", name="Subjects", exact=True)).to_be_visible()
    page.get_by_label("Site", exact=True).select_option(label=site_label)
    page.get_by_role("button", name="Enrol a new subject").click()
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_have_text(re.compile(r"^Subject 01-\d{3}$"))
    code = heading.inner_text().removeprefix("Subject ")
    expect(page.get_by_role("status")).to_have_text(f"Subject {code} is enrolled (screening).")
    expect(page.locator("#subject-status")).to_have_text("screening")
    expect(page.locator("#eligibility-summary")).to_have_text("Not eligible (yet)")

    # 2. the D0 forms, through the casebook
    page.get_by_role("link", name="Open the casebook").click()

    _open_from_grid(page, code, D0_ROW, "Informed consent")
    expect(page.get_by_role("heading", level=1)).to_have_text("Informed consent")
    page.get_by_label("Consent given by", exact=True).select_option(label="The patient")
    at_inclusion = page.get_by_role("group", name="Consent at inclusion")
    signed = at_inclusion.get_by_label("Date and time of the patient's signature", exact=True)
    signed.fill((now - timedelta(hours=2)).strftime(LOCAL))
    _choose(page, "Consent withdrawn", "No")
    _save(page)
    expect(signed).to_have_value((now - timedelta(hours=2)).strftime(LOCAL))  # local time again
    _back_to_grid(page, code)

    _open_from_grid(page, code, D0_ROW, "Demographics")
    page.get_by_label("Sex", exact=True).select_option(label="Male")
    page.get_by_label("Age at inclusion (years)", exact=True).fill("54")
    page.get_by_label("Weight (kg)", exact=True).fill("82,5")
    page.get_by_label("Height (cm)", exact=True).fill("178")
    _save(page)
    expect(page.get_by_label("Weight (kg)", exact=True)).to_have_value("82.5")
    _back_to_grid(page, code)

    _open_from_grid(page, code, D0_ROW, "Medical history and HS etiology")
    _choose(page, "Known underlying immunosuppression", "No")
    _group(page, "Etiology").get_by_role("checkbox", name="Infection: viral", exact=True).check()
    page.get_by_label("Etiology, detail", exact=True).fill("EBV")
    _choose(page, "HS treated before inclusion", "No")
    admitted = (now - timedelta(hours=30)).strftime(LOCAL)
    page.get_by_label("Date and time of ICU admission", exact=True).fill(admitted)
    _save(page)
    expect(page.get_by_label("Date and time of ICU admission", exact=True)).to_have_value(admitted)
    _back_to_grid(page, code)

    # HScore case A (domain notes): decimal commas as typed at a French site; total white cells,
    # sCD25 and NK activity not done
    _open_from_grid(page, code, D0_ROW, "HS diagnosis (HLH-2004 and HScore)")
    for label, value in {
        "Highest temperature (°C)": "38,8", "Hemoglobin, lowest (g/dL)": "8,6",
        "Neutrophils, lowest (10^9/L)": "1,21", "Platelets, lowest (10^9/L)": "34",
        "Ferritin, highest (µg/L)": "2597", "Triglycerides, highest (fasting) (mmol/L)": "1,80",
        "Fibrinogen, lowest (g/L)": "1,54", "AST (SGOT), highest (U/L)": "717",
        "Date of the aspirate": (now - timedelta(days=1)).strftime("%Y-%m-%d"),
        "Result (cytology report)": "Rich marrow, macrophages with hemophagocytosis.",
    }.items():
        page.get_by_label(label, exact=True).fill(value)
    for legend, answer in {"Hepatomegaly": "No", "Splenomegaly": "Yes",
                           "Known underlying immunosuppression": "No",
                           "Bone-marrow aspirate done": "Yes", "Hemophagocytosis seen": "Yes"}.items():
        _choose(page, legend, answer)
    _not_done(page, "leukocytes", "Leukocytes (white cells), lowest")
    _not_done(page, "scd25", "Soluble CD25 (soluble IL-2 receptor)")
    _not_done(page, "nk_low", "NK-cell activity low or absent")
    _save(page)
    expect(page.get_by_label("Highest temperature (°C)", exact=True)).to_have_value("38.8")
    expect(page.get_by_label("HScore total (0-337)", exact=True)).to_have_value("243")
    expect(page.get_by_label("Probability of hemophagocytic syndrome", exact=True)).to_have_value(
        "99 %")
    expect(page.get_by_label("HLH-2004 criteria met (of 8)", exact=True)).to_have_value("5")
    expect(page.get_by_label("HLH-2004 criteria assessed (of 8)", exact=True)).to_have_value("6")
    _back_to_grid(page, code)

    _open_from_grid(page, code, D0_ROW, "Eligibility")
    for _key, label in EXCLUSIONS:
        _choose(page, label, "No")
    _choose(page, "Currently participating in another interventional trial", "No")
    _save(page)
    _back_to_grid(page, code)

    # the daily SOFA at D0, the worked case: 3 + 3 + 2 + 4 + 0 + 2 = 14
    _open_from_grid(page, code, D0_ROW, "Daily SOFA")
    _fill_sofa(page, {
        "PaO2": "72", "FiO2": "40", "Platelets, lowest (10^9/L)": "35", "Bilirubin, highest": "43",
        "Mean arterial pressure, lowest (mmHg)": "68",
        "Norepinephrine, highest dose held for at least 1 hour (µg/kg/min)": "0,15",
        "Glasgow coma scale, lowest (presumed without sedation)": "15", "Creatinine, highest": "186",
    }, {"PaO2 unit": "mmHg", "FiO2 unit": "%",
        "Respiratory support at that time": "Invasive mechanical ventilation",
        "Bilirubin unit": "µmol/L", "Creatinine unit": "µmol/L"})
    _save(page)
    expect(page.get_by_label("PaO2/FiO2 (mmHg)", exact=True)).to_have_value("180")
    total = page.get_by_label("SOFA total", exact=True)
    expect(total).to_have_value("14")
    expect(total).not_to_be_editable()
    for label, points in {"Respiration": "3", "Coagulation": "3", "Liver": "2",
                          "Cardiovascular": "4", "Central nervous system": "0", "Renal": "2"}.items():
        expect(page.get_by_role("textbox", name=label, exact=True)).to_have_value(points)

    # 3. the subject page: eligible; the investigator includes the subject
    page.get_by_role("link", name=f"Casebook {code}", exact=True).click()
    page.get_by_role("link", name=f"Subject {code}", exact=True).click()
    expect(page.locator("#eligibility-summary")).to_have_text("Eligible")
    criteria = page.get_by_role("table").filter(has_text="From the data")
    expect(criteria.locator("td.crit-met")).to_have_count(7)
    expect(criteria.get_by_role("row").filter(has_text="I4 ")).to_contain_text("SOFA at D0 14")
    page.get_by_label("New status", exact=True).select_option(label="included")
    page.get_by_role("button", name="Change status").click()
    expect(page.get_by_role("status")).to_have_text(f"{code} is now included.")
    expect(page.locator("#subject-status")).to_have_text("included")
    included_on = page.locator("dl.facts dt:text-is('Included (D0)') + dd")
    expect(included_on).to_have_text(re.compile(r"^\d{4}-\d{2}-\d{2}$"))
    d0 = included_on.inner_text().strip()

    # 4. the D1 SOFA, other values and units: 3 + 2 + 2 + 0 + 1 + 1 = 9; the plot has two points
    page.get_by_role("link", name="Open the casebook").click()
    expect(page.get_by_text(f"D0 {d0}")).to_be_visible()
    _open_from_grid(page, code, D1_ROW, "Daily SOFA")
    _fill_sofa(page, {
        "PaO2": "10,5", "FiO2": "0,5", "Platelets, lowest (10^9/L)": "60", "Bilirubin, highest": "2,5",
        "Mean arterial pressure, lowest (mmHg)": "72",
        "Glasgow coma scale, lowest (presumed without sedation)": "14", "Creatinine, highest": "1,5",
    }, {"PaO2 unit": "kPa", "FiO2 unit": "fraction (0.21-1.0)",
        "Respiratory support at that time": "Non-invasive ventilation",
        "Bilirubin unit": "mg/dL", "Creatinine unit": "mg/dL"})
    _save(page)
    expect(page.get_by_label("PaO2/FiO2 (mmHg)", exact=True)).to_have_value("158")
    expect(page.get_by_label("SOFA total", exact=True)).to_have_value("9")
    page.get_by_role("link", name=f"Casebook {code}", exact=True).click()
    page.get_by_role("link", name=f"Subject {code}", exact=True).click()
    plot = page.locator("svg.sofa-plot")
    expect(plot).to_be_visible()
    expect(plot.locator("circle")).to_have_count(2)
    expect(plot.locator("circle.d0 title")).to_have_text("D0: 14")
    expect(plot.locator("circle.day title")).to_have_text("D1: 9")
    expect(page.get_by_role("img", name=re.compile("SOFA total by study day"))).to_be_visible()

    # 5. one ruxolitinib administration, added at D1, dated the day of inclusion
    page.get_by_role("link", name="Open the casebook").click()
    _open_from_grid(page, code, D1_ROW, "Ruxolitinib administration (repeating)", add=True)
    expect(page.get_by_role("heading", level=1)).to_have_text("Ruxolitinib administration")
    page.get_by_label("Date", exact=True).fill(d0)
    page.get_by_label("Slot", exact=True).select_option(label="Morning")
    _choose(page, "Given", "Yes")
    page.get_by_label("Time given", exact=True).fill("09:00")
    page.get_by_label("Dose given (mg)", exact=True).fill("10")
    page.get_by_label("Tablet strength", exact=True).select_option(label="10 mg")
    page.get_by_label("Number of tablets", exact=True).fill("1")
    page.get_by_label("Route", exact=True).select_option(label="Nasogastric or other enteral tube")
    page.get_by_label("Status against the plan", exact=True).select_option(label="As planned")
    _save(page)
    expect(page).to_have_url(re.compile(rf"/subjects/{code}/visits/D1/1/forms/dosing/1$"))
    expect(page.get_by_label("Date", exact=True)).to_have_value(d0)
    _back_to_grid(page, code)
    expect(page.get_by_role("link", name="#1 complete")).to_have_count(1)

    # 6. one serious adverse event: its 24-hour reporting deadline is computed
    _open_from_grid(page, code, D1_ROW, "Adverse event (repeating)", add=True)
    expect(page.get_by_role("heading", level=1)).to_have_text("Adverse event")
    aware = now - timedelta(hours=1)
    page.get_by_label("CTCAE v5.0 term", exact=True).select_option(label="Sepsis")
    page.get_by_label("CTCAE grade (worst)", exact=True).select_option(label="4 Life-threatening")
    page.get_by_label("Onset date", exact=True).fill(aware.strftime("%Y-%m-%d"))
    _choose(page, "Serious", "Yes")
    _group(page, "Seriousness criteria").get_by_role(
        "checkbox", name="Life-threatening", exact=True).check()
    page.get_by_label("Site became aware of the serious event", exact=True).fill(
        aware.strftime(LOCAL))
    page.get_by_label("Relationship to ruxolitinib (WHO-UMC)", exact=True).select_option(
        label="Possible")
    page.get_by_label("Action taken with ruxolitinib", exact=True).select_option(
        label="Drug interrupted")
    page.get_by_label("Outcome", exact=True).select_option(label="Recovering / resolving")
    _save(page)
    expect(page).to_have_url(re.compile(rf"/subjects/{code}/visits/D1/1/forms/adverse_event/1$"))
    expect(page.get_by_label("CTCAE v5.0 term", exact=True)).to_have_value("10040047")  # MedDRA
    report_due = page.get_by_label("Report to the sponsor due by", exact=True)
    expect(report_due).to_have_value(re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2} [+-]\d{2}:\d{2}$"))
    expect(report_due).not_to_be_editable()
    # shown in the site's local time with its offset, like every time on the page
    shown = datetime.strptime(report_due.input_value(), "%Y-%m-%d %H:%M %z")
    assert shown == aware.astimezone(UTC) + timedelta(hours=24)  # elapsed hours, across DST too
    expect(page.get_by_label("Related to ruxolitinib", exact=True)).to_have_value("Related")

    # the audit trail: the investigator's entries, the derived values and the status change
    with live_server.context():
        totals = _audit(action="item.create", subject=code, item="sofa_total")
        assert [(r.visit, r.value.new_value, r.reason_code, r.reason_text, r.username)
                for r in totals] == [("D0", "14", "system", "derived value recalculated", username),
                                     ("D1", "9", "system", "derived value recalculated", username)]
        entered = {(r.form, r.item): r for r in _audit(action="item.create", subject=code)}
        for key, value in {("hs_diagnosis", "temperature"): "38.8", ("hs_diagnosis", "hscore"): "243",
                           ("demographics", "age"): "54", ("sofa_daily", "norepinephrine"): "0.15",
                           ("dosing", "dose_mg"): "10", ("adverse_event", "term"): "10040047",
                           ("adverse_event", "serious"): "Y"}.items():
            row = entered[key]
            assert (row.value.new_value, row.username, row.role, row.actor_site) == (
                value, username, "investigator", "01"), key
        assert entered[("hs_diagnosis", "leukocytes")].value.new_value == "[NI]"
        status = _audit(action="subject.update", subject=code, field="status")
        assert [(r.value.old_value, r.value.new_value, r.username, r.role) for r in status] == [
            ("screening", "included", username, "investigator")]


def test_an_18_year_old_cannot_be_included_and_the_page_names_i1(live_server, page):
    username, _site_label, _tz = _investigator(live_server)
    with live_server.context():
        from ecrf.auth.services import system_actor
        from ecrf.casebook.services import Slot
        from ecrf.demo import fill_sofa, save_confirmed, screening_forms

        subject = Factories().subject("01")
        code = subject.code
        rng = random.Random(18)
        forms = screening_forms(rng, subject)
        forms["demographics"]["age"] = "18"  # I1: older than 18
        for crf_key, values in forms.items():
            save_confirmed(system_actor(), subject, crf_key, Slot("D0"), values)
        fill_sofa(system_actor(), subject, rng, days=1, severity=0.8)

    _log_in(page, username)
    page.goto(f"/subjects/{code}")
    expect(page.get_by_role("heading", name=f"Subject {code}", exact=True)).to_be_visible()
    expect(page.locator("#eligibility-summary")).to_have_text("Not eligible (yet)")
    i1 = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=re.compile("^I1 ")))
    expect(i1).to_contain_text("not met")
    expect(i1).to_contain_text("age 18 years (not older than 18)")
    page.get_by_label("New status", exact=True).select_option(label="included")
    page.get_by_role("button", name="Change status").click()
    refusal = page.get_by_role("alert")
    expect(refusal).to_contain_text("The subject is not eligible")
    expect(refusal).to_contain_text("I1 age 18 years (not older than 18)")
    expect(page.locator("#subject-status")).to_have_text("screening")
    with live_server.context():
        assert _audit(action="subject.update", subject=code, field="status") == []
