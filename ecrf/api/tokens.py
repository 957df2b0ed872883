"""API tokens: created and revoked by their owner in the audited unit of work; only a SHA-256 of
the token is kept (the token itself is shown once), so a copy of the database opens nothing.

A token is refused once expired or revoked, and whenever its owner could not log in (inactive,
locked, or bound to change a temporary password): the API acts with the owner's grants of the
moment (21 CFR 11.10(d), 11.300).

``last_used_at`` (not audited) is written through the ORM in a unit of work, at most once per
``API_TOKEN_TOUCH_SECONDS``: a plain UPDATE on an audited table is refused by the capture code,
and a write per request would be a needless load and a source of version conflicts.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from flask_babel import gettext as _
from sqlalchemy.orm.exc import StaleDataError

from ecrf import database
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.auth.models import User
from ecrf.exports.models import ApiToken
from ecrf.extensions import db

#: a presented token longer than this is not one of ours (and is not hashed)
MAX_TOKEN_LENGTH = 128


class TokenError(ValueError):
    """A token request that cannot be done; the message says why, ``field`` about what."""

    def __init__(self, message: str, field: str = "name"):
        super().__init__(message)
        self.field = field


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def max_days() -> int:
    return int(current_app.config.get("API_TOKEN_DAYS", 90))


def create_token(user: User, name: str, days: int | None = None) -> tuple[ApiToken, str]:
    """A new token for ``user``, valid ``days`` (at most ``API_TOKEN_DAYS``); returns the row
    and the token itself, which is never stored and cannot be shown again."""
    name = (name or "").strip()
    if not name or len(name) > 64:
        raise TokenError(_("A token needs a name of 1-64 characters."))
    limit = max_days()
    days = limit if days is None else int(days)
    if not 1 <= days <= limit:
        raise TokenError(_("A token is valid 1 to %(days)s days.", days=limit), "days")
    raw = secrets.token_urlsafe(32)
    with unit_of_work(Actor.of(user), Reason.system("API token created by its owner")):
        row = ApiToken(user_id=user.id, name=name, token_hash=token_hash(raw),
                       created_at=database.utcnow(),
                       expires_at=database.utcnow() + timedelta(days=days))
        db.session.add(row)
    return row, raw


def revoke_token(user: User, row: ApiToken) -> None:
    """Revoke one of the user's own tokens (idempotent: a revoked token stays as it was)."""
    if row.user_id != user.id:
        raise TokenError(_("Only its owner revokes a token."))
    if row.revoked_at is not None:
        return
    with unit_of_work(Actor.of(user), Reason.system("API token revoked by its owner")):
        row.revoked_at = database.utcnow()


def tokens_of(user: User) -> list[ApiToken]:
    return list(db.session.scalars(
        sa.select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())))


def own_token(user: User, token_id: int) -> ApiToken | None:
    row = db.session.get(ApiToken, token_id)
    return row if row is not None and row.user_id == user.id else None


def state(row: ApiToken) -> str:
    """active, expired or revoked."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at <= database.utcnow():
        return "expired"
    return "active"


@dataclass(frozen=True)
class Authentication:
    """The outcome of presenting a token: the user and token, or why it is refused (and, when the
    token is known, whose it is, so the refusal is recorded against them)."""

    user: User | None
    token: ApiToken | None
    refused: str | None = None

    @property
    def ok(self) -> bool:
        return self.refused is None


def authenticate(presented: str | None) -> Authentication:
    """Check a presented token; touches its last use on success."""
    if not presented or len(presented) > MAX_TOKEN_LENGTH:
        return Authentication(None, None, "no valid token")
    row = db.session.scalar(sa.select(ApiToken).where(ApiToken.token_hash == token_hash(presented)))
    if row is None:
        return Authentication(None, None, "unknown token")
    user = row.user
    why = None
    if row.revoked_at is not None:
        why = "token revoked"
    elif row.expires_at <= database.utcnow():
        why = "token expired"
    elif user.is_system or not user.is_active:
        why = "account inactive"
    elif user.expired():
        why = "account expired"
    elif user.locked_at is not None:
        why = "account locked"
    elif user.must_change_password:
        why = "account must change its password"
    if why is not None:
        return Authentication(user, row, why)
    _touch(user, row)
    return Authentication(user, row)


def _touch(user: User, row: ApiToken) -> None:
    now = database.utcnow()
    every = current_app.config.get("API_TOKEN_TOUCH_SECONDS", 60)
    if row.last_used_at is not None and (now - row.last_used_at).total_seconds() < every:
        return
    try:
        with unit_of_work(Actor.of(user), Reason.system("API token used")):
            row.last_used_at = now  # not audited (excluded): no audit row is written
    except StaleDataError:
        pass  # a concurrent request with the same token touched it first: same outcome
