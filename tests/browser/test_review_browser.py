"""Review of a casebook in a real browser: query, SDV, signature, freeze and lock (21 CFR 11.10(e),
11.50, 11.70, 11.100 and 11.200; E6(R3) 3.11.4 and 4.9; EU Annex 11 §9 and §14).

On the toy CRF at visit D1 of a subject of a site of its own: a monitor raises a query on the
weight of a saved form; the investigator follows "correct the value" from the query, changes the
weight with a reason, and the query is answered, the item's audit row naming the query. The
monitor closes the query and verifies the form. The investigator, principal investigator of the
site in the delegation log, signs visit D1 with username and password again. A later change of the
weight breaks the signature and clears the item's SDV mark. The data manager freezes, then locks
the site: a change the investigator had typed before the lock is refused (409), nothing is saved.
Each person has a browser context of their own (own cookies), as at the site and the sponsor.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from ecrf.access.grants import Access
from ecrf.audit.models import AuditRecord
from ecrf.auth.models import User
from ecrf.casebook import services as casebook
from ecrf.extensions import db
from ecrf.review import delegation, signatures
from ecrf.review.models import Query
from ecrf.study.models import Site, Subject
from tests.browser.conftest import TIMEOUT_MS
from tests.browser.helpers import log_in as _log_in
from tests.factories import PASSWORD, Factories

try:
    from playwright.sync_api import expect
except ImportError as e:  # pragma: no cover - depends on the machine
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip(f"Playwright for Python is not installed: {e}", allow_module_level=True)

pytestmark = pytest.mark.browser

FORM = "toy_vitals"
D1 = casebook.Slot("D1")


@pytest.fixture(autouse=True)
def _expect_waits_as_long_as_actions():
    expect.set_options(timeout=TIMEOUT_MS)
    yield
    expect.set_options(timeout=None)


@pytest.fixture
def new_page(browser, live_server):
    """Another person's browser: a fresh context (own cookies) per call, closed after the test."""
    contexts = []

    def make():
        ctx = browser.new_context(base_url=live_server.url)
        ctx.set_default_timeout(TIMEOUT_MS)
        ctx.set_default_navigation_timeout(TIMEOUT_MS)
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _free_site_code() -> str:
    """A site of this test alone: it is locked at the end, other tests use site 01."""
    taken = set(db.session.scalars(sa.select(Site.code)))
    return next(code for code in (f"{n:02d}" for n in range(99, 1, -1)) if code not in taken)


def _flash(page, text: str):
    return page.get_by_role("status").filter(has_text=text)


def _weight(page):
    return page.get_by_label("Weight (kg)", exact=True)


def _give_reason(page, reason: str, explanation: str) -> None:
    group = page.get_by_role("group", name=re.compile("^Reason for change"))
    group.get_by_label("Reason", exact=True).select_option(label=reason)
    group.get_by_label("Explanation", exact=True).fill(explanation)


def _save(page) -> None:
    page.get_by_role("button", name="Save", exact=True).click()


def _saved_weight(code: str) -> Decimal | None:
    subject = db.session.scalar(sa.select(Subject).where(Subject.code == code))
    instance = casebook.get_instance(subject, FORM, D1)
    return casebook.instance_values(instance, casebook.definition_for(FORM, instance)).get("weight")


