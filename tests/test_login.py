"""Login, lockout, time-out and logout (21 CFR 11.10(d), 11.300; P11-300d)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ecrf.auth.models import UserSession
from ecrf.auth.services import LOGIN_FAILED_MESSAGE
from tests.factories import PASSWORD, audit_rows


@pytest.mark.requirement("E6-4.2.2a-i")
def test_login_and_home_page(make, login, client):
    make.user("alice", role="data_manager")
    response = login("alice")
    assert response.status_code == 302
    page = client.get("/").get_data(as_text=True)
    assert "Welcome, Alice" in page
    assert [r.action for r in audit_rows(action="auth.login")] == ["auth.login"]


def test_unknown_user_and_wrong_password_get_the_same_message(make, login):
    make.user("bob", role="auditor")
    unknown = login("nobody-here", "whatever-password")
    wrong = login("bob", "wrong-password-123")
    assert unknown.status_code == wrong.status_code == 401
    assert LOGIN_FAILED_MESSAGE in unknown.get_data(as_text=True)
    assert LOGIN_FAILED_MESSAGE in wrong.get_data(as_text=True)


@pytest.mark.requirement("P11-300d", "E6-4.2.2a-i")
def test_failed_logins_are_recorded_though_the_request_fails(make, login):
    make.user("carol", role="auditor")
    login("carol", "wrong-password-123")
    login("ghost", "wrong-password-123")
    failed = audit_rows(action="auth.login_failed")
    assert len(failed) == 2
    assert failed[0].username == "system"
    assert "wrong password" in failed[0].value.new_value
    assert "unknown user" in failed[1].value.new_value


@pytest.mark.requirement("P11-300d")
def test_five_failures_in_a_row_lock_the_account_even_for_the_right_password(make, login, app,
                                                                            db):
    user = make.user("dave", role="auditor")
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        assert login("dave", "wrong-password-123").status_code == 401
    db.session.refresh(user)
    assert user.locked_at is not None
    assert len(audit_rows(action="auth.locked")) == 1
    assert login("dave", PASSWORD).status_code == 401


def test_a_success_resets_the_failure_count(make, login, app, db):
    user = make.user("erin", role="auditor")
    for _ in range(app.config["LOGIN_MAX_FAILURES"] - 1):
        login("erin", "wrong-password-123")
    assert login("erin").status_code == 302
    db.session.refresh(user)
    assert user.failed_logins == 0 and user.locked_at is None


def test_a_lock_ends_after_the_configured_time(make, login, app, later):
    make.user("fay", role="auditor")
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        login("fay", "wrong-password-123")
    assert login("fay").status_code == 401
    later(minutes=app.config["LOCKOUT_MINUTES"] + 1)
    assert login("fay").status_code == 302
    assert len(audit_rows(action="auth.unlocked")) == 1


@pytest.mark.requirement("P11-10d")
def test_a_deactivated_user_cannot_log_in(make, login, runner):
    make.user("root", role="admin")
    make.user("gus", role="auditor")
    result = runner.invoke(args=["users", "deactivate", "gus", "--as", "root",
                                 "--explain", "left the study"])
    assert result.exit_code == 0, result.output
    assert login("gus").status_code == 401


@pytest.mark.requirement("E6-4.2.2a-i")
def test_session_ends_after_idle_time_and_the_time_out_is_recorded(make, login, client, app,
                                                                   later):
    make.user("hal", role="auditor")
    login("hal")
    assert client.get("/").status_code == 200
    later(minutes=app.config["SESSION_IDLE_MINUTES"] + 1)
    response = client.get("/")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    assert len(audit_rows(action="auth.timeout")) == 1


def test_activity_keeps_the_session_alive(make, login, client, app, later):
    make.user("ida", role="auditor")
    login("ida")
    for _ in range(3):
        later(minutes=app.config["SESSION_IDLE_MINUTES"] - 5)
        assert client.get("/").status_code == 200


@pytest.mark.requirement("E6-4.2.2a-i")
def test_logout_ends_the_server_side_session_so_the_cookie_is_dead(make, login, client, db):
    make.user("jan", role="auditor")
    login("jan")
    stolen_cookie = client.get_cookie("ecrf_session").value
    assert client.post("/auth/logout").status_code == 302
    client.set_cookie("ecrf_session", stolen_cookie)
    response = client.get("/")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    session = db.session.scalar(sa.select(UserSession))
    assert session.end_reason == "logout" and session.ended_at is not None
    assert len(audit_rows(action="auth.logout")) == 1


def test_sessions_are_stored_in_the_database_not_in_the_cookie(make, login, client, db):
    make.user("kim", role="auditor")
    login("kim")
    cookie = client.get_cookie("ecrf_session").value
    session = db.session.scalar(sa.select(UserSession))
    assert session is not None and session.ended_at is None
    assert "kim" not in cookie
