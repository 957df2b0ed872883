"""Accounts, logins and sessions, all written through the audited unit of work.

Failed logins are recorded in their own committed transaction even though the login fails;
lockout follows N failures in a row (P11-300d); sessions live in the database.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app, has_request_context, request
from flask_babel import gettext as _

from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.auth.models import PasswordHistory, User, UserSession
from ecrf.auth.passwords import (
    hash_password,
    needs_rehash,
    policy_problems,
    temporary_password,
    verify_password,
)
from ecrf.database import utcnow
from ecrf.extensions import db
from ecrf.i18n import N_

SYSTEM_USERNAME = "system"
#: shown in the user's language (the English text here is the message id)
LOGIN_FAILED_MESSAGE = N_(
    "Unknown username or wrong password. After repeated failures the account is locked: "
    "ask an administrator if you cannot log in."
)


class AccountError(ValueError):
    """A request about an account that cannot be done; the message says why."""


def system_user() -> User:
    user = db.session.scalar(sa.select(User).where(User.username == SYSTEM_USERNAME))
    if user is None:
        raise RuntimeError("the system account is missing: run `ecrf db upgrade`")
    return user


def system_actor() -> Actor:
    return Actor.of(system_user())


def get_user(username: str) -> User | None:
    return db.session.scalar(sa.select(User).where(User.username == username))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _previous_hashes(user: User) -> list[str]:
    limit = current_app.config["PASSWORD_HISTORY"]
    rows = db.session.scalars(
        sa.select(PasswordHistory.password_hash).where(PasswordHistory.user_id == user.id)
        .order_by(PasswordHistory.id.desc()).limit(limit)
    ).all()
    return list(rows)


def _set_password(user: User, password: str, *, temporary: bool) -> None:
    user.password_hash = hash_password(password)
    user.must_change_password = temporary
    user.password_changed_at = utcnow()
    db.session.add(PasswordHistory(user_id=user.id, password_hash=user.password_hash))


def _end_sessions(user: User, reason: str) -> None:
    now = utcnow()
    for s in db.session.scalars(
        sa.select(UserSession).where(UserSession.user_id == user.id, UserSession.ended_at.is_(None))
    ):
        s.ended_at, s.end_reason = now, reason


def _lock_expired(user: User) -> bool:
    minutes = current_app.config["LOCKOUT_MINUTES"]
    return bool(minutes) and utcnow() >= user.locked_at + timedelta(minutes=minutes)


# --- login, logout, sessions ---------------------------------------------------------------


def _security_log():
    return logging.getLogger("ecrf.security")


def count_failure(user: User, *, purpose: str, failure_action: str, what: str) -> None:
    """A refused password or code: an audit record, and the lockout at N failures in a row
    (P11-300d), with an alert in the log for the administrators. Committed even though the
    caller fails."""
    with unit_of_work(system_actor(), Reason.system(f"failed {purpose}")) as uow:
        user.failed_logins += 1
        uow.record(failure_action, "user", user.id, new=f"{user.username}: {what}")
        if user.failed_logins >= current_app.config["LOGIN_MAX_FAILURES"]:
            user.locked_at = utcnow()
            uow.record("auth.locked", "user", user.id,
                       new=f"{user.failed_logins} failed checks in a row (the last at {purpose})")
            _security_log().warning(
                "account %s locked after %d failed checks in a row (the last at %s, from %s)",
                user.username, user.failed_logins, purpose, _client())


def _client() -> str:
    return (request.remote_addr or "-") if has_request_context() else "-"


def check_password(user: User, password: str, *, purpose: str, failure_action: str) -> str | None:
    """Why the password of this account is refused ("locked" or "wrong password"), or None.

    The one password check of logins and signings (P11-200, P11-300d): a lock whose time has
    passed is lifted; a locked account is refused whatever the password; a wrong password counts
    toward the lockout, and the account locks at the configured number of failures in a row. Every
    refusal is an audit record (``failure_action``), committed even though the caller fails.
    """
    if user.locked_at is not None and _lock_expired(user):
        with unit_of_work(system_actor(), Reason.system("lock time passed")) as uow:
            user.locked_at, user.failed_logins = None, 0
            uow.record("auth.unlocked", "user", user.id, new=user.username)
    if user.locked_at is not None:
        with unit_of_work(system_actor(), Reason.system(f"{purpose} refused: account locked")) as uow:
            uow.record(failure_action, "user", user.id, new=f"{user.username}: account locked")
        return "locked"
    if not verify_password(user.password_hash, password):
        count_failure(user, purpose=purpose, failure_action=failure_action, what="wrong password")
        return "wrong password"
    return None


@dataclass
class LoginResult:
    user: User | None
    token: str | None
    message: str | None
    #: the password was right and the login needs a second factor: "code" or "enrol"
    second_factor: str | None = None

    @property
    def ok(self) -> bool:
        return self.token is not None


def login(username: str, password: str, *, client: str | None = None,
          user_agent: str | None = None) -> LoginResult:
    """Check a username and password; start a session unless a second factor is still due."""
    username = (username or "").strip()[:64]
    user = get_user(username)
    fail = LoginResult(None, None, _(LOGIN_FAILED_MESSAGE))
    if user is None or user.is_system or not user.is_active:
        with unit_of_work(system_actor(), Reason.system("failed login")) as uow:
            uow.record("auth.login_failed", "user", user.id if user else None,
                       new=f"username {username!r}: "
                           + ("unknown user" if user is None else "account cannot log in"))
        return fail
    if check_password(user, password, purpose="login", failure_action="auth.login_failed"):
        return fail
    if user.expired():
        with unit_of_work(system_actor(), Reason.system("failed login")) as uow:
            uow.record("auth.login_failed", "user", user.id, new=f"{user.username}: account expired")
        return LoginResult(None, None, _("This account expired on %(date)s. Ask an administrator "
                                         "to extend it.", date=f"{user.expires_at:%Y-%m-%d %H:%M} UTC"))
    if needs_rehash(user.password_hash):
        with unit_of_work(Actor.of(user), Reason.system("password hash upgraded")):
            user.password_hash = hash_password(password)
    from ecrf.auth import second_factor

    step = second_factor.needed_at_login(user)
    if step is not None:
        with unit_of_work(Actor.of(user), Reason.system("password accepted")) as uow:
            uow.record("auth.second_factor_due", "user", user.id, new=f"{user.username}: {step}")
        return LoginResult(user, None, None, second_factor=step)
    return LoginResult(user, start_session(user, client=client, user_agent=user_agent), None)


def start_session(user: User, *, client: str | None = None, user_agent: str | None = None) -> str:
    """A new server-side session (a new id: nothing from before the login is reused)."""
    token = secrets.token_urlsafe(32)
    with unit_of_work(Actor.of(user), Reason.system("successful login")) as uow:
        user.failed_logins = 0
        user.last_login_at = utcnow()
        db.session.add(UserSession(token_hash=_token_hash(token), user_id=user.id,
                                   client=client, user_agent=(user_agent or "")[:256]))
        uow.record("auth.login", "user", user.id, new=user.username)
    user.session_token = token
    return token


def load_session(token: str) -> tuple[User | None, str | None]:
    """The user of a live session, or (None, why it ended). Touches the last activity time."""
    session = db.session.scalar(
        sa.select(UserSession).where(UserSession.token_hash == _token_hash(token))
    )
    if session is None or session.ended_at is not None:
        return None, "ended"
    user = session.user
    now = utcnow()
    idle = timedelta(minutes=current_app.config["SESSION_IDLE_MINUTES"])
    if not user.is_active or user.locked_at is not None or user.expired(now):
        end_session(session, "account_disabled")
        return None, "ended"
    if now - session.last_seen_at > idle:
        end_session(session, "timeout")
        return None, "timeout"
    if (now - session.last_seen_at).total_seconds() > current_app.config["SESSION_TOUCH_SECONDS"]:
        with unit_of_work(Actor.of(user)):
            session.last_seen_at = now
    user.session_token = token
    return user, None


def end_session(session: UserSession, reason: str) -> None:
    """End a session: logout, time-out or a disabled account; each is an audit record."""
    user = session.user
    with unit_of_work(Actor.of(user), Reason.system(f"session ended: {reason}")) as uow:
        session.ended_at, session.end_reason = utcnow(), reason
        action = {"logout": "auth.logout", "timeout": "auth.timeout"}.get(reason, "auth.session_ended")
        uow.record(action, "user", user.id, new=user.username)


def logout(token: str) -> None:
    session = db.session.scalar(
        sa.select(UserSession).where(UserSession.token_hash == _token_hash(token),
                                     UserSession.ended_at.is_(None))
    )
    if session is not None:
        end_session(session, "logout")


def change_password(user: User, current: str, new: str, confirm: str) -> list[str]:
    """Change one's own password; returns the problems (nothing is saved when there are any)."""
    if not verify_password(user.password_hash, current):
        return [_("The current password is wrong.")]
    if new != confirm:
        return [_("The new password and its confirmation differ.")]
    problems = policy_problems(new, username=user.username,
                               min_length=current_app.config["PASSWORD_MIN_LENGTH"],
                               previous_hashes=_previous_hashes(user))
    if problems:
        return problems
    with unit_of_work(Actor.of(user), Reason.system("password changed by its owner")) as uow:
        _set_password(user, new, temporary=False)
        uow.record("auth.password_changed", "user", user.id, new=user.username)
    return []


