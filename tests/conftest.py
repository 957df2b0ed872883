"""Test harness: one migrated database per run, each test inside an outer transaction.

The engine comes from ``ECRF_TEST_DATABASE_URL`` (default: SQLite in a temporary folder). A
``postgresql://`` URL names a server: the run creates its own fresh database there and drops it
at the end. With ``CI=true`` a PostgreSQL that cannot be reached fails the run; elsewhere the run
is skipped with a message. Tests that must prove real commits (atomicity, triggers, concurrency,
tampering) use ``fresh_app``: a database of their own, copied from the migrated template.
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from flask_migrate import upgrade

from config import normalise_database_url
from ecrf import create_app
from ecrf.extensions import db as _db
from ecrf.study.schedule import SCHEDULE
from ecrf.validation.requirements import REQUIREMENTS
from tests import factories

IN_CI = os.environ.get("CI", "").lower() == "true"
#: the engine tests' toy CRF: one module plus its line in the schedule, nothing else
TOY_STUDY = {"EXTRA_CRF_MODULES": ["tests.toy_crf"],
             "SCHEDULE": SCHEDULE.extended(forms={"D1": ("toy_vitals",)})}
PASSWORD = factories.PASSWORD


# --- requirement markers: the trace from a requirement to the tests that show it ---------------


def requirement_ids(item: pytest.Item) -> list[str]:
    """The requirement IDs a test carries: its own marks, its class's and its module's."""
    return sorted({i for mark in item.iter_markers("requirement") for i in mark.args})


def requirement_problems(item: pytest.Item) -> list[str]:
    """What is wrong with a test's requirement marks: a typo would leave a requirement
    silently without its test."""
    problems = []
    for mark in item.iter_markers("requirement"):
        if not mark.args or mark.kwargs:
            problems.append("a requirement mark names its IDs as arguments: "
                            "@pytest.mark.requirement(\"P11-10a\", ...)")
        problems += [f"unknown requirement ID {i!r}" for i in mark.args
                     if not isinstance(i, str) or i not in REQUIREMENTS]
    return problems


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A file whose tests name an unknown requirement fails to collect, like a syntax error."""
    report = yield
    if report.passed:
        problems = sorted({p for node in report.result if isinstance(node, pytest.Item)
                           for p in requirement_problems(node)})
        if problems:
            report.outcome, report.result = "failed", []
            report.longrepr = ("\n".join(problems)
                               + "\n(the IDs are those of ecrf/validation/requirements.py)")
    return report


def pytest_collection_modifyitems(items):
    """Each test's requirement IDs go into its JUnit properties, for ``ecrf validate report``."""
    for item in items:
        ids = requirement_ids(item)
        if ids:
            item.user_properties.append(("requirements", " ".join(ids)))


def _server_url(url: str, database: str) -> str:
    return sa.engine.make_url(normalise_database_url(url)).set(database=database) \
        .render_as_string(hide_password=False)


class Databases:
    """Creates and drops the run's databases on the engine under test."""

    def __init__(self, url: str | None, tmp_path_factory):
        self.url = url
        self.tmp = tmp_path_factory.mktemp("db")
        self.created: list[str] = []
        self.is_postgres = bool(url) and url.startswith(("postgres", "postgresql"))
        self.tag = uuid.uuid4().hex[:8]
        if self.is_postgres:
            self.admin = sa.create_engine(normalise_database_url(url), isolation_level="AUTOCOMMIT")
            try:
                with self.admin.connect() as c:
                    c.exec_driver_sql("SELECT 1")
            except sa.exc.OperationalError as e:
                message = f"PostgreSQL at {url} cannot be reached: {e.orig}"
                if IN_CI:
                    pytest.exit(message, returncode=3)
                pytest.skip(message, allow_module_level=True)

    def template_url(self) -> str:
        if not self.is_postgres:
            return f"sqlite:///{self.tmp / 'template.sqlite'}"
        name = f"ecrf_t_{self.tag}"
        self._create(name)
        return _server_url(self.url, name)

    def copy_of_template(self, template_url: str, engine) -> str:
        n = len(self.created)
        if not self.is_postgres:
            path = self.tmp / f"fresh{n}.sqlite"
            shutil.copy(self.tmp / "template.sqlite", path)
            return f"sqlite:///{path}"
        engine.dispose()  # a template database must have no open connection
        name = f"ecrf_t_{self.tag}_{n}"
        self._create(name, template=f"ecrf_t_{self.tag}")
        return _server_url(self.url, name)

    def _create(self, name: str, template: str | None = None) -> None:
        with self.admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"'
                              + (f' TEMPLATE "{template}"' if template else ""))
        self.created.append(name)

    def drop_all(self) -> None:
        if not self.is_postgres:
            return
        with self.admin.connect() as c:
            for name in reversed(self.created):
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.dispose()