@pytest.mark.requirement("P11-70", "P11-200a1", "EMA-12")
def test_a_query_is_answered_closed_verified_signed_broken_and_the_site_locked(
        live_server, page, new_page):
    ines, monica, dora = _unique("ines"), _unique("monica"), _unique("dora")
    with live_server.context():
        make = Factories()
        site = make.site(_free_site_code())
        site_code = site.code
        investigator = make.user(ines, role="investigator", site=site,
                                 full_name=f"Ines Review {ines[-6:]}")
        make.user(monica, role="monitor", site=site, full_name=f"Monica Monitor {monica[-6:]}")
        data_manager = make.user(dora, role="data_manager", full_name=f"Dora Data {dora[-6:]}")
        code = make.subject(site).code
        db.session.commit()
        site_id, investigator_id, data_manager_id = site.id, investigator.id, data_manager.id
    form_path = f"/subjects/{code}/visits/D1/1/forms/{FORM}/1"

    # the investigator enters the toy form of D1
    _log_in(page, ines)
    page.goto(form_path)
    expect(page.get_by_role("heading", level=1)).to_have_text("Toy vital signs")
    _weight(page).fill("80")
    page.get_by_label("Height (cm)", exact=True).fill("180")
    page.get_by_role("radio", name="No", exact=True).check()
    _save(page)
    expect(_flash(page, "Saved.")).to_be_visible()
    expect(page.locator("#form-status")).to_have_text("complete")

    # 1. the monitor raises a query on the weight of the saved form
    monitor = new_page()
    _log_in(monitor, monica)
    monitor.goto(form_path)
    monitor.get_by_role("link", name="Raise a query on Weight").click()
    raise_form = monitor.get_by_role("heading", name="Raise a query").locator("xpath=..")
    expect(raise_form.get_by_label("Item (or the whole form)")).to_have_value("weight")
    raise_form.get_by_label("Question", exact=True).fill("The source says 82 kg: please check.")
    raise_form.get_by_role("button", name="Raise the query").click()
    raised = _flash(monitor, re.compile(r"Query #\d+ is raised\."))
    expect(raised).to_be_visible()
    query_id = int(re.search(r"#(\d+)", raised.inner_text()).group(1))
    expect(monitor.get_by_role("link", name="1 open query on Weight")).to_be_visible()

    # 2. the investigator opens the query and corrects the value in answer to it
    page.goto(form_path)
    page.get_by_role("link", name="1 open query on Weight").click()
    page.get_by_role("link", name=f"Query #{query_id}", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Query #{query_id}")
    expect(page.locator("#query-state")).to_contain_text("open")
    expect(page.locator(".conversation")).to_contain_text("The source says 82 kg")
    page.get_by_role("link", name="Correct the value in the form").click()
    expect(page).to_have_url(re.compile(rf"{re.escape(form_path)}\?query={query_id}"))
    expect(page.locator("#answering")).to_contain_text(f"query #{query_id}")
    reason = page.get_by_role("group", name=re.compile("^Reason for change"))
    expect(reason.get_by_label("Reason", exact=True)).to_have_value("query_response")
    _weight(page).fill("82")
    reason.get_by_label("Explanation", exact=True).fill("misread the scale; 82 kg in the source")
    _save(page)
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Query #{query_id}")
    expect(page.locator("#query-state")).to_have_text("answered")
    with live_server.context():
        assert db.session.get(Query, query_id).state == "answered"
        rows = db.session.scalars(sa.select(AuditRecord).where(
            AuditRecord.subject == code, AuditRecord.reason_code == "query_response")).all()
        weight_rows = [r for r in rows if r.entity_type == "item" and r.item == "weight"]
        assert [(r.action, r.username, r.reason_code) for r in weight_rows] == [
            ("item.update", ines, "query_response")]
        assert f"Query #{query_id}" in weight_rows[0].reason_text
        assert _saved_weight(code) == Decimal("82")

    # 3. the monitor closes the query and verifies the form
    monitor.goto(f"/queries/{query_id}")
    expect(monitor.locator("#query-state")).to_have_text("answered")
    close = monitor.locator("#step-close")
    close.get_by_label("Comment (optional)").fill("82 kg matches the source.")
    close.get_by_role("button", name="Close").click()
    expect(_flash(monitor, f"Query #{query_id} is closed.")).to_be_visible()
    expect(monitor.locator("#query-state")).to_have_text("closed")
    monitor.goto(form_path)
    monitor.get_by_role("button", name="Verify all items of this form").click()
    expect(_flash(monitor, re.compile(r"\d+ items? verified\."))).to_be_visible()
    expect(monitor.locator("#sdv-weight")).to_contain_text(f"Verified by Monica Monitor {monica[-6:]}")

    # 4. the investigator, PI of the site in the delegation log, signs visit D1
    with live_server.context():
        dm = db.session.get(User, data_manager_id)
        inv = db.session.get(User, investigator_id)
        site = db.session.get(Site, site_id)
        delegation.add_entry(Access.for_user(dm, "delegation.manage").actor(), site, inv, "pi",
                             delegation.site_today(site) - timedelta(days=1))
        subject = db.session.scalar(sa.select(Subject).where(Subject.code == code))
        entering = Access.for_user(inv, "crf.enter").actor(subject.site_id)
        before = signatures.readiness(subject, signatures.SignScope.visit("D1")).problems
        for crf_key in casebook.registry().schedule.visit("D1").forms:
            if crf_key != FORM:
                casebook.mark_not_done(entering, subject, crf_key, D1, "not assessed in this test")
        db.session.commit()
        ready = signatures.readiness(subject, signatures.SignScope.visit("D1"))
        assert ready.ready, (before, ready.problems)
    page.goto(f"/subjects/{code}/visits/D1/1/sign")
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Sign visit D1 of {code}")
    expect(page.locator("#readiness")).to_have_text("Complete, and no query is open on these forms.")
    page.get_by_label("Username", exact=True).fill(ines)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign", exact=True).click()
    expect(_flash(page, "Signed:")).to_contain_text(code)
    expect(page.get_by_role("heading", name=f"Casebook {code}")).to_be_visible()

    # 5. a change after signing breaks the signature and clears the item's SDV mark
    page.goto(form_path)
    expect(page.locator(".signature-banner")).not_to_contain_text("Signature broken")
    expect(page.locator("#sdv-weight")).to_contain_text("Verified by")
    _weight(page).fill("83")
    _give_reason(page, "New or updated source information", "re-weighed after signing")
    _save(page)
    expect(_flash(page, "Saved.")).to_be_visible()
    expect(page.locator(".signature-banner")).to_contain_text(
        "Signature broken: data changed after signing")
    expect(page.locator("#sdv-weight")).to_contain_text("Not verified")
    expect(page.locator("#sdv-weight")).not_to_contain_text("Verified by")

    # 6. the data manager freezes, then locks the site; an edit typed before is refused
    _weight(page).fill("84")
    _give_reason(page, "Data entry error", "typed before the lock")
    manager = new_page()
    _log_in(manager, dora)
    manager.goto("/closure")
    row = manager.locator(f"#scope-site-{site_code}")
    row.get_by_role("button", name="Freeze", exact=True).click()
    expect(_flash(manager, f"Site {site_code} is frozen.")).to_be_visible()
    row.get_by_role("button", name="Lock", exact=True).click()
    expect(_flash(manager, f"Site {site_code} is locked.")).to_be_visible()
    expect(row).to_contain_text("locked")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        _save(page)
    assert posted.value.status == 409
    expect(page.get_by_role("alert")).to_contain_text("Nothing was saved")
    expect(page.get_by_role("alert")).to_contain_text(f"Site {site_code} is locked")
    expect(_weight(page)).to_have_value("84")  # what was typed is kept on the page
    with live_server.context():
        assert _saved_weight(code) == Decimal("83")
