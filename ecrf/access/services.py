"""Granting and revoking roles; every change is an audit record (EU Annex 11 §12, E6 4.2.2a)."""

from __future__ import annotations

from datetime import datetime

from flask_babel import gettext as _

from ecrf.access.models import Grant
from ecrf.access.roles import ROLES
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.database import utcnow
from ecrf.extensions import db


class GrantError(ValueError):
    pass


def grant_role(actor: Actor, user, role: str, site=None, *, valid_from: datetime | None = None,
               valid_to: datetime | None = None, reason: Reason | None = None) -> Grant:
    """Give ``user`` a role, on ``site`` for site-scoped roles, for a period."""
    if role not in ROLES:
        raise GrantError(_("Unknown role %(role)s; roles are: %(roles)s.", role=repr(role),
                           roles=", ".join(ROLES)))
    if user.is_system:
        raise GrantError(_("System accounts hold no roles."))
    if ROLES[role].site_scoped and site is None:
        raise GrantError(_("The role %(role)s acts on sites: choose a site.", role=role))
    if not ROLES[role].site_scoped and site is not None:
        raise GrantError(_("The role %(role)s is study-wide: it takes no site.", role=role))
    valid_from = valid_from or utcnow()
    if valid_to is not None and valid_to <= valid_from:
        raise GrantError(_("A grant must end after it starts."))
    with unit_of_work(actor, reason or Reason.system("role granted")):
        grant = Grant(user=user, role=role, site=site, valid_from=valid_from, valid_to=valid_to)
        db.session.add(grant)
    return grant


def revoke_grant(actor: Actor, grant: Grant, reason: Reason) -> None:
    if grant.revoked_at is not None:
        raise GrantError(_("This grant is already revoked."))
    with unit_of_work(actor, reason):
        grant.revoked_at = utcnow()