@pytest.fixture(scope="session")
def databases(tmp_path_factory):
    dbs = Databases(os.environ.get("ECRF_TEST_DATABASE_URL"), tmp_path_factory)
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def app(databases):
    app = create_app("test", DATABASE_URL=databases.template_url(), **TOY_STUDY,
                     EXPORTS_DIR=str(databases.tmp / "exports"))
    with app.app_context():
        upgrade()
        _db.session.remove()
    yield app
    with app.app_context():
        _db.engine.dispose()


@pytest.fixture(scope="session")
def engine_name(app):
    with app.app_context():
        return _db.engine.dialect.name


@pytest.fixture
def db(app):
    """The database for one test: everything it commits is rolled back afterwards."""
    with app.app_context():
        connection = _db.engine.connect()
        outer = connection.begin()
        _db.session.remove()
        _db.session.configure(bind=connection, join_transaction_mode="create_savepoint")
        try:
            yield _db
        finally:
            _db.session.remove()
            _db.session.configure(bind=None)
            outer.rollback()
            connection.close()


@pytest.fixture
def fresh_app(app, databases):
    """An app on a database of its own, where commits are real (for mechanism tests)."""
    with app.app_context():
        url = databases.copy_of_template(None, _db.engine)
    fresh = create_app("test", DATABASE_URL=url, **TOY_STUDY,
                       EXPORTS_DIR=str(databases.tmp / "exports"))
    with fresh.app_context():
        yield fresh
        _db.session.remove()
        _db.engine.dispose()


class FreshContextClient(FlaskClient):
    """Each request runs in an app context of its own, as in production (own ``g``, own
    session), even while the test holds one open."""

    def open(self, *args, **kwargs):
        with self.application.app_context():
            return super().open(*args, **kwargs)


@pytest.fixture
def client(app, db):
    app.test_client_class = FreshContextClient
    return app.test_client()


@pytest.fixture
def runner(app, db):
    return app.test_cli_runner()


@pytest.fixture
def make(db):
    """Factories that go through the audited services (see tests/factories.py)."""
    return factories.Factories()


@pytest.fixture
def login(client):
    """Log a user in through the real login form; returns the response."""

    def _login(username: str, password: str = PASSWORD, *, follow=False):
        return client.post("/auth/login", data={"username": username, "password": password},
                           follow_redirects=follow)

    return _login


@pytest.fixture
def login_as(make, login):
    """Create a user holding ``role`` (on ``site`` for site roles) and log them in."""

    def _login_as(role: str, site=None, username: str | None = None):
        user = make.user(username or f"{role}-{uuid.uuid4().hex[:6]}", role=role, site=site)
        response = login(user.username)
        assert response.status_code == 302, response.get_data(as_text=True)[:500]
        return user

    return _login_as


@pytest.fixture
def later(monkeypatch):
    """Move the clock of ecrf's services forward (time-outs, lock expiry, grant windows)."""
    from ecrf import database

    real = database.utcnow
    offset = {"delta": timedelta(0)}

    def fake():
        return real() + offset["delta"]

    for module in ("ecrf.database", "ecrf.auth.services", "ecrf.access.grants",
                   "ecrf.study.services", "ecrf.access.services", "ecrf.auth.views",
                   "ecrf.auth.second_factor", "ecrf.admin.access_review", "ecrf.auth.models"):
        monkeypatch.setattr(f"{module}.utcnow", fake)

    def advance(**kwargs):
        offset["delta"] += timedelta(**kwargs)

    return advance
