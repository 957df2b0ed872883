"""A scripted browser for the load benchmark: logs in, opens CRF pages, saves daily SOFA forms.

Built on requests (one ``requests.Session`` per simulated user, so cookies behave as in a
browser). Pages are read with regular expressions rather than an HTML parser: the client shares
the machine's cores with gunicorn and PostgreSQL, and its own CPU time must stay small.

Anything but the expected answer (a 302 to the saved form after a save, a 200 for a page) is a
failure: it is counted in a shared ``Failures`` tally and never retried silently.
"""

from __future__ import annotations

import html
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

DEMO_PASSWORD = "Demo-JAKAHDI-2026"  # noqa: S105 (the DEMO study's published password)
SESSION_COOKIE = "ecrf_session"
USER_AGENT = "ecrf-bench-http/1"

_FORM = re.compile(r'<form method="post" class="crf"[^>]*>(.*?)</form>', re.S)
_TAG = re.compile(r"<(input|select)\b([^>]*)>", re.S)
_ATTR = re.compile(r'([a-zA-Z_:-]+)(?:="([^"]*)")?')
_OPTION = re.compile(r"<option\b([^>]*)>", re.S)
_SELECT_BODY = re.compile(r"<select\b[^>]*>(.*?)</select>", re.S)
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')
_SITE_OPTION = re.compile(r'<select id="site" name="site"[^>]*>(.*?)</select>', re.S)


class Failures:
    """Thread-safe tally of failed requests, by phase and kind, with a few examples each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], list[str]] = {}

    def add(self, phase: str, kind: str, detail: str) -> None:
        with self._lock:
            self.counts[phase, kind] += 1
            shown = self.examples.setdefault((phase, kind), [])
            if len(shown) < 3:
                shown.append(detail[:300])

    def total(self, phase: str | None = None) -> int:
        with self._lock:
            return sum(n for (p, _k), n in self.counts.items() if phase is None or p == phase)

    def as_list(self) -> list[dict]:
        with self._lock:
            return [{"phase": p, "kind": k, "count": n, "examples": self.examples[p, k]}
                    for (p, k), n in sorted(self.counts.items())]


@dataclass
class Response:
    status: int
    seconds: float
    text: str
    location: str | None


@dataclass
class OpenForm:
    """A form page as the browser holds it: where it posts, and the fields it would send."""

    url: str
    fields: list[tuple[str, str]]
    confirms: list[str] = field(default_factory=list)


@dataclass
class SaveOutcome:
    ok: bool
    post_seconds: float  # every POST the save needed (a confirmation is a second one)
    posts: int
    finished_at: float
    detail: str = ""


def _attrs(text: str) -> dict[str, str]:
    return {m.group(1): html.unescape(m.group(2) or "") for m in _ATTR.finditer(text)}


def form_fields(page: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The (name, value) pairs a browser would submit from the CRF form of a page, untouched,
    and the soft-check confirmations the page asks for."""
    found = _FORM.search(page)
    if found is None:
        raise ValueError("no CRF form on the page")
    body = found.group(1)
    selects = iter(_SELECT_BODY.findall(body))
    fields: list[tuple[str, str]] = []
    confirms: list[str] = []
    for tag, raw in _TAG.findall(body):
        attrs = _attrs(raw)
        name = attrs.get("name")
        if tag == "select":
            options = [_attrs(o) for o in _OPTION.findall(next(selects))]
            chosen = next((o for o in options if "selected" in o), options[0] if options else {})
            fields.append((name, chosen.get("value", "")))
            continue
        kind = attrs.get("type", "text")
        if name == "confirm":
            confirms.append(attrs.get("value", ""))
        elif kind in ("radio", "checkbox"):
            if "checked" in attrs:
                fields.append((name, attrs.get("value", "on")))
        elif name and kind not in ("submit", "button"):
            fields.append((name, attrs.get("value", "")))
    return fields, confirms


