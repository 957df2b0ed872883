"""Stronger authentication (21 CFR 11.300(d); Annex 11 §12; EMA 2023 guideline): rate limits on
password checks counted where every app server sees them, a second factor, account end dates,
a new session at login, the access review and lockout alerts for administrators."""

from __future__ import annotations

import logging
import os
import re
import uuid
from datetime import timedelta

import pyotp
import pytest
import sqlalchemy as sa

from ecrf import create_app
from ecrf.api import tokens
from ecrf.auth.models import User
from ecrf.auth.ratelimit import RETRY_MESSAGE
from ecrf.database import utcnow
from ecrf.extensions import db as _db
from tests.conftest import IN_CI, PASSWORD, TOY_STUDY
from tests.factories import Factories, audit_rows

REDIS_URL = os.environ.get("ECRF_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _limited_app(databases, url, **settings):
    settings.setdefault("RATELIMIT_ENABLED", True)
    return create_app("test", DATABASE_URL=url, **TOY_STUDY,
                      EXPORTS_DIR=str(databases.tmp / "exports"), **settings)


@pytest.fixture
def limited(app, databases):
    """Apps on one database of their own (real commits) with the rate limits switched on."""
    with app.app_context():
        url = databases.copy_of_template(None, _db.engine)
    made = []

    def build(**settings):
        settings.setdefault("RATELIMIT_KEY_PREFIX", f"ecrf-test-{uuid.uuid4().hex[:8]}")
        made.append(_limited_app(databases, url, **settings))
        return made[-1]

    yield build
    for each in made:
        with each.app_context():
            _db.session.remove()
            _db.engine.dispose()


def _user(app, username, role="auditor", **kwargs):
    with app.app_context():
        user = Factories().user(username, role=role, site="01" if role in (
            "investigator", "monitor") else None, **kwargs)
        return user.id


def _post_login(client, username, password):
    return client.post("/auth/login", data={"username": username, "password": password})


# --- rate limits -----------------------------------------------------------------------------


@pytest.mark.requirement("P11-300d", "E6-4.3.3")
def test_refused_logins_for_one_account_are_slowed_down_even_with_the_right_password(limited):
    app = limited(AUTH_RATE_LIMIT_PER_ACCOUNT="3 per 5 minutes",
                  AUTH_RATE_LIMIT_PER_ADDRESS="100 per 5 minutes")
    _user(app, "rita")
    client = app.test_client()
    assert [_post_login(client, "rita", "wrong-password-1").status_code for _ in range(3)] == [401] * 3
    slowed = _post_login(client, "rita", PASSWORD)
    assert slowed.status_code == 429
    assert RETRY_MESSAGE in slowed.get_data(as_text=True)
    assert int(slowed.headers["Retry-After"]) > 0
    _user(app, "other")  # the limit is the account's: another account from the same place logs in
    assert _post_login(client, "other", PASSWORD).status_code == 302


@pytest.mark.requirement("P11-300d")
def test_without_the_limits_the_same_attempts_are_not_slowed_down(limited):
    """Negative control of the test above."""
    app = limited(RATELIMIT_ENABLED=False, AUTH_RATE_LIMIT_PER_ACCOUNT="3 per 5 minutes")
    _user(app, "rita")
    client = app.test_client()
    for _ in range(3):
        _post_login(client, "rita", "wrong-password-1")
    assert _post_login(client, "rita", PASSWORD).status_code == 302


@pytest.mark.requirement("P11-300d")
def test_attempts_from_one_address_on_many_accounts_are_slowed_down(limited):
    """Password spraying: one try per account stays under every lockout, not under this."""
    app = limited(AUTH_RATE_LIMIT_PER_ADDRESS="4 per 5 minutes",
                  AUTH_RATE_LIMIT_PER_ACCOUNT="100 per 5 minutes")
    client = app.test_client()
    assert [_post_login(client, f"user{i}", "Spring2026!!").status_code for i in range(4)] == [401] * 4
    assert _post_login(client, "user5", "Spring2026!!").status_code == 429
    other_address = app.test_client()
    assert _post_login(other_address, "user5", "Spring2026!!").status_code == 429  # same 127.0.0.1
    elsewhere = other_address.post("/auth/login", data={"username": "user6", "password": "x" * 12},
                                   environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert elsewhere.status_code == 401


def test_successful_logins_never_count(limited):
    app = limited(AUTH_RATE_LIMIT_PER_ACCOUNT="2 per 5 minutes",
                  AUTH_RATE_LIMIT_PER_ADDRESS="2 per 5 minutes")
    _user(app, "sam")
    for _ in range(5):
        client = app.test_client()
        assert _post_login(client, "sam", PASSWORD).status_code == 302


def test_refused_signing_attempts_are_slowed_down(limited):
    app = limited(AUTH_RATE_LIMIT_PER_ACCOUNT="3 per 5 minutes",
                  AUTH_RATE_LIMIT_PER_ADDRESS="100 per 5 minutes", LOGIN_MAX_FAILURES=50)
    _user(app, "ivan", role="investigator")
    with app.app_context():
        code = Factories().subject("01").code
    client = app.test_client()
    assert _post_login(client, "ivan", PASSWORD).status_code == 302
    url = f"/subjects/{code}/sign"
    tries = [client.post(url, data={"username": "ivan", "password": "wrong-password-1",
                                    "meaning": "review"}).status_code for _ in range(3)]
    assert all(400 <= status < 500 and status != 429 for status in tries), tries
    assert client.post(url, data={"username": "ivan", "password": PASSWORD,
                                  "meaning": "review"}).status_code == 429


def _redis_or_skip():
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as e:
        message = f"Redis at {REDIS_URL} cannot be reached: {e}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def test_app_servers_sharing_a_redis_store_count_the_same_attempts(limited):
    """Two app servers (two apps, each with its own limiter): attempts on one count on both."""
    _redis_or_skip()
    prefix = f"ecrf-test-{uuid.uuid4().hex[:8]}"
    settings = dict(RATELIMIT_STORAGE_URI=REDIS_URL, RATELIMIT_KEY_PREFIX=prefix,
                    AUTH_RATE_LIMIT_PER_ACCOUNT="3 per 5 minutes",
                    AUTH_RATE_LIMIT_PER_ADDRESS="100 per 5 minutes")
    first, second = limited(**settings), limited(**settings)
    _user(first, "tess")
    for _ in range(3):
        assert _post_login(first.test_client(), "tess", "wrong-password-1").status_code == 401
    assert _post_login(second.test_client(), "tess", PASSWORD).status_code == 429


def test_app_servers_counting_in_their_own_memory_do_not_share(limited):
    """Negative control: why production refuses the memory store."""
    settings = dict(RATELIMIT_STORAGE_URI="memory://", AUTH_RATE_LIMIT_PER_ACCOUNT="3 per 5 minutes",
                    AUTH_RATE_LIMIT_PER_ADDRESS="100 per 5 minutes")
    first, second = limited(**settings), limited(**settings)
    _user(first, "tess")
    for _ in range(3):
        _post_login(first.test_client(), "tess", "wrong-password-1")
    assert _post_login(second.test_client(), "tess", PASSWORD).status_code == 302


@pytest.mark.requirement("E6-4.3.3")
def test_production_refuses_to_count_attempts_in_one_servers_memory(monkeypatch, tmp_path):
    monkeypatch.setenv("SECRET_KEY", "a-production-secret-of-some-length")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'prod.sqlite'}")
    monkeypatch.delenv("ECRF_RATELIMIT_STORAGE_URI", raising=False)
    with pytest.raises(RuntimeError, match="ECRF_RATELIMIT_STORAGE_URI"):
        create_app("production")
    monkeypatch.setenv("ECRF_RATELIMIT_STORAGE_URI", REDIS_URL)
    assert create_app("production").config["RATELIMIT_STORAGE_URI"] == REDIS_URL


# --- a new session at login --------------------------------------------------------------------


def test_login_starts_a_new_session_and_a_planted_cookie_stays_anonymous(make, client):
    make.user("nina", role="auditor")
    client.get("/lang/fr") if False else client.get("/auth/login")
    with client.session_transaction() as s:
        s["planted"] = "by someone else"
    planted = client.get_cookie("ecrf_session").value
    assert client.post("/auth/login", data={"username": "nina", "password": PASSWORD}).status_code == 302
    fresh = client.get_cookie("ecrf_session").value
    assert fresh != planted
    with client.session_transaction() as s:
        assert "planted" not in s  # nothing from before the login survives into the session
    client.set_cookie("ecrf_session", planted)
    assert client.get("/").status_code == 302  # the planted cookie is not logged in


def test_each_login_gets_its_own_server_side_session(make, login, client, db):
    from ecrf.auth.models import UserSession

    make.user("olga", role="auditor")
    login("olga")
    client.post("/auth/logout")
    login("olga")
    sessions = db.session.scalars(sa.select(UserSession).order_by(UserSession.id)).all()
    assert len(sessions) == 2 and sessions[0].token_hash != sessions[1].token_hash
    assert sessions[0].ended_at is not None and sessions[1].ended_at is None


# --- second factor -----------------------------------------------------------------------------


def _secret(db, username) -> str:
    db.session.expire_all()
    return db.session.scalar(sa.select(User.totp_secret).where(User.username == username))


def _code(secret: str, offset_steps: int = 0) -> str:
    totp = pyotp.TOTP(secret)
    return totp.generate_otp(totp.timecode(utcnow()) + offset_steps)


def _enrol(client, db, username) -> str:
    page = client.get("/auth/second-factor/setup").get_data(as_text=True)
    assert "<svg" in page
    secret = _secret(db, username)
    assert secret in page
    assert client.post("/auth/second-factor/setup",
                       data={"code": _code(secret)}).status_code == 302
    return secret


@pytest.mark.requirement("P11-300e")
def test_a_user_adds_a_second_factor_and_each_login_then_asks_for_a_code(make, login, client, db):
    make.user("paul", role="auditor")
    assert login("paul").status_code == 302
    secret = _enrol(client, db, "paul")
    assert [r.action for r in audit_rows(action="auth.second_factor_enrolled")] == [
        "auth.second_factor_enrolled"]
    client.post("/auth/logout")
    after_password = login("paul")
    assert after_password.headers["Location"].endswith("/auth/second-factor")
    assert client.get("/").status_code == 302  # not logged in yet
    wrong = client.post("/auth/second-factor", data={"code": "000000"
                                                     if _code(secret) != "000000" else "111111"})
    assert wrong.status_code == 401
    assert "paul: wrong code" in audit_rows(action="auth.second_factor_failed")[-1].value.new_value
    done = client.post("/auth/second-factor", data={"code": _code(secret, 1)})
    assert done.status_code == 302
    assert "Welcome, Paul" in client.get("/").get_data(as_text=True)


@pytest.mark.requirement("P11-300e")
def test_a_code_is_accepted_only_once(make, login, client, db):
    make.user("quinn", role="auditor")
    login("quinn")
    secret = _enrol(client, db, "quinn")  # used the code of the current step
    client.post("/auth/logout")
    login("quinn")
    replay = client.post("/auth/second-factor", data={"code": _code(secret)})
    assert replay.status_code == 401


@pytest.mark.requirement("P11-300d")
def test_wrong_codes_count_toward_the_lockout(make, login, client, db, app):
    user = make.user("rosa", role="auditor")
    login("rosa")
    secret = _enrol(client, db, "rosa")
    client.post("/auth/logout")
    login("rosa")
    wrong = "000000" if _code(secret) != "000000" else "111111"
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        client.post("/auth/second-factor", data={"code": wrong})
    db.session.refresh(user)
    assert user.locked_at is not None
    assert client.post("/auth/second-factor", data={"code": _code(secret, 1)}).status_code == 302
    assert client.get("/").status_code == 302  # sent back to the login page: still locked


@pytest.mark.requirement("P11-300e")
def test_a_role_that_requires_a_second_factor_enrols_at_login(make, login, client, db, app,
                                                               monkeypatch):
    monkeypatch.setitem(app.config, "TOTP_REQUIRED_ROLES", ("data_manager",))
    make.user("sofia", role="data_manager")
    response = login("sofia")
    assert response.headers["Location"].endswith("/auth/second-factor")
    page = client.get("/auth/second-factor").get_data(as_text=True)
    assert "<svg" in page and "Scan this code" in page
    assert client.get("/").status_code == 302
    secret = _secret(db, "sofia")
    assert client.post("/auth/second-factor", data={"code": _code(secret)}).status_code == 302
    assert "Welcome, Sofia" in client.get("/").get_data(as_text=True)


@pytest.mark.requirement("P11-300e")
def test_a_role_not_listed_logs_in_with_the_password_alone(make, login, client, app, monkeypatch):
    """Negative control of the test above."""
    monkeypatch.setitem(app.config, "TOTP_REQUIRED_ROLES", ("data_manager",))
    make.user("tom", role="auditor")
    assert login("tom").headers["Location"].endswith("/")
    assert "Welcome, Tom" in client.get("/").get_data(as_text=True)


def test_the_code_is_due_within_minutes_of_the_password(make, login, client, db, later):
    make.user("ulla", role="auditor")
    login("ulla")
    secret = _enrol(client, db, "ulla")
    client.post("/auth/logout")
    login("ulla")
    later(minutes=6)
    late = client.post("/auth/second-factor", data={"code": _code(secret, 1)})
    assert late.status_code == 302 and late.headers["Location"].endswith("/auth/login")


def test_the_secret_never_enters_the_audit_trail(make, login, client, db):
    make.user("vera", role="auditor")
    login("vera")
    secret = _enrol(client, db, "vera")
    rows = audit_rows(entity_type="user", field="totp_secret")
    assert rows and all(r.value.new_value == "[not recorded]" for r in rows)
    assert not any(secret in (r.value.new_value or "") for r in audit_rows() if r.value)


@pytest.mark.requirement("P11-300c")
def test_an_administrator_removes_a_lost_second_factor_with_a_reason(make, login, login_as, client,
                                                                      db):
    user = make.user("will", role="auditor")
    login("will")
    _enrol(client, db, "will")
    client.post("/auth/logout")
    login_as("admin")
    response = client.post(f"/admin/users/{user.id}/reset-second-factor",
                           data={"reason_code": "other", "reason_text": "phone lost"})
    assert response.status_code == 302
    db.session.refresh(user)
    assert user.totp_secret is None and user.totp_confirmed_at is None
    row = audit_rows(action="auth.second_factor_reset")[-1]
    assert row.reason_text == "phone lost"
    client.post("/auth/logout")
    assert login("will").headers["Location"].endswith("/")  # the password alone again


# --- account end dates -------------------------------------------------------------------------


@pytest.mark.requirement("P11-300c", "A11-12.1-12.3")
def test_an_administrator_sets_an_end_date_with_a_reason(make, login_as, client, db):
    user = make.user("xena", role="auditor")
    login_as("admin")
    end = (utcnow() + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    assert client.post(f"/admin/users/{user.id}/expiry", data={
        "expires_at": end, "reason_code": "other", "reason_text": "monitoring contract ends"},
    ).status_code == 302
    db.session.refresh(user)
    assert f"{user.expires_at:%Y-%m-%dT%H:%M}" == end
    assert audit_rows(entity_type="user", field="expires_at")[-1].reason_text == \
        "monitoring contract ends"


def _expiring(make, minutes: int):
    from ecrf.audit.reasons import Reason
    from ecrf.auth.services import set_expiry, system_actor

    user = make.user("yara", role="auditor")
    set_expiry(system_actor(), user, utcnow() + timedelta(minutes=minutes), Reason.system("test"))
    return user, tokens.create_token(user, "tests")[1]


def _api(client, token):
    return client.get("/api/v1/subjects", headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.mark.requirement("P11-10d", "P11-300c", "EMA-9")
def test_after_its_end_date_an_account_cannot_log_in_its_session_ends_and_its_token_stops(
        make, login, client, later):
    user, token = _expiring(make, minutes=10)
    assert login("yara").status_code == 302 and _api(client, token) == 200
    later(minutes=11)
    assert client.get("/").status_code == 302  # the open session ended
    refused = login("yara")
    assert refused.status_code == 401 and "expired" in refused.get_data(as_text=True)
    assert _api(client, token) == 401


@pytest.mark.requirement("P11-10d")
def test_before_its_end_date_the_same_account_works(make, login, client, later):
    """Negative control of the test above: the clock moves as far, the end date is later."""
    user, token = _expiring(make, minutes=20)
    assert login("yara").status_code == 302
    later(minutes=11)
    assert client.get("/").status_code == 200
    assert _api(client, token) == 200


# --- access review and lockout alerts ----------------------------------------------------------


def _backdate(user, **fields):
    from ecrf.audit.reasons import Reason
    from ecrf.audit.unit_of_work import unit_of_work
    from ecrf.auth.services import system_actor

    with unit_of_work(system_actor(), Reason.system("test: an account of last year")):
        for name, days in fields.items():
            setattr(user, name, utcnow() - timedelta(days=days))


@pytest.mark.requirement("P11-300b", "EMA-9", "E6-4.3.8a-c")
def test_the_access_review_shows_grants_last_logins_and_dormant_accounts(make, login, login_as,
                                                                         client):
    _backdate(make.user("zoe", role="monitor", site="01"), created_at=120)
    _backdate(make.user("abel", role="auditor"), created_at=200, last_login_at=100)
    make.user("beth", role="data_manager")
    login("beth")
    client.post("/auth/logout")
    admin = login_as("admin")
    page = client.get("/admin/access-review").get_data(as_text=True)
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr>\s*<td><a [^>]*>([\w.-]+)</a>.*?</tr>",
                                                        page, re.S)}
    assert "Monitor (CRA) (01)" in rows["zoe"] and "never logged in" in rows["zoe"]
    assert "dormant" in rows["zoe"]
    assert "dormant" in rows["abel"] and "never logged in" not in rows["abel"]
    assert "dormant" not in rows["beth"] and "Data manager (all sites)" in rows["beth"]
    assert "dormant" not in rows[admin.username]
    csv_text = client.get("/admin/access-review?format=csv").get_data(as_text=True)
    assert csv_text.splitlines()[0].startswith("username,full_name,active,grants,last_login_utc")
    assert any(line.startswith("zoe,") and "dormant" in line for line in csv_text.splitlines())


@pytest.mark.requirement("P11-300d", "E6-3.16.1(t,v,w)")
def test_administrators_see_lockouts_on_their_home_page_and_in_the_log(make, login, login_as,
                                                                       client, app, caplog):
    make.user("carl", role="auditor")
    with caplog.at_level(logging.WARNING, logger="ecrf.security"):
        for _ in range(app.config["LOGIN_MAX_FAILURES"]):
            login("carl", "wrong-password-123")
    assert any("account carl locked" in r.getMessage() for r in caplog.records)
    login_as("admin")
    home = client.get("/").get_data(as_text=True)
    section = home[home.index('id="lockouts"'):]
    assert "carl" in section[:section.index("</section>")]
    assert "account(s) locked now" in section


@pytest.mark.requirement("P11-300d")
def test_without_a_lockout_the_administrators_home_reports_none(make, login, login_as, client, app):
    """Negative control of the test above: failures under the threshold lock nothing."""
    make.user("carl", role="auditor")
    for _ in range(app.config["LOGIN_MAX_FAILURES"] - 1):
        login("carl", "wrong-password-123")
    login_as("admin")
    home = client.get("/").get_data(as_text=True)
    section = home[home.index('id="lockouts"'):]
    section = section[:section.index("</section>")]
    assert "carl" not in section and "No lockout in the last 7 days." in section


# --- behind the TLS proxy ----------------------------------------------------------------------


def _spray_through_proxy(app) -> list[int]:
    """Two clients behind the same proxy (same REMOTE_ADDR), each spraying from its own address."""
    statuses = []
    for client_address in ("198.51.100.7", "198.51.100.7", "198.51.100.7", "203.0.113.9"):
        statuses.append(app.test_client().post(
            "/auth/login", data={"username": f"u{len(statuses)}", "password": "x" * 12},
            environ_base={"REMOTE_ADDR": "10.0.0.1"},
            headers={"X-Forwarded-For": client_address}).status_code)
    return statuses


def test_behind_the_proxy_each_client_is_limited_by_its_own_address(limited):
    app = limited(PROXY_COUNT=1, AUTH_RATE_LIMIT_PER_ADDRESS="2 per 5 minutes",
                  AUTH_RATE_LIMIT_PER_ACCOUNT="100 per 5 minutes")
    assert _spray_through_proxy(app) == [401, 401, 429, 401]


def test_without_trusting_the_proxy_every_client_shares_its_address(limited):
    """Negative control: why PROXY_COUNT must be set behind a proxy."""
    app = limited(PROXY_COUNT=0, AUTH_RATE_LIMIT_PER_ADDRESS="2 per 5 minutes",
                  AUTH_RATE_LIMIT_PER_ACCOUNT="100 per 5 minutes")
    assert _spray_through_proxy(app) == [401, 401, 429, 429]


def test_production_answers_carry_strict_transport_security(client, app, monkeypatch):
    assert "Strict-Transport-Security" not in client.get("/auth/login").headers
    monkeypatch.setitem(app.config, "HSTS_SECONDS", 31536000)
    assert client.get("/auth/login").headers["Strict-Transport-Security"] == "max-age=31536000"