# --- administration ------------------------------------------------------------------------


def create_user(actor: Actor, *, username: str, full_name: str, email: str | None,
                password: str | None = None) -> tuple[User, str]:
    """Create an account with a temporary password (returned once, to hand over)."""
    username = username.strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", username):
        raise AccountError(_("A username is 1-64 letters, digits, '.', '-' or '_'."))
    if get_user(username) is not None:
        raise AccountError(_("The username %(username)s exists or existed: usernames are never reused.",
                             username=repr(username)))
    if not full_name.strip():
        raise AccountError(_("A full name is required (it is printed with signatures)."))
    temp = password or temporary_password()
    with unit_of_work(actor, Reason.system("account created")) as uow:
        user = User(username=username, full_name=full_name.strip(), email=email or None,
                    must_change_password=password is None, failed_logins=0, is_active=True,
                    is_system=False)
        db.session.add(user)
        db.session.flush()
        _set_password(user, temp, temporary=password is None)
        uow.record("auth.account_created", "user", user.id, new=username)
    return user, temp


def deactivate_user(actor: Actor, user: User, reason: Reason) -> None:
    if user.is_system:
        raise AccountError(_("System accounts cannot be changed."))
    with unit_of_work(actor, reason):
        user.is_active = False
        _end_sessions(user, "deactivated")


