"""Real-browser harness: the app served over HTTP on 127.0.0.1, driven by Debian's chromium.

``live_server`` serves an app with CSRF switched on, on a database of its own copied from the
migrated template (commits are real: the browser's requests run in the server's threads).
``browser`` is Debian's chromium through Playwright (Playwright's own download is never used);
when it is missing the tests are skipped, or fail with ``CI=true``. ``page`` is a fresh browser
context per test (no cookie is shared between tests).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from ecrf import create_app
from ecrf.extensions import db as _db
from tests.conftest import TOY_STUDY

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = os.environ.get("ECRF_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
TIMEOUT_MS = 15_000

log = logging.getLogger("tests.browser")


@dataclass
class LiveServer:
    app: Flask
    server: BaseWSGIServer
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __call__(self, path: str = "/") -> str:
        return self.url + path

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """The live app's context, for a short look at (or a write to) its database.

        Keep it short: on SQLite every transaction takes the write lock, so the server's requests
        wait while it is open. The session is removed (its transaction ended) on exit.
        """
        with self.app.app_context():
            try:
                yield
            finally:
                _db.session.remove()


@pytest.fixture(scope="session")
def live_server(app, databases) -> Iterator[LiveServer]:
    """The app over real HTTP, CSRF on, on a database of its own where commits are real."""
    with app.app_context():
        url = databases.copy_of_template(None, _db.engine)
    live = create_app("test", DATABASE_URL=url, WTF_CSRF_ENABLED=True, **TOY_STUDY)
    server = make_server("127.0.0.1", 0, live, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(live, server, "127.0.0.1", server.server_port)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        with live.app_context():
            _db.session.remove()
            _db.engine.dispose()


def _report(request, message: str) -> None:
    """Show a line on the terminal even though output is captured, and log it."""
    log.info(message)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(f"\n{message}")


@pytest.fixture(scope="session")
def browser(request, live_server):
    """Debian's chromium, headless. It asks for ``live_server`` first so that it is closed first:
    no keep-alive connection of the browser outlives the server."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        message = (f"chromium not found at {CHROMIUM}: the browser tests need Debian's chromium "
                   "(apt-get install chromium, or `make browser-deps`)")
        if IN_CI:
            pytest.fail(f"CI: {message}")
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        if IN_CI:
            pytest.fail(f"CI: Playwright for Python is not installed: {e}")
        pytest.skip(f"Playwright for Python is not installed: {e}")

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            _report(request, f"browser tests: chromium {chromium.version} ({CHROMIUM}), "
                             f"playwright {importlib.metadata.version('playwright')}, "
                             f"server {live_server.url}")
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def context(browser, live_server):
    """A fresh browser context (own cookies) for one test, closed after it."""
    ctx = browser.new_context(base_url=live_server.url)
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.set_default_navigation_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context):
    return context.new_page()
