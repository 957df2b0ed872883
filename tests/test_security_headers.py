"""Browser-side protections: security headers, CSRF, production configuration, no external URL.

Hospital networks are closed: every asset ships in the package, and no page may point outside.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from importlib import resources
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

import config
from ecrf import create_app
from ecrf.access.roles import ROLES
from ecrf.auth.models import UserSession
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.study.models import Subject
from tests.factories import PASSWORD, audit_rows

# --- (a) headers on every response --------------------------------------------------------------

SAFE_REFERRER_POLICIES = {"no-referrer", "same-origin", "strict-origin",
                          "strict-origin-when-cross-origin"}


def csp_directives(header: str) -> dict[str, list[str]]:
    parts = [d.split() for d in header.split(";") if d.strip()]
    return {p[0].lower(): p[1:] for p in parts}


#: (who is logged in, path, expected status)
RESPONSES = {
    "login page": (None, "/auth/login", 200),
    "home": ("auditor", "/", 200),
    "a 404": ("auditor", "/no-such-page", 404),
    "a 403": ("auditor", "/admin/users", 403),
    "a redirect to the login page": (None, "/subjects/", 302),
    "static css": (None, "/static/css/ecrf.css", 200),
    "health check": (None, "/health", 200),
}


@pytest.mark.requirement("E6-4.3.3")
@pytest.mark.parametrize("what", RESPONSES)
def test_every_response_carries_the_security_headers(what, login_as, client):
    role, path, status = RESPONSES[what]
    if role:
        login_as(role)
    response = client.get(path)
    response.close()
    assert response.status_code == status
    csp = csp_directives(response.headers["Content-Security-Policy"])
    scripts = csp.get("script-src", csp.get("default-src"))
    assert scripts and "'unsafe-inline'" not in scripts and "*" not in scripts
    assert csp["frame-ancestors"] == ["'none'"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] in SAFE_REFERRER_POLICIES


# --- (b) CSRF -------------------------------------------------------------------------------


class _Inputs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input" and attrs.get("name"):
            self.values.setdefault(attrs["name"], attrs.get("value") or "")


def csrf_token(response) -> str:
    parser = _Inputs()
    parser.feed(response.get_data(as_text=True))
    assert parser.values.get("csrf_token"), "the page has no csrf_token field"
    return parser.values["csrf_token"]


@pytest.fixture
def csrf_on(app, monkeypatch):
    """CSRF protection as in production (the test configuration switches it off)."""
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)


def _login_with_token(client, username: str) -> None:
    token = csrf_token(client.get("/auth/login"))
    response = client.post("/auth/login", data={"username": username, "password": PASSWORD,
                                                "csrf_token": token})
    assert response.status_code == 302


@pytest.mark.requirement("E6-4.3.3")
def test_a_login_post_without_the_csrf_token_is_refused_and_changes_nothing(csrf_on, make,
                                                                             client, db):
    make.user("csrf-login", role="auditor")
    form = {"username": "csrf-login", "password": PASSWORD}
    refused = client.post("/auth/login", data=form)
    assert refused.status_code == 400
    assert audit_rows(action="auth.login") == [] and audit_rows(action="auth.login_failed") == []
    assert db.session.scalar(sa.select(sa.func.count(UserSession.id))) == 0
    assert client.get("/").status_code == 302  # still not logged in

    accepted = client.post("/auth/login", data={**form, "csrf_token": csrf_token(
        client.get("/auth/login"))})
    assert accepted.status_code == 302
    assert len(audit_rows(action="auth.login")) == 1
    assert client.get("/").status_code == 200


def test_an_enrolment_without_the_csrf_token_is_refused_and_changes_nothing(csrf_on, make, client,
                                                                            db):
    site = make.site("01")
    make.user("csrf-inv", role="investigator", site=site)
    _login_with_token(client, "csrf-inv")
    refused = client.post("/subjects/enrol", data={"site": str(site.id)})
    assert refused.status_code == 400
    assert db.session.scalar(sa.select(sa.func.count(Subject.id))) == 0

    token = csrf_token(client.get("/subjects/"))
    accepted = client.post("/subjects/enrol", data={"site": str(site.id), "csrf_token": token})
    assert accepted.status_code == 302
    assert db.session.scalar(sa.select(sa.func.count(Subject.id))) == 1


def test_a_csrf_token_of_another_session_is_refused(csrf_on, app, make, client, db):
    site = make.site("01")
    make.user("csrf-victim", role="investigator", site=site)
    _login_with_token(client, "csrf-victim")
    attacker = app.test_client()
    foreign = csrf_token(attacker.get("/auth/login"))
    response = client.post("/subjects/enrol", data={"site": str(site.id), "csrf_token": foreign})
    assert response.status_code == 400
    assert db.session.scalar(sa.select(sa.func.count(Subject.id))) == 0


# --- (c) production configuration -------------------------------------------------------------


@pytest.mark.requirement("E6-4.3.3")
@pytest.mark.parametrize("missing", ["SECRET_KEY", "DATABASE_URL"])
def test_production_refuses_to_start_without_an_explicit_secret_and_database(missing, monkeypatch,
                                                                             tmp_path):
    monkeypatch.setenv("SECRET_KEY", "a-production-secret-of-some-length")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'prod.sqlite'}")
    monkeypatch.delenv(missing)
    with pytest.raises(RuntimeError, match=missing):
        create_app("production")


def test_production_refuses_to_start_when_both_are_missing(monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(RuntimeError, match="SECRET_KEY, DATABASE_URL"):
        create_app("production")


PRODUCTION_START = """
import json
from flask_migrate import upgrade
from ecrf import create_app
app = create_app("production")
with app.app_context():
    upgrade()  # as a deployment does (ecrf db upgrade) before serving
