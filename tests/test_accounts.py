"""Accounts and passwords (21 CFR 11.10(d), 11.300; P11-100a, P11-200a2/3, P11-300a/c)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ecrf.auth.models import User
from ecrf.auth.passwords import verify_password
from ecrf.auth.services import AccountError, create_user, system_actor
from tests.factories import PASSWORD, audit_rows


def _change(client, current, new, confirm=None):
    return client.post("/auth/password", data={"current": current, "new": new,
                                               "confirm": confirm or new})


@pytest.mark.requirement("E6-4.3.3")
def test_passwords_are_stored_as_argon2_hashes_never_in_clear(make, db):
    user = make.user("amy", role="auditor")
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    assert verify_password(user.password_hash, PASSWORD)


@pytest.mark.requirement("P11-100a", "P11-300a")
def test_a_username_is_never_reused_even_after_deactivation(make, runner, db):
    make.user("root", role="admin")
    make.user("ben", role="auditor")
    assert runner.invoke(args=["users", "deactivate", "ben", "--as", "root"]).exit_code == 0
    with pytest.raises(AccountError, match="never reused"):
        create_user(system_actor(), username="ben", full_name="Another Ben", email=None)
    assert db.session.scalar(sa.select(sa.func.count()).where(User.username == "ben")) == 1


@pytest.mark.requirement("P11-200a2/3")
def test_a_temporary_password_must_be_changed_at_first_login(make, login, client):
    user = make.user("cat", role="auditor", password=None)
    assert login("cat", user.temp_password).status_code == 302
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/auth/password")
    assert client.get("/subjects/").headers["Location"].endswith("/auth/password")
    assert _change(client, user.temp_password, "A-brand-new-passphrase").status_code == 302
    assert client.get("/").status_code == 200
    assert len(audit_rows(action="auth.password_changed")) == 1


@pytest.mark.requirement("E6-4.3.3")
@pytest.mark.parametrize("new, problem", [
    ("Short-1", "at least 12 characters"),
    ("xx-dantes-is-here-xx", "must not be or contain the username"),
    (PASSWORD, "must differ from your last"),
])
def test_the_password_policy_refuses_weak_or_reused_passwords(make, login, client, new, problem):
    make.user("dantes", role="auditor")
    login("dantes")
    response = _change(client, PASSWORD, new)
    assert response.status_code == 400
    assert problem in response.get_data(as_text=True)
    assert not audit_rows(action="auth.password_changed")


def test_none_of_the_last_five_passwords_can_come_back(make, login, client, db):
    make.user("eve", role="auditor")
    login("eve")
    history = [PASSWORD] + [f"Rotation-passphrase-{i}" for i in range(1, 6)]
    for old, new in zip(history, history[1:], strict=False):
        assert _change(client, old, new).status_code == 302
    # the last five (1..5) are refused; the sixth back (the first password) is allowed again
    for recent in history[2:]:
        assert "must differ" in _change(client, history[-1], recent).get_data(as_text=True)
    assert _change(client, history[-1], PASSWORD).status_code == 302


def test_the_current_password_is_required_to_change_it(make, login, client):
    make.user("fox", role="auditor")
    login("fox")
    response = _change(client, "not-my-password", "A-brand-new-passphrase")
    assert response.status_code == 400 and "current password is wrong" in response.get_data(as_text=True)


@pytest.mark.requirement("P11-200a2/3", "P11-300c")
def test_an_admin_can_only_force_a_reset_never_read_or_choose_a_password(make, login_as, client, db):
    target = make.user("gil", role="auditor")
    old_hash = target.password_hash
    login_as("admin")
    page = client.get(f"/admin/users/{target.id}").get_data(as_text=True)
    assert old_hash not in page and "password_hash" not in page
    response = client.post(f"/admin/users/{target.id}/reset-password",
                           data={"reason_code": "administrative", "reason_text": "forgotten"})
    assert response.status_code == 200
    db.session.expire_all()
    assert db.session.get(User, target.id).must_change_password is True
    assert db.session.get(User, target.id).password_hash != old_hash
    reset = audit_rows(action="auth.password_reset")
    assert len(reset) == 1 and reset[0].reason_text == "forgotten"


def test_an_admin_unlocks_a_locked_account_with_a_reason(make, login, login_as, client, app, db):
    target = make.user("hue", role="auditor")
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        login("hue", "wrong-password-123")
    login_as("admin")
    response = client.post(f"/admin/users/{target.id}/unlock",
                           data={"reason_code": "other", "reason_text": "identity checked by phone"})
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(User, target.id).locked_at is None
    unlocked = audit_rows(action="auth.unlocked")
    assert unlocked[-1].reason_text == "identity checked by phone"


@pytest.mark.requirement("A11-12.1-12.3", "EMA-9", "E6-4.2.2a-i", "E6-4.3.8a-c")
def test_grants_and_revocations_are_audit_records(make, login_as, client, db):
    target = make.user("ivy")
    site = make.site("01")
    login_as("admin")
    client.post(f"/admin/users/{target.id}/grants", data={"role": "monitor", "site": str(site.id)})
    db.session.expire_all()
    grant = db.session.get(User, target.id).grants[0]
    assert (grant.role, grant.site.code) == ("monitor", "01")
    client.post(f"/admin/grants/{grant.id}/revoke",
                data={"reason_code": "administrative", "reason_text": "left the project"})
    created = audit_rows(action="grant.create", entity_id=str(grant.id))
    revoked = audit_rows(action="grant.update", entity_id=str(grant.id), field="revoked_at")
    assert {r.field for r in created} >= {"role", "site_id", "user_id", "valid_from"}
    assert len(revoked) == 1 and revoked[0].reason_text == "left the project"


@pytest.mark.requirement("E6-4.3.8a-c")
def test_a_site_role_needs_a_site_and_a_study_role_takes_none(make, db):
    from ecrf.access.services import GrantError, grant_role

    user = make.user("jon")
    with pytest.raises(GrantError, match="acts on sites"):
        grant_role(system_actor(), user, "investigator", None)
    with pytest.raises(GrantError, match="study-wide"):
        grant_role(system_actor(), user, "data_manager", make.site("01"))


@pytest.mark.requirement("P11-300c")
def test_deactivation_ends_the_users_open_sessions(make, login, client, runner, db):
    make.user("root", role="admin")
    make.user("kay", role="auditor")
    login("kay")
    assert client.get("/").status_code == 200
    assert runner.invoke(args=["users", "deactivate", "kay", "--as", "root"]).exit_code == 0
    assert client.get("/").status_code == 302


def test_a_reason_other_without_explanation_is_refused_with_a_message(make, login_as, client, db):
    target = make.user("tom", role="monitor", site="01")
    login_as("admin")
    response = client.post(f"/admin/users/{target.id}/deactivate",
                           data={"reason_code": "other", "reason_text": "  "}, follow_redirects=True)
    assert response.status_code in (200, 400)
    assert "Explain the reason when it is &#39;Other&#39;." in response.get_data(as_text=True)
    assert db.session.get(type(target), target.id).is_active
