"""The database unreachable during a request: a 503 that says so, never a stack trace.

The app runs on a database of its own (``fresh_app``: commits are real); the outage is made by
the engine itself: its pooled connections are dropped and every new connection is refused, as
while PostgreSQL restarts. The page (JSON under /api/) says the database cannot be reached,
whether anything of the request was saved, and to retry in a moment, with ``Retry-After``; the
log gets one warning, without a traceback. A commit whose answer was lost may have been saved:
the page says so, and the same page submitted again is recognised (saved once).
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from datetime import date

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from ecrf.api import tokens
from ecrf.auth.models import User
from ecrf.casebook.models import FormInstance, ItemValue
from ecrf.extensions import db
from tests.conftest import PASSWORD, FreshContextClient
from tests.factories import Factories

NOTHING_SAVED = "Nothing of this request was saved."
MAY_BE_SAVED = "it may have been saved"
RETRY = "try again in a moment"


@pytest.fixture
def study(fresh_app):
    """An investigator of site 01 logged in, a subject, and the new adverse event form's data."""
    make = Factories()
    make.user("inv", role="investigator", site="01")
    code = make.subject("01").code
    db.session.remove()  # the test holds no connection (nor SQLite's write lock) from here on
    fresh_app.test_client_class = FreshContextClient
    client = fresh_app.test_client()
    assert client.post("/auth/login", data={"username": "inv", "password": PASSWORD}
                       ).status_code == 302
    page = client.get(new_event_url(code)).get_data(as_text=True)
    token = re.search(r'name="submission_token"[^>]*value="([^"]+)"', page)
    assert token, "the form page carries a submission token"
    event_data = {"term": "10035528", "grade": "2", "onset": date.today().isoformat(),
                  "serious": "N", "causality": "UNLIKELY", "action": "DOSE NOT CHANGED",
                  "outcome": "RECOVERING/RESOLVING", "verbatim": "rash on both forearms",
                  "submission_token": token.group(1), "row_version": ""}
    return fresh_app, client, code, event_data


def new_event_url(code: str) -> str:
    return f"/subjects/{code}/visits/D0/1/forms/adverse_event/0"


def events_described(text: str) -> int:
    """Adverse event forms whose description is ``text`` (read after the outage)."""
    found = db.session.scalar(sa.select(sa.func.count()).select_from(ItemValue).join(
        FormInstance).where(FormInstance.crf_key == "adverse_event",
                            ItemValue.item_key == "verbatim", ItemValue.value_text == text))
    db.session.remove()
    return found


@contextmanager
def database_down(app):
    """Every pooled connection dropped and every new one refused, as by a stopped server."""
    engine = db.engine
    dbapi = engine.dialect.loaded_dbapi

    def refuse(*_args):
        raise dbapi.OperationalError("connection refused: the database server is not running")

    engine.dispose()
    event.listen(engine, "do_connect", refuse)
    try:
        yield
    finally:
        event.remove(engine, "do_connect", refuse)


def assert_outage_page(response, *, saved: bool = False) -> None:
    """503 with Retry-After, the retry message, and whether something may have been saved."""
    body = response.get_data(as_text=True)
    assert response.status_code == 503, (response.status_code, body[:300])
    assert int(response.headers["Retry-After"]) > 0
    assert "Database unavailable" in body and "Traceback" not in body
    assert "OperationalError" not in body and "connection refused" not in body
    if saved:
        assert MAY_BE_SAVED in body and NOTHING_SAVED not in body
    else:
        assert NOTHING_SAVED in body and RETRY in body


def test_a_page_asked_while_the_database_is_down_is_a_503_with_a_retry_message(study, caplog):
    app, client, code, _event = study
    with database_down(app), caplog.at_level(logging.WARNING, logger="ecrf.database"):
        response = client.get(f"/subjects/{code}/casebook")
    assert_outage_page(response)
    warnings = [r for r in caplog.records if r.name == "ecrf.database"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert warnings[0].exc_info is None and "503" in warnings[0].getMessage()
    assert client.get(f"/subjects/{code}/casebook").status_code == 200  # the pool recovered


@pytest.mark.requirement("P11-10c", "A11-7")
def test_a_save_while_the_database_is_down_saves_nothing_and_the_same_page_saves_it_later(study):
    app, client, code, event_data = study
    with database_down(app):
        assert_outage_page(client.post(new_event_url(code), data=event_data))
    assert events_described("rash on both forearms") == 0
    again = client.post(new_event_url(code), data=event_data)
    assert again.status_code == 302 and again.headers["Location"].endswith("/adverse_event/1")
    assert events_described("rash on both forearms") == 1


def test_no_connection_free_in_the_pool_is_a_503_too(study):
    app, client, code, _event = study

    def exhausted(*_args):
        raise sa.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")

    db.engine.dispose()
    event.listen(db.engine, "do_connect", exhausted)
    try:
        response = client.get(f"/subjects/{code}/casebook")
    finally:
        event.remove(db.engine, "do_connect", exhausted)
    assert_outage_page(response)


def test_the_api_answers_503_in_json(study):
    app, client, code, _event = study
    user = db.session.scalar(sa.select(User).where(User.username == "inv"))
    secret = tokens.create_token(user, "outage")[1]
    db.session.remove()
    with database_down(app):
        response = client.get(f"/api/v1/subjects/{code}",
                              headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert response.get_json() == {
        "error": "database_unavailable",
        "message": "The database cannot be reached at the moment; nothing of this request was "
                   "saved. Retry in a moment."}


def test_negative_control_without_the_handler_the_user_gets_a_server_error(study, monkeypatch):
    """The same outage with the handler removed: a 500, which fails the page's assertions."""
    app, client, code, _event = study
    handlers = app.error_handler_spec[None][None]
    for kind in (sa.exc.DBAPIError, sa.exc.TimeoutError):
        monkeypatch.delitem(handlers, kind)
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)  # as in production
    with database_down(app):
        response = client.get(f"/subjects/{code}/casebook")
    assert response.status_code == 500
    with pytest.raises(AssertionError):
        assert_outage_page(response)


def test_a_database_error_that_is_not_an_outage_stays_a_server_error(study, monkeypatch):
    """A broken constraint is a defect to see in the log, not a reason to ask for a retry."""
    app, client, code, _event = study
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)

    def broken(*_args, **_kwargs):
        raise sa.exc.IntegrityError("INSERT ...", {}, Exception("duplicate key"))

    monkeypatch.setattr("ecrf.casebook.views.services.get_instance", broken)
    response = client.get(new_event_url(code))
    assert response.status_code == 500 and "Retry-After" not in response.headers


