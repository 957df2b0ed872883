"""The optional second factor: a time-based one-time code (TOTP, RFC 6238) from an app on the
user's phone (21 CFR 11.300; EMA 2023 guideline: stronger authentication for remote access).

Any user may enrol; the roles in ``TOTP_REQUIRED_ROLES`` must, and enrol at their next login.
The shared secret is stored with the account (an audit record says it changed, never its value);
a code is accepted once (its time step is kept) and wrong codes count toward the lockout like
wrong passwords. Codes come from pyotp; the enrolment QR code is drawn by segno as inline SVG,
so nothing leaves the hospital network.
"""

from __future__ import annotations

import hmac
import io

import pyotp
import segno
from flask import current_app

from ecrf.access.grants import active_grants
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.auth.models import User
from ecrf.database import utcnow

#: codes of the time step before and after the current one are accepted (clock drift, typing)
DRIFT_STEPS = 1


def required(user: User) -> bool:
    """A role the user holds requires a second factor."""
    roles = set(current_app.config["TOTP_REQUIRED_ROLES"])
    return bool(roles) and any(g.role in roles for g in active_grants(user))


def enrolled(user: User) -> bool:
    return user.totp_secret is not None and user.totp_confirmed_at is not None


def needed_at_login(user: User) -> str | None:
    """What the login still needs after the password: "code", "enrol" or nothing."""
    if enrolled(user):
        return "code"
    if required(user):
        return "enrol"
    return None


def start_enrolment(user: User) -> str:
    """A new secret for the user to scan; in use only once a first code confirms it."""
    secret = pyotp.random_base32()
    with unit_of_work(Actor.of(user), Reason.system("second factor enrolment started")):
        user.totp_secret, user.totp_confirmed_at, user.totp_last_step = secret, None, None
    return secret


def provisioning_uri(user: User) -> str:
    return pyotp.TOTP(user.totp_secret).provisioning_uri(
        name=user.username, issuer_name=current_app.config["TOTP_ISSUER"])


def qr_svg(user: User) -> str:
    """The enrolment QR code as an inline SVG element."""
    out = io.BytesIO()
    segno.make(provisioning_uri(user), error="m").save(out, kind="svg", xmldecl=False,
                                                       svgns=True, scale=4, border=2)
    return out.getvalue().decode()


def matching_step(user: User, code: str) -> int | None:
    """The time step whose code this is, if it is one not used before."""
    code = "".join((code or "").split())
    if user.totp_secret is None or not code.isdigit() or len(code) != 6:
        return None
    totp = pyotp.TOTP(user.totp_secret)
    now_step = totp.timecode(utcnow())
    for step in range(now_step - DRIFT_STEPS, now_step + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            if user.totp_last_step is not None and step <= user.totp_last_step:
                return None  # a code already used (replayed or read over a shoulder)
            return step
    return None


def accept(user: User, step: int, *, confirming: bool) -> None:
    """Remember the step of an accepted code; the first code confirms the enrolment."""
    reason = "second factor enrolled" if confirming else "second factor code accepted"
    with unit_of_work(Actor.of(user), Reason.system(reason)) as uow:
        user.totp_last_step = step
        if confirming:
            user.totp_confirmed_at = utcnow()
            uow.record("auth.second_factor_enrolled", "user", user.id, new=user.username)


def reset(actor: Actor, user: User, reason: Reason) -> None:
    """An administrator removes a lost second factor; a required one is enrolled again."""
    with unit_of_work(actor, reason) as uow:
        user.totp_secret, user.totp_confirmed_at, user.totp_last_step = None, None, None
        uow.record("auth.second_factor_reset", "user", user.id, new=user.username)