login_page = app.test_client().get("/auth/login")
print(json.dumps({
    "secret": app.config["SECRET_KEY"], "database": app.config["SQLALCHEMY_DATABASE_URI"],
    "secure": app.config["SESSION_COOKIE_SECURE"], "httponly": app.config["SESSION_COOKIE_HTTPONLY"],
    "samesite": app.config["SESSION_COOKIE_SAMESITE"], "testing": app.testing,
    "status": login_page.status_code, "set_cookie": login_page.headers.get("Set-Cookie"),
}))
"""


def test_production_starts_with_both_set_and_its_session_cookie_is_secure(tmp_path):
    """A real start: a new process whose environment is set before anything is imported, on a
    migrated database, answering a first request."""
    url = f"sqlite:///{tmp_path / 'prod.sqlite'}"
    env = {k: v for k, v in os.environ.items() if k not in ("ECRF_CONFIG", "ECRF_TEST_DATABASE_URL")}
    env.update(SECRET_KEY="a-production-secret-of-some-length", DATABASE_URL=url,
               ECRF_RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/15")
    done = subprocess.run([sys.executable, "-c", PRODUCTION_START], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    started = json.loads(done.stdout.strip().splitlines()[-1])
    assert started["secret"] == "a-production-secret-of-some-length"
    assert started["database"] == url
    assert started["secure"] is True and started["httponly"] is True
    assert started["samesite"] in ("Strict", "Lax")
    assert started["testing"] is False
    assert started["status"] == 200
    cookie = [p.strip().lower() for p in started["set_cookie"].split(";")]
    assert "secure" in cookie and "httponly" in cookie
    assert f"samesite={started['samesite'].lower()}" in cookie


def test_production_runs_with_the_secret_and_database_its_start_check_accepted(monkeypatch,
                                                                                tmp_path):
    # class attributes as a process that had neither variable at import would hold them: the
    # environment must be read when the app is created
    monkeypatch.setattr(config.ProductionConfig, "SECRET_KEY", None)
    monkeypatch.setattr(config.ProductionConfig, "SQLALCHEMY_DATABASE_URI",
                        f"sqlite:///{tmp_path / 'instance' / 'ecrf.sqlite'}")
    url = f"sqlite:///{tmp_path / 'prod.sqlite'}"
    monkeypatch.setenv("SECRET_KEY", "a-production-secret-of-some-length")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("ECRF_RATELIMIT_STORAGE_URI", "redis://127.0.0.1:6379/15")
    app = create_app("production")  # the check accepts: both are set now
    assert app.config["SECRET_KEY"] == "a-production-secret-of-some-length"
    assert app.config["SQLALCHEMY_DATABASE_URI"] == url
    assert app.config["SESSION_COOKIE_SECURE"] is True and app.config["SESSION_COOKIE_HTTPONLY"] is True
    assert app.config["SESSION_COOKIE_SAMESITE"] in ("Strict", "Lax")


# --- (d) no external URL ----------------------------------------------------------------------

URL_ATTRIBUTES = {"src", "href", "action", "formaction", "srcset", "poster", "data", "cite",
                  "background", "manifest", "ping"}
EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)  # http://, https://, //


class _Page(HTMLParser):
    """Links, URL attributes and anything the CSP would block on one page."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.stylesheets: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name, value in attrs.items():
            if name in URL_ATTRIBUTES and value is not None:
                self.urls.append((tag, name, value))
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "link" and "stylesheet" in (attrs.get("rel") or "").split():
            self.stylesheets.append(attrs.get("href") or "")
        if tag == "script" and not attrs.get("src"):
            self.inline.append("<script> without src")
        if tag == "style":
            self.inline.append("<style>")


