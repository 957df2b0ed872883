"""Load objects for the current request within the user's sites (other sites' objects -> 404)."""

from __future__ import annotations

import sqlalchemy as sa
from flask import g

from ecrf.access.decorators import refuse
from ecrf.extensions import db
from ecrf.study.models import Site, Subject


def visible(stmt: sa.Select, site_column) -> sa.Select:
    """Restrict a query to the sites through which the request's permission is held."""
    site_ids = g.access.site_ids()
    return stmt if site_ids is None else stmt.where(site_column.in_(site_ids))


def subject_or_404(code: str) -> Subject:
    subject = db.session.scalar(sa.select(Subject).where(Subject.code == code))
    if subject is None:
        refuse(404, f"subject {code[:16]!r} not found")
    if not g.access.covers(subject.site_id):
        refuse(404, f"subject {subject.code} is on a site not granted")
    return subject


def site_or_404(site_id: int) -> Site:
    site = db.session.get(Site, site_id)
    if site is None or not g.access.covers(site.id):
        refuse(404, f"site {site_id} not granted")
    return site


def sites_for(access=None) -> list[Site]:
    """Sites covered by an access (default: the request's)."""
    site_ids = (access or g.access).site_ids()
    stmt = sa.select(Site).order_by(Site.code)
    if site_ids is not None:
        stmt = stmt.where(Site.id.in_(site_ids))
    return list(db.session.scalars(stmt))
