"""Login, forced password change and logout in a real browser (21 CFR 11.10(d), 11.300).

The live server runs with CSRF switched on: every form below is posted by chromium with the token
the page carries, exactly as a user would post it. Checks on the page use Playwright's ``expect``,
which waits for the page that a click navigates to.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from ecrf.audit.models import AuditRecord
from ecrf.auth.services import LOGIN_FAILED_MESSAGE, get_user
from ecrf.extensions import db
from tests.factories import PASSWORD, Factories

pytestmark = pytest.mark.browser

AUTH_ACTIONS = ("auth.login_failed", "auth.login", "auth.password_changed", "auth.logout")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _audit_of(user_id: int) -> list[AuditRecord]:
    """The auth.* audit records about one user, in chain order (call inside the live context)."""
    return list(db.session.scalars(
        sa.select(AuditRecord)
        .where(AuditRecord.entity_type == "user", AuditRecord.entity_id == str(user_id),
               AuditRecord.action.in_(AUTH_ACTIONS))
        .order_by(AuditRecord.seq)
    ))


def _log_in(page, username: str, password: str) -> None:
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def _change_password(page, current: str, new: str) -> None:
    page.get_by_label("Current password", exact=True).fill(current)
    page.get_by_label("New password", exact=True).fill(new)
    page.get_by_label("Repeat the new password", exact=True).fill(new)
    page.get_by_role("button", name="Change password").click()


@pytest.mark.requirement("P11-10d")
def test_wrong_password_then_forced_change_then_logout(live_server, page):
    username = _unique("nora")
    full_name = f"Nora Browser {username[-6:]}"
    with live_server.context():
        user = Factories().user(username, password=None, full_name=full_name)
        user_id, temp = user.id, user.temp_password
        assert user.must_change_password and temp
    log_out = page.get_by_role("button", name="Log out")

    # (a) a wrong password is refused with the generic message; nobody is logged in
    page.goto("/auth/login")
    expect(page).to_have_title("Log in · ecrf")
    _log_in(page, username, "not-the-password-1")
    expect(page.get_by_role("alert")).to_have_text(LOGIN_FAILED_MESSAGE)
    expect(page).to_have_url(live_server("/auth/login"))
    expect(log_out).to_have_count(0)
    page.goto("/")
    expect(page).to_have_url(live_server("/auth/login?next=%2F"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()

    # (b) the temporary password logs in, but only as far as the change-password page
    page.goto("/auth/login")
    _log_in(page, username, temp)
    expect(page).to_have_url(live_server("/auth/password"))
    expect(page.get_by_text("You must choose a new password before going on.")).to_be_visible()
    page.goto("/")  # any other page sends the user back until the password is changed
    expect(page).to_have_url(live_server("/auth/password"))

    # a new password that contains the username breaks the policy and is not saved
    _change_password(page, temp, f"x{username}-Longer-1")
    expect(page.get_by_role("alert")).to_contain_text("must not be or contain the username")
    expect(page).to_have_url(live_server("/auth/password"))

    new_password = "Brisk-Lantern-Orchard-42"
    _change_password(page, temp, new_password)
    expect(page).to_have_url(live_server("/"))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Welcome, {full_name}")
    expect(page.get_by_role("status")).to_have_text("Your password is changed.")
    with live_server.context():
        assert get_user(username).must_change_password is False

    # (c) "Log out" ends the session and shows the login page
    log_out.click()
    expect(page).to_have_url(live_server("/auth/login"))
    expect(page.get_by_role("status")).to_have_text("You are logged out.")
    expect(log_out).to_have_count(0)

    # (d) after logout the home page is out of reach again
    page.goto("/")
    expect(page).to_have_url(live_server("/auth/login?next=%2F"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect(page.get_by_text("Welcome,")).to_have_count(0)

    with live_server.context():
        rows = _audit_of(user_id)
        assert [r.action for r in rows] == list(AUTH_ACTIONS)
        failed, login, changed, logout = rows
        assert failed.username == "system"
        assert failed.value.new_value == f"{username}: wrong password"
        assert {login.username, changed.username, logout.username} == {username}
        assert all(r.client == "127.0.0.1" for r in rows)


def test_a_login_posted_without_its_csrf_token_is_refused(live_server, context, page):
    """The live server really checks CSRF tokens: the right password without one gets nowhere,
    and the same credentials posted by the page's own form (with its token) do log in."""
    username = _unique("otto")
    with live_server.context():
        user_id = Factories().user(username).id
    response = context.request.post(live_server("/auth/login"),
                                    form={"username": username, "password": PASSWORD},
                                    max_redirects=0)
    assert response.status == 400
    assert "The request could not be read." in response.text()
    home = context.request.get(live_server("/"), max_redirects=0)
    assert home.status == 302 and urlsplit(home.headers["location"]).path == "/auth/login"
    with live_server.context():
        assert _audit_of(user_id) == []

    page.goto("/auth/login")
    _log_in(page, username, PASSWORD)
    expect(page).to_have_url(live_server("/"))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Welcome, {username.title()}")
    with live_server.context():
        assert [r.action for r in _audit_of(user_id)] == ["auth.login"]


def test_pages_load_only_from_the_server_without_console_errors(live_server, page):
    """No request leaves 127.0.0.1 and no console error (a CSP violation is one) on the login and
    home pages; then a deliberate CSP violation proves the listeners catch one."""
    username = _unique("pia")
    with live_server.context():
        Factories().user(username)
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.add_init_script(
        "window.__cspViolations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )

    response = page.goto("/auth/login")
    assert response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    # the stylesheet is loaded and applied (a policy that blocked it would show here)
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 248, 250)"
    _log_in(page, username, PASSWORD)
    expect(page).to_have_url(live_server("/"))
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    page.reload(wait_until="networkidle")

    origins = {(urlsplit(u).scheme, urlsplit(u).hostname, urlsplit(u).port) for u in requests}
    assert origins == {("http", "127.0.0.1", live_server.port)}, requests
    assert live_server("/static/css/ecrf.css") in requests
    assert errors == []
    assert page.evaluate("window.__cspViolations") == []

    # the listeners do see a violation: an inline script is refused by the policy
    page.evaluate("""() => { const s = document.createElement('script');
                             s.textContent = 'window.__ran = true'; document.body.append(s); }""")
    page.wait_for_function("window.__cspViolations.length > 0")
    assert page.evaluate("window.__ran === undefined")
    for _ in range(50):  # the console event comes asynchronously
        if any("Content Security Policy" in e for e in errors):
            break
        page.wait_for_timeout(100)
    assert any("Content Security Policy" in e for e in errors), errors