SITES = ("01", "02")


def crawl(client, starts: list[str], limit: int = 1500) -> dict[str, _Page]:
    """GET every same-site page reachable by links from ``starts``."""
    pages: dict[str, _Page] = {}
    queue = list(starts)
    while queue and len(pages) < limit:
        url = queue.pop(0)
        if url in pages:
            continue
        response = client.get(url)
        assert response.status_code in (200, 302, 403, 404), (url, response.status_code)
        page = _Page()
        if response.mimetype == "text/html":
            page.feed(response.get_data(as_text=True))
        response.close()  # a download is streamed from an open file
        pages[url] = page
        for link in page.links:
            parts = urlsplit(link)
            if not EXTERNAL.match(link) and parts.path.startswith("/") \
                    and not parts.path.startswith("/static/"):
                queue.append(parts.path + (f"?{parts.query}" if parts.query else ""))
    return pages


@pytest.fixture
def study(make):
    """A subject on each site, each with a saved CRF (the toy CRF conftest adds to the schedule),
    so that the casebook, form and item history pages are reachable; its weight out of the soft
    range opens a (system) query, so that the query pages are too; an export of each site makes
    the export pages reachable."""
    from ecrf.exports import jobs

    for code in SITES:
        saved = save_form(system_actor(), make.subject(code), "toy_vitals", Slot("D1"),
                          Submitted({"weight": "210", "fever": "N"}),
                          confirmed={"TOY_VITALS-weight-RANGE"})
        assert saved.ok, saved.errors
        jobs.export_now(system_actor(), "audit_jsonl", jobs.Scope(site=make.site(code)))


@pytest.mark.parametrize("role", [None, *ROLES])
def test_no_page_reachable_by_a_role_points_outside_the_application(role, study, app, login_as,
                                                                     client):
    if role:
        login_as(role, site=SITES[0] if ROLES[role].site_scoped else None)
    starts = ["/", "/no-such-page"] if role else ["/auth/login", "/no-such-page"]
    pages = crawl(client, starts)

    adapter = app.url_map.bind("localhost")
    reached = {adapter.match(urlsplit(url).path)[0] for url in pages if url != "/no-such-page"}
    reachable = {rule.endpoint for rule in app.url_map.iter_rules() if "GET" in rule.methods
                 and _allows(app.view_functions[rule.endpoint].access_rule, role)}
    reachable -= {"static", "main.health"} | ({"auth.login"} if role else set())
    reachable -= {"auth.second_factor_step"}  # only after a password (test_auth_hardening.py)
    reachable = {e for e in reachable if not e.startswith("api.")}  # JSON for programs (bearer token)
    assert reachable <= reached, f"the crawl missed {reachable - reached}"

    external = [(url, found) for url, page in pages.items() for found in page.urls
                if EXTERNAL.match(found[2])]
    assert external == []
    assert [(url, page.inline) for url, page in pages.items() if page.inline] == []
    stylesheets = {href for page in pages.values() for href in page.stylesheets}
    assert stylesheets == {"/static/css/ecrf.css"}


def test_the_page_check_reports_external_urls_and_inline_code():
    page = _Page()
    page.feed('<link rel="stylesheet" href="https://cdn.example.org/x.css">'
              '<script src="//cdn.example.org/x.js"></script><img src="/static/logo.png">'
              '<a href="HTTP://example.org/">out</a><form action="http://example.org/post"></form>'
              '<a href="/subjects/">in</a><p style="color:red" onclick="go()">x</p>'
              '<script>alert(1)</script>')
    assert [v for _, _, v in page.urls if EXTERNAL.match(v)] == [
        "https://cdn.example.org/x.css", "//cdn.example.org/x.js", "HTTP://example.org/",
        "http://example.org/post"]
    assert page.inline == ["<p style=...>", "<p onclick=...>", "<script> without src"]


def _allows(rule, role) -> bool:
    if rule.kind == "public":
        return True
    if role is None:
        return False
    return rule.kind == "authenticated" or rule.permission in ROLES[role].permissions


def test_the_stylesheet_is_served_from_the_package_and_loads_nothing_from_outside(client):
    response = client.get("/static/css/ecrf.css")
    served = response.get_data()
    response.close()
    assert response.status_code == 200 and response.mimetype == "text/css"
    shipped = resources.files("ecrf").joinpath("static/css/ecrf.css").read_bytes()
    assert served == shipped
    css = served.decode()
    assert "@import" not in css
    assert not re.search(r"url\(\s*['\"]?\s*(?:[a-z][a-z0-9+.-]*:)?//", css, re.IGNORECASE)
