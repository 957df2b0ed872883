"""Rate limits of password checks: logins, second-factor codes and signings (21 CFR 11.300(d)).

Counted per client address and per account in the store named by ``RATELIMIT_STORAGE_URI``:
Redis in production, so every app server counts the same attempts; memory on the embedded
single-process default. Only refused attempts count, so a user who types the right password is
never slowed down, and a window is minutes long: an attacker cannot keep an account shut for a
night (the lockout itself lifts after ``LOCKOUT_MINUTES``). If the store is unreachable, counting
falls back to the app server's memory rather than refusing every login.
"""

from __future__ import annotations

from flask import Flask, current_app, render_template, request, session
from flask_babel import gettext
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import current_user

from ecrf.i18n import N_

#: the mark a view carries when it checks a password: whose account the attempt names
_MARK = "_ecrf_password_check"

RETRY_MESSAGE = N_("Too many attempts. Wait a few minutes before trying again; if you cannot "
                   "log in, an administrator can help.")


def _refused(response) -> bool:
    """Count an attempt only when it was refused (a success redirects or answers 200)."""
    return response.status_code >= 400


def _posted_account() -> str:
    return "account:" + (request.form.get("username") or "").strip().lower()[:64]


def _signed_in_account() -> str:
    return "account:" + (current_user.username if current_user.is_authenticated else "-").lower()


def _pending_account() -> str:
    pending = session.get("pending_login") or {}
    return f"account-id:{pending.get('user', '-')}"


ACCOUNT_KEYS = {"posted": _posted_account, "signed-in": _signed_in_account,
                "pending": _pending_account}


def checks_password(account: str = "posted"):
    """Mark a view that checks a password: its POSTs are limited when the app is built.

    ``account`` says where the attempt's account comes from: the posted username (login), the
    signed-in user (signing, enrolling a second factor) or the login waiting for its code."""
    def mark(view):
        setattr(view, _MARK, ACCOUNT_KEYS[account])
        return view
    return mark


def _setting(name: str):
    return lambda: current_app.config[name]


def init_app(app: Flask) -> Limiter:
    """One limiter per app, applied to every marked view (after the blueprints)."""
    limiter = Limiter(get_remote_address, app=app)
    app.extensions["ecrf.limiter"] = limiter
    for endpoint, view in list(app.view_functions.items()):
        account_key = getattr(view, _MARK, None)
        if account_key is None:
            continue
        by_account = limiter.limit(_setting("AUTH_RATE_LIMIT_PER_ACCOUNT"), methods=["POST"],
                                   key_func=account_key, deduct_when=_refused,
                                   scope="password-account", error_message=RETRY_MESSAGE)
        by_address = limiter.limit(_setting("AUTH_RATE_LIMIT_PER_ADDRESS"), methods=["POST"],
                                   deduct_when=_refused, scope="password-address",
                                   error_message=RETRY_MESSAGE)
        app.view_functions[endpoint] = by_address(by_account(view))

    @app.errorhandler(429)
    def _too_many(_error):
        return render_template("error.html", status=429, title=gettext("Too many attempts"),
                               message=gettext(RETRY_MESSAGE)), 429

    return limiter
