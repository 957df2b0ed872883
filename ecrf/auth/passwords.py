"""Password hashing (argon2id via argon2-cffi) and the password policy (21 CFR 11.300)."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app, has_app_context
from flask_babel import gettext as _


def _hasher() -> PasswordHasher:
    """argon2id with the library's recommended parameters (a cheap profile only in tests)."""
    name = current_app.config.get("ARGON2_PROFILE") if has_app_context() else None
    return PasswordHasher.from_parameters(getattr(profiles, name or "RFC_9106_LOW_MEMORY"))


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    if not stored_hash:
        return False
    try:
        return _hasher().verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher().check_needs_rehash(stored_hash)


def policy_problems(password: str, *, username: str, min_length: int,
                    previous_hashes: list[str]) -> list[str]:
    """What is wrong with a new password, in words a user can act on (empty list = fine)."""
    problems = []
    if len(password) < min_length:
        problems.append(_("The password must have at least %(n)s characters.", n=min_length))
    if password.strip().casefold() == username.casefold() or (
        len(username) >= 4 and username.casefold() in password.casefold()
    ):
        problems.append(_("The password must not be or contain the username."))
    if any(verify_password(h, password) for h in previous_hashes):
        problems.append(_("The password must differ from your last %(n)s passwords.",
                          n=len(previous_hashes)))
    return problems


def temporary_password() -> str:
    """A random temporary password that satisfies the policy; it must be changed at first login."""
    return secrets.token_urlsafe(12)