def _lose_the_answer_of_each_commit(monkeypatch):
    """The database commits, then the connection drops before its answer reaches the app."""
    dialect = db.engine.dialect
    real = dialect.do_commit

    def commit_then_drop(dbapi_connection):
        real(dbapi_connection)
        raise dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(dialect, "do_commit", commit_then_drop)


@pytest.mark.requirement("P11-10c", "A11-7")
def test_a_save_whose_commit_answer_was_lost_is_not_denied_and_is_saved_once(study, monkeypatch):
    """The adverse event is in the database although the request failed: the page must not say
    that nothing was saved (the user would enter the event again), and the same page submitted
    again is recognised by its token."""
    app, client, code, event_data = study
    _lose_the_answer_of_each_commit(monkeypatch)
    response = client.post(new_event_url(code), data=event_data)
    monkeypatch.undo()
    assert events_described("rash on both forearms") == 1
    assert_outage_page(response, saved=True)
    again = client.post(new_event_url(code), data=event_data)
    assert again.status_code == 302
    shown = client.get(again.headers["Location"]).get_data(as_text=True)
    assert "This submission was already saved." in shown
    assert events_described("rash on both forearms") == 1


@pytest.mark.requirement("P11-10c", "A11-7")
def test_negative_control_without_the_commit_mark_the_page_denies_a_saved_event(study,
                                                                               monkeypatch):
    app, client, code, event_data = study
    monkeypatch.setattr("ecrf.audit.unit_of_work.has_request_context", lambda: False)
    _lose_the_answer_of_each_commit(monkeypatch)
    response = client.post(new_event_url(code), data=event_data)
    monkeypatch.undo()
    assert events_described("rash on both forearms") == 1
    with pytest.raises(AssertionError):
        assert_outage_page(response, saved=True)


@contextmanager
def connection_dropped_when_a_transaction_ends():
    """The page was read; the database drops the connection before the request's transaction
    is ended (reported as a disconnect, as the PostgreSQL driver does for a terminated
    connection, so that the engine discards it)."""
    engine = db.engine
    dbapi = engine.dialect.loaded_dbapi
    real = engine.dialect.do_rollback

    def dropped(_dbapi_connection):
        raise dbapi.OperationalError("terminating connection due to administrator command")

    def as_a_disconnect(context):
        if "terminating connection" in str(context.original_exception):
            context.is_disconnect = True

    engine.dialect.do_rollback = dropped
    event.listen(engine, "handle_error", as_a_disconnect)
    try:
        yield
    finally:
        engine.dialect.do_rollback = real
        event.remove(engine, "handle_error", as_a_disconnect)


def test_a_page_read_before_the_connection_dropped_is_still_answered(study, caplog):
    """Ending a read-only transaction on a dropped connection loses nothing: the page is sent,
    the connection discarded, and the pool goes on."""
    app, client, code, _event = study
    with connection_dropped_when_a_transaction_ends(), \
            caplog.at_level(logging.WARNING, logger="ecrf.database"):
        response = client.get(f"/subjects/{code}/casebook")
    assert response.status_code == 200 and code in response.get_data(as_text=True)
    [warning] = [r for r in caplog.records if r.name == "ecrf.database"]
    assert "connection lost while ending a transaction" in warning.getMessage()
    assert warning.exc_info is None
    assert client.get(f"/subjects/{code}/casebook").status_code == 200


def test_negative_control_without_the_teardown_the_read_page_becomes_a_server_error(
        study, monkeypatch):
    app, client, code, _event = study
    ours = [f for f in app.teardown_appcontext_funcs
            if f.__name__ == "_end_transaction_on_a_lost_connection"]
    assert len(ours) == 1
    monkeypatch.setattr(app, "teardown_appcontext_funcs",
                        [f for f in app.teardown_appcontext_funcs if f not in ours])
    with connection_dropped_when_a_transaction_ends(), \
            pytest.raises(sa.exc.OperationalError):  # what gunicorn answers with a bare 500
        client.get(f"/subjects/{code}/casebook")
