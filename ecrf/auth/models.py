"""Accounts and server-side sessions (21 CFR 11.10(d), 11.300).

Usernames are unique and never reused: an account is deactivated, never deleted.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ecrf.audit.models import Audited, AuditSpec
from ecrf.database import Base, UTCDateTime, utcnow


class User(Audited, Base):
    __tablename__ = "user"
    __audit__ = AuditSpec(
        "user",
        exclude=frozenset({"created_at", "last_login_at", "totp_last_step"}),
        secret=frozenset({"password_hash", "totp_secret"}),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    full_name: Mapped[str] = mapped_column(sa.String(128))
    email: Mapped[str | None] = mapped_column(sa.String(254))
    #: argon2id hash; nobody reads or sets another user's password except by forcing a reset
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    must_change_password: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    #: accounts the system acts as (demo loader, security events): they can never log in
    is_system: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(sa.Integer, default=0)
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: after this instant the account can no longer log in (a temporary monitor, an auditor)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the second factor's shared secret (base32); in use once confirmed with a first code
    totp_secret: Mapped[str | None] = mapped_column(sa.String(64))
    totp_confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the time step of the last code accepted: a code is never accepted twice
    totp_last_step: Mapped[int | None] = mapped_column(sa.BigInteger)

    grants: Mapped[list[Grant]] = relationship(  # noqa: F821
        "Grant", foreign_keys="Grant.user_id", back_populates="user", order_by="Grant.id"
    )

    # Flask-Login: the id kept in the cookie is the server-side session token, set at login.
    session_token = None

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str | None:
        return self.session_token

    def audit_path(self):
        return {"user": self.username}

    def expired(self, when: datetime | None = None) -> bool:
        """Past its expiry date: no login, no session, no grant, no API token."""
        return self.expires_at is not None and (when or utcnow()) >= self.expires_at

    def __repr__(self) -> str:
        return f"<User {self.username}>"


class PasswordHistory(Base):
    """Earlier password hashes, so the last N cannot be reused."""

    __tablename__ = "password_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"), index=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UserSession(Base):
    """A login session kept in the database, so logout and time-out really end it and any app
    server can serve any request. The cookie carries the token; only its SHA-256 is stored."""

    __tablename__ = "user_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: logout, timeout, deactivated, password_reset
    end_reason: Mapped[str | None] = mapped_column(sa.String(32))
    client: Mapped[str | None] = mapped_column(sa.String(64))
    user_agent: Mapped[str | None] = mapped_column(sa.String(256))

    user: Mapped[User] = relationship()
