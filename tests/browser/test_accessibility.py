"""Accessibility of the main pages in a real browser: axe-core, the keyboard alone, a tablet width.

axe-core (bundled by ``axe-playwright-python`` and injected from the installed package: nothing is
fetched) checks each page as the user who sees it, with its default rules (WCAG 2.x A and AA plus
best practices). A violation of impact "serious" or "critical" fails the test, and so does a result
of that impact that axe could not settle ("incomplete", to review by hand): the message lists every
violation with its rule, impact and target nodes. The data-entry form is also filled and saved
with the keyboard alone, and no page scrolls sideways on a tablet held upright (768 x 1024).
"""

from __future__ import annotations

import uuid

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from tests.browser.helpers import log_in as _log_in
from tests.factories import Factories

pytestmark = pytest.mark.browser

FORM = "/subjects/{code}/visits/D1/1/forms/toy_vitals/1"
BLOCKING = ("serious", "critical")
AXE_OPTIONS = {"resultTypes": ["violations", "incomplete"]}
TABLET = {"width": 768, "height": 1024}


@pytest.fixture(scope="module")
def axe():
    return Axe()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _user_and_subject(live_server, role: str = "investigator") -> tuple[str, str]:
    """A new user holding ``role`` on site 01, and a new subject of that site."""
    username = _unique(role[:3])
    with live_server.context():
        make = Factories()
        make.user(username, role=role, site="01", full_name=f"Axe {role.title()} {username[-6:]}")
        code = make.subject("01").code
    return username, code


def _describe(findings: list[dict]) -> str:
    lines = []
    for v in findings:
        lines.append(f"- {v['id']} ({v['impact']}): {v['help']} <{v['helpUrl']}>")
        for node in v["nodes"]:
            summary = (node.get("failureSummary") or "").replace("\n", " | ")
            lines.append(f"    {' '.join(map(str, node['target']))} [{node.get('impact')}]: {summary}")
    return "\n".join(lines)


# Text inside the server-rendered SVG plot: axe cannot find the background of text in an image
# node and leaves its contrast "to review"; _svg_contrast measures it instead.


def _svg_contrast(page) -> list[str]:
    """Contrast of each text of the SVG plot against the white plot background (WCAG AA 4.5)."""
    return page.evaluate("""() => {
      const lum = (c) => { const [r, g, b] = c.match(/\\d+/g).slice(0, 3).map(Number).map(v => {
        v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
      return [...document.querySelectorAll("svg.sofa-plot text")].map(t => {
        const ratio = 1.05 / (lum(getComputedStyle(t).fill) + 0.05);
        return ratio >= 4.5 ? null : `${t.textContent}: ${ratio.toFixed(2)}`; }).filter(x => x);
    }""")


def _outside_svg(findings: list[dict]) -> list[dict]:
    kept = []
    for v in findings:
        nodes = [n for n in v["nodes"] if not (v["id"] == "color-contrast"
                                                and n.get("html", "").startswith("<text"))]
        if nodes:
            kept.append({**v, "nodes": nodes})
    return kept


def _assert_accessible(axe, page, what: str) -> None:
    response = axe.run(page, options=AXE_OPTIONS).response
    low_contrast = _svg_contrast(page)
    assert not low_contrast, f"{what}: SVG text below 4.5:1 contrast: {low_contrast}"
    violations, review = response["violations"], _outside_svg(response["incomplete"])
    blocking = [v for v in violations + review if v["impact"] in BLOCKING]
    report = (f"{what} ({page.url}):\n{len(violations)} violation(s)\n{_describe(violations)}\n"
              f"{len(review)} result(s) to review\n{_describe(review)}")
    if violations or review:
        print(report)
    if blocking:
        pytest.fail(report, pytrace=False)


def _save(page) -> None:
    page.get_by_role("button", name="Save", exact=True).click()