def unlock_user(actor: Actor, user: User, reason: Reason) -> None:
    if user.locked_at is None:
        raise AccountError(_("%(username)s is not locked.", username=user.username))
    with unit_of_work(actor, reason) as uow:
        user.locked_at, user.failed_logins = None, 0
        uow.record("auth.unlocked", "user", user.id, new=user.username)


def reset_password(actor: Actor, user: User, reason: Reason) -> str:
    """Force a reset: a new temporary password, shown once, that must be changed at login."""
    if user.is_system:
        raise AccountError(_("System accounts cannot log in."))
    temp = temporary_password()
    with unit_of_work(actor, reason) as uow:
        _set_password(user, temp, temporary=True)
        _end_sessions(user, "password_reset")
        uow.record("auth.password_reset", "user", user.id, new=user.username)
    return temp


def set_expiry(actor: Actor, user: User, expires_at, reason: Reason) -> None:
    """Give an account an end date (a temporary monitor, an inspector), or remove it."""
    if user.is_system:
        raise AccountError(_("System accounts cannot be changed."))
    with unit_of_work(actor, reason):
        user.expires_at = expires_at
        if user.expired():
            _end_sessions(user, "expired")


@dataclass
class Lockout:
    at: object
    user: User | None
    what: str


def lockout_alerts(days: int = 7) -> tuple[list[User], list[Lockout]]:
    """For the administrators' home: accounts locked now, and the lockouts of the last days
    (read from the audit trail, so a lock already lifted is still reported)."""
    from ecrf.audit.models import AuditRecord

    locked = db.session.scalars(sa.select(User).where(User.locked_at.is_not(None),
                                                      User.is_system.is_(False))
                                .order_by(User.locked_at.desc())).all()
    since = utcnow() - timedelta(days=days)
    rows = db.session.scalars(
        sa.select(AuditRecord).where(AuditRecord.action == "auth.locked",
                                     AuditRecord.recorded_at >= since)
        .order_by(AuditRecord.seq.desc()).limit(50)).all()
    users = {str(u.id): u for u in db.session.scalars(
        sa.select(User).where(User.id.in_({int(r.entity_id) for r in rows if r.entity_id})))}
    recent = [Lockout(r.recorded_at, users.get(r.entity_id),
                      r.value.new_value if r.value and r.value.new_value else "") for r in rows]
    return list(locked), recent