def fill(fields: list[tuple[str, str]], values: dict[str, str],
         extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """The form's fields with ``values`` typed in (a value for an unchecked radio adds it)."""
    out = [(k, values.get(k, v)) for k, v in fields]
    present = {k for k, _v in fields}
    out += [(k, v) for k, v in values.items() if k not in present]
    return out + list(extra)


def csrf_token(page: str) -> str:
    found = _CSRF.search(page)
    if found is None:
        raise ValueError("no csrf_token on the page")
    return found.group(1) or found.group(2)


def site_choices(page: str) -> dict[str, str]:
    """Site code -> the id the enrolment form posts, from the subject list's site select."""
    found = _SITE_OPTION.search(page)
    if found is None:
        return {}
    return {re.sub(r"<[^>]+>", "", rest).split()[0]: _attrs(raw)["value"]
            for raw, rest in re.findall(r"<option\b([^>]*)>([^<]*)", found.group(1))}


def sofa_values(rng: random.Random) -> dict[str, str]:
    """Plausible worst values of an ICU day (as the demo study's loader types them)."""
    severity = rng.uniform(0.3, 0.9)
    values = {
        "pao2": f"{rng.uniform(55, 110):.0f}", "pao2_unit": "mmHg",
        "fio2": f"{min(1.0, max(0.21, rng.uniform(0.25 + 0.5 * severity, 0.35 + 0.6 * severity))):.2f}",
        "fio2_unit": "fraction",
        "resp_support": "IMV" if severity > 0.45 else rng.choice(["NONE", "HFNO", "NIV"]),
        "platelets": str(max(5, int(rng.gauss(160 - 130 * severity, 25)))),
        "bilirubin": f"{max(4, rng.gauss(15 + 90 * severity, 10)):.0f}", "bilirubin_unit": "umol/L",
        "map": str(int(rng.gauss(78 - 15 * severity, 6))),
        "gcs": str(max(3, min(15, int(rng.gauss(15 - 6 * severity, 2))))),
        "creatinine": f"{max(30, rng.gauss(80 + 200 * severity, 30)):.0f}",
        "creatinine_unit": "umol/L",
        "urine_output": str(max(0, int(rng.gauss(1500 - 1100 * severity, 300)))),
        "rrt": "Y" if severity > 0.8 and rng.random() < 0.5 else "N",
    }
    if severity > 0.5:
        values["norepinephrine"] = f"{rng.uniform(0.05, 0.5 * severity):.2f}"
    return values


def form_path(code: str, visit_key: str, crf_key: str = "sofa_daily", repeat: int = 1) -> str:
    return f"/subjects/{code}/visits/{visit_key}/1/forms/{crf_key}/{repeat}"


class Client:
    """One simulated user with a session of their own on one server."""

    def __init__(self, base_url: str, username: str, failures: Failures, *, seed: int = 0,
                 timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.failures = failures
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.http = requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT

    def close(self) -> None:
        self.http.close()

    # --- plain requests ------------------------------------------------------------------------

    def request(self, method: str, path: str, data=None) -> Response:
        started = time.perf_counter()
        r = self.http.request(method, self.base_url + path, data=data, allow_redirects=False,
                              timeout=self.timeout)
        seconds = time.perf_counter() - started
        return Response(r.status_code, seconds, r.text, r.headers.get("Location"))

    def page(self, phase: str, path: str) -> float | None:
        """Seconds to load a page, or None (counted as a failure) if it did not answer 200."""
        try:
            r = self.request("GET", path)
        except requests.RequestException as e:
            self.failures.add(phase, type(e).__name__, f"GET {path}: {e}")
            return None
        if r.status != 200:
            self.failures.add(phase, f"GET {r.status}", f"GET {path} -> {r.status} {r.location or ''}")
            return None
        return r.seconds

    def login(self, password: str = DEMO_PASSWORD) -> None:
        """Log in through the login page; raises if the server does not accept it."""
        page = self.request("GET", "/auth/login")
        if page.status != 200:
            raise RuntimeError(f"GET /auth/login answered {page.status}")
        done = self.request("POST", "/auth/login", data={
            "csrf_token": csrf_token(page.text), "username": self.username, "password": password})
        if done.status != 302 or urlsplit(done.location or "").path.startswith("/auth/"):
            raise RuntimeError(f"login of {self.username} answered {done.status} {done.location}")

    @property
    def cookie(self) -> str | None:
        return self.http.cookies.get(SESSION_COOKIE)

    def use_cookie(self, value: str) -> None:
        """Carry a session obtained elsewhere (another app server) into this client."""
        self.http.cookies.clear()
        self.http.cookies.set(SESSION_COOKIE, value, domain=urlsplit(self.base_url).hostname, path="/")

    # --- saving a daily SOFA ---------------------------------------------------------------------

    def open_form(self, phase: str, code: str, visit_key: str) -> tuple[OpenForm | None, float]:
        """GET the form page of an empty day; (the form ready to post, seconds) or (None, s)."""
        path = form_path(code, visit_key)
        try:
            r = self.request("GET", path)
        except requests.RequestException as e:
            self.failures.add(phase, type(e).__name__, f"GET {path}: {e}")
            return None, 0.0
        if r.status != 200:
            self.failures.add(phase, f"GET form {r.status}", f"GET {path} -> {r.status}")
            return None, r.seconds
        try:
            fields, _confirms = form_fields(r.text)
        except ValueError as e:
            self.failures.add(phase, "form page unreadable", f"GET {path}: {e}")
            return None, r.seconds
        if dict(fields).get("row_version"):
            self.failures.add(phase, "day already entered", f"{path} has a saved instance")
            return None, r.seconds
        return OpenForm(path, fill(fields, sofa_values(self.rng))), r.seconds

    def save(self, phase: str, form: OpenForm, *, keep_flash: bool = True,
             max_posts: int = 3) -> SaveOutcome:
        """POST the form; resubmit with the confirmations a soft check asks for; 302 = saved.

        ``keep_flash=False`` keeps the session cookie the client had before the POST: the
        flash message a save leaves in the session is shown by the redirect target, which is
        not followed here, so it would otherwise pile up in the cookie of a client that saves
        form after form without opening another page."""
        cookies = self.http.cookies.copy()
        spent, posts, data = 0.0, 0, form.fields
        while posts < max_posts:
            try:
                r = self.request("POST", form.url, data=data)
            except requests.RequestException as e:
                self.failures.add(phase, type(e).__name__, f"POST {form.url}: {e}")
                return SaveOutcome(False, spent, posts + 1, time.perf_counter(), str(e))
            spent += r.seconds
            posts += 1
            if r.status == 302:
                if not keep_flash:
                    self.http.cookies = cookies
                if urlsplit(r.location or "").path != form.url:
                    self.failures.add(phase, "302 elsewhere", f"POST {form.url} -> {r.location}")
                    return SaveOutcome(False, spent, posts, time.perf_counter(), r.location or "")
                return SaveOutcome(True, spent, posts, time.perf_counter())
            confirms: list[str] = []
            if r.status == 400:
                try:
                    fields, confirms = form_fields(r.text)
                except ValueError:
                    confirms = []
            if not confirms:
                errors = re.findall(r'<p class="error"[^>]*>([^<]*)</p>', r.text)
                self.failures.add(phase, f"POST {r.status}",
                                  f"POST {form.url} -> {r.status} {'; '.join(errors)[:200]}")
                return SaveOutcome(False, spent, posts, time.perf_counter(), f"status {r.status}")
            typed = dict(form.fields)
            data = fill(fields, {k: typed[k] for k in typed if k not in
                                 ("csrf_token", "submission_token", "row_version")},
                        extra=[("confirm", c) for c in confirms])
        self.failures.add(phase, "confirmation loop", f"POST {form.url}: {max_posts} posts")
        return SaveOutcome(False, spent, posts, time.perf_counter(), "confirmation loop")

    # --- enrolment -------------------------------------------------------------------------------

    def enrol_form(self) -> tuple[str, dict[str, str]]:
        """(csrf token, site code -> id) from the subject list, as the enrolment form posts them."""
        r = self.request("GET", "/subjects/")
        if r.status != 200:
            raise RuntimeError(f"GET /subjects/ answered {r.status}")
        return csrf_token(r.text), site_choices(r.text)

    def enrol(self, phase: str, token: str, site_id: str) -> str | None:
        """POST /subjects/enrol; the new subject's code, or None (a counted failure)."""
        try:
            r = self.request("POST", "/subjects/enrol", data={"csrf_token": token, "site": site_id})
        except requests.RequestException as e:
            self.failures.add(phase, type(e).__name__, f"POST /subjects/enrol: {e}")
            return None
        found = re.fullmatch(r"/subjects/([0-9A-Za-z]+-[0-9]+)", urlsplit(r.location or "").path)
        if r.status != 302 or found is None:
            self.failures.add(phase, f"enrol {r.status}", f"POST /subjects/enrol -> {r.status} "
                                                          f"{r.location or ''}")
            return None
        return found.group(1)