def test_the_main_pages_have_no_serious_axe_violation(live_server, browser, page, axe):
    username, code = _user_and_subject(live_server)

    page.goto("/auth/login")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    _assert_accessible(axe, page, "login page")
    page.get_by_role("button", name="Log in").click()  # empty: the field errors are shown
    expect(page.get_by_text("This field is required.")).to_have_count(2)
    _assert_accessible(axe, page, "login page with errors")

    _log_in(page, username)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Welcome,")
    _assert_accessible(axe, page, "home page")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Subjects").click()
    expect(page.get_by_role("heading", name="Subjects")).to_be_visible()
    _assert_accessible(axe, page, "subject list")

    page.get_by_role("link", name=code, exact=True).click()
    expect(page.get_by_role("heading", name=f"Subject {code}")).to_be_visible()
    _assert_accessible(axe, page, "subject page")

    page.get_by_role("link", name="Open the casebook").click()
    expect(page.get_by_role("heading", name=f"Casebook {code}")).to_be_visible()
    _assert_accessible(axe, page, "casebook grid")

    page.goto(FORM.format(code=code))
    expect(page.get_by_role("heading", name="Toy vital signs")).to_be_visible()
    _assert_accessible(axe, page, "empty toy form")
    # a required item says so to a screen reader too, not only with its red star
    weight = page.get_by_label("Weight (kg)", exact=True)
    expect(weight).to_have_attribute("aria-required", "true")
    expect(page.get_by_role("group", name="Fever required", exact=True)).to_have_count(1)
    expect(page.get_by_label("Height (cm)", exact=True)).not_to_have_attribute("aria-required", "true")
    weight.fill("500")
    page.get_by_role("radio", name="No", exact=True).check()
    page.get_by_label("Highest temperature (°C)", exact=True).fill("38")  # does not apply: fever no
    _save(page)
    expect(page.locator(".item.has-error")).to_have_count(2)
    _assert_accessible(axe, page, "toy form with validation errors")

    weight.fill("210")
    page.get_by_label("Highest temperature (°C)", exact=True).fill("")
    _save(page)
    expect(page.get_by_role("group", name="Values to confirm")).to_be_visible()
    _assert_accessible(axe, page, "toy form asking for a confirmation")

    page.get_by_role("group", name="Values to confirm").get_by_role("checkbox").check()
    _save(page)
    expect(page.get_by_role("status")).to_have_text("Saved.")
    _assert_accessible(axe, page, "saved toy form")

    weight.fill("80")
    _save(page)
    expect(page.get_by_role("alert").filter(has_text="give the reason for change")).to_be_visible()
    _assert_accessible(axe, page, "toy form asking for a reason")

    page.get_by_role("link", name="History of Weight").click()
    expect(page.get_by_role("heading", name="History of Weight")).to_be_visible()
    _assert_accessible(axe, page, "item history")

    # a monitor reads the same form, without the Save button
    monitor, _ = _user_and_subject(live_server, "monitor")
    other = browser.new_context(base_url=live_server.url)
    try:
        reader = other.new_page()
        _log_in(reader, monitor)
        reader.goto(FORM.format(code=code))
        expect(reader.get_by_label("Weight (kg)", exact=True)).to_have_value("210")
        expect(reader.get_by_role("button", name="Save", exact=True)).to_have_count(0)
        _assert_accessible(axe, reader, "toy form read by a monitor")
    finally:
        other.close()


def _focused(page) -> dict:
    """What has the keyboard focus: its id, tag, text and whether its outline shows.

    ``internal`` is a stop inside the browser's own widget of an input (the calendar button of a
    date-time input): ``activeElement`` is then the input, but the input itself is not ``:focus``
    and the browser draws that focus.
    """
    return page.evaluate("""() => {
        const e = document.activeElement, s = getComputedStyle(e);
        return {id: e.id, tag: e.tagName.toLowerCase(), text: (e.innerText || '').trim(),
                internal: !e.matches(':focus'),
                outline: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0};
    }""")


