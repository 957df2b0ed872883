"""One access rule per endpoint, declared on the view and checked on the server for every request.

``@requires("subject.view")`` needs a logged-in user holding the permission through an active
grant; ``@authenticated`` any logged-in user; ``@public`` nobody. A test walks the URL map and
fails on any endpoint without a rule. Refusals are recorded in the audit trail (security log).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from flask import abort, g, request
from flask_login import current_user

from ecrf.access.grants import Access
from ecrf.access.roles import PERMISSIONS
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.extensions import db, login_manager

security_log = logging.getLogger("ecrf.security")


@dataclass(frozen=True)
class AccessRule:
    kind: str  # "public", "authenticated" or "permission"
    permission: str | None = None


def _mark(view, rule: AccessRule):
    view.access_rule = rule
    return view


def public(view):
    """Open to anyone, logged in or not (login page, static files, health check)."""
    return _mark(view, AccessRule("public"))


def authenticated(view):
    """Any logged-in user, whatever their grants (home, own password, logout)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        return view(*args, **kwargs)

    return _mark(wrapper, AccessRule("authenticated"))


def requires(permission: str):
    """The user must hold ``permission`` through an active grant; ``g.access`` says where."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            access = Access.for_user(current_user, permission)
            if not access:
                refuse(403, f"permission {permission} not held")
            g.access = access
            return view(*args, **kwargs)

        return _mark(wrapper, AccessRule("permission", permission))

    return decorator


def refuse(status: int, detail: str):
    """Record the refused attempt, then answer 403 or 404 (404 hides other sites' objects)."""
    record_refusal(detail)
    abort(status)


def record_refusal(detail: str) -> None:
    user = current_user._get_current_object()
    security_log.warning("refused %s %s for %s: %s", request.method, request.path,
                         getattr(user, "username", "anonymous"), detail)
    db.session.rollback()  # nothing of the refused request may be written with the record
    with unit_of_work(Actor.of(user), Reason.system("access refused")) as uow:
        uow.record("access.denied", "request", None, field=request.endpoint,
                   new=f"{request.method} {request.path[:200]}: {detail}")
