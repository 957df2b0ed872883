"""Steps the browser tests share."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.factories import PASSWORD


def log_in(page, username: str) -> None:
    """Log in through the login page as a user would, and wait for the logged-in page."""
    page.goto("/auth/login")
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