def test_the_form_is_filled_and_saved_with_the_keyboard_alone(live_server, page):
    """From the top of the page, Tab reaches the first item; every item is reached in order (the
    derived BMI is skipped), each focus is visible, and Enter on "Save" saves the form."""
    username, code = _user_and_subject(live_server)
    _log_in(page, username)
    page.goto(FORM.format(code=code))
    typing = {"weight": "72.5", "height": "180", "temperature": "38.5", "onset": "2024-05",
              "comment": "typed with the keyboard"}
    pressing = {"fever-0": "Space", "position": "s", "devices-0": "Space"}  # Yes, Supine, ECG

    for _ in range(20):
        page.keyboard.press("Tab")
        if _focused(page)["id"] == "weight":
            break
    else:
        pytest.fail("Tab never reaches the first item of the form")

    reached, stops = [], 0
    while True:
        focus = _focused(page)
        assert focus["outline"] or focus["internal"], f"no visible focus on {focus}"
        assert focus["id"] != "bmi", "the derived BMI should not be a tab stop"
        if focus["tag"] == "button":
            break
        if focus["id"] and focus["id"] not in reached:
            reached.append(focus["id"])
            if focus["id"] in typing:
                page.keyboard.type(typing[focus["id"]])
            elif focus["id"] in pressing:
                page.keyboard.press(pressing[focus["id"]])
        page.keyboard.press("Tab")
        stops += 1
        assert stops < 80, f"Tab never reaches the Save button; reached {reached}"
    assert focus["text"] == "Save", f"the first button after the items is {focus}"
    items = [i for i in reached if "__" not in i]
    assert items == ["weight", "height", "fever-0", "temperature", "onset", "measured_at", "position",
                     "devices-0", "devices-1", "devices-2", "comment"]

    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text("Saved.")
    expect(page.get_by_label("Weight (kg)", exact=True)).to_have_value("72.5")
    expect(page.get_by_label("Height (cm)", exact=True)).to_have_value("180")
    expect(page.get_by_role("radio", name="Yes", exact=True)).to_be_checked()
    expect(page.get_by_label("Highest temperature (°C)", exact=True)).to_have_value("38.5")
    expect(page.get_by_label("Onset of fever", exact=True)).to_have_value("2024-05")
    expect(page.get_by_label("Position", exact=True)).to_have_value("SUP")
    expect(page.get_by_role("checkbox", name="ECG", exact=True)).to_be_checked()
    expect(page.get_by_label("Comment", exact=True)).to_have_value("typed with the keyboard")
    expect(page.get_by_label("Body mass index (kg/m2)", exact=True)).to_have_value("22.4")
    expect(page.locator("#form-status")).to_have_text("complete")


def _no_horizontal_scroll(page, what: str) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], f"{what} scrolls sideways at {TABLET['width']} px: {width}"


def test_no_page_scrolls_sideways_on_a_tablet(live_server, page):
    username, code = _user_and_subject(live_server)
    page.set_viewport_size(TABLET)
    _log_in(page, username)
    for path, what in ((f"/subjects/{code}/casebook", "casebook grid"),
                       (FORM.format(code=code), "empty toy form")):
        page.goto(path)
        _no_horizontal_scroll(page, what)
    weight = page.get_by_label("Weight (kg)", exact=True)
    weight.fill("500")
    page.get_by_label("Comment", exact=True).fill("x" * 200)
    _save(page)
    expect(page.locator(".item.has-error")).to_have_count(1)
    _no_horizontal_scroll(page, "toy form with validation errors")
    weight.fill("70")
    page.get_by_role("radio", name="No", exact=True).check()
    _save(page)
    expect(page.get_by_role("status")).to_have_text("Saved.")
    _no_horizontal_scroll(page, "saved toy form")
    page.get_by_role("link", name="History of Weight").click()
    _no_horizontal_scroll(page, "item history")
