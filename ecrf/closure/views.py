"""Freeze and lock pages: the state of the study, of each site and of frozen or locked subjects,
and one POST endpoint per action, each with its own permission."""

from __future__ import annotations

import sqlalchemy as sa
from flask import flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ecrf.access.decorators import requires
from ecrf.access.grants import Access
from ecrf.access.scoping import site_or_404, sites_for, subject_or_404
from ecrf.audit.reasons import Reason
from ecrf.closure import bp
from ecrf.database import parse_key
from ecrf.extensions import db
from ecrf.i18n import tr
from ecrf.review import closure
from ecrf.review.models import ClosureState


@bp.route("")
@requires("subject.view")
def overview():
    states = closure.overview()
    sites = sites_for()
    site_ids = {s.id for s in sites}
    subjects = [s for s in db.session.scalars(
        sa.select(ClosureState).where(ClosureState.level == "subject",
                                      sa.or_(ClosureState.frozen, ClosureState.locked))
        .order_by(ClosureState.subject_id)) if s.subject.site_id in site_ids]
    allowed = {a: bool(Access.for_user(g.access.user, f"closure.{a}")) for a in closure.ACTIONS}
    return render_template("closure/overview.html", states=states, sites=sites,
                           subjects=subjects, allowed=allowed)


def _scope_from_form() -> closure.Scope:
    level = request.form.get("level", "")
    if level == "subject":
        return closure.Scope.of_subject(subject_or_404(request.form.get("subject", "")))
    if level == "site":
        site_id = request.form.get("site", "")
        return closure.Scope.of_site(site_or_404(parse_key(site_id) or 0))
    if level == "study" and g.access.study_wide:
        return closure.Scope.study()
    from ecrf.access.decorators import refuse

    refuse(403, "the study is closed only by a study-wide role")


def _action_view(action: str):
    def view():
        scope = _scope_from_form()
        text = request.form.get("reason_text", "").strip()
        reason = Reason("other", text) if text else None
        site_id = scope.site.id if scope.site is not None else None
        try:
            closure.change(g.access.actor(site_id), scope, action, reason)
        except closure.ClosureChangeError as e:
            flash(tr(e.args[0]), "error")
        else:
            flash({"freeze": _("%(scope)s is frozen.", scope=tr(scope.describe())),
                   "unfreeze": _("%(scope)s is no longer frozen.", scope=tr(scope.describe())),
                   "lock": _("%(scope)s is locked.", scope=tr(scope.describe())),
                   "unlock": _("%(scope)s is no longer locked.", scope=tr(scope.describe()))}[action],
                  "info")
        target = request.form.get("next", "")
        if not target.startswith("/") or target.startswith(("//", "/\\")):
            target = url_for("closure.overview")
        return redirect(target)

    view.__name__ = action
    view.__doc__ = f"{action.capitalize()} the study, a site or a subject."
    bp.add_url_rule(f"/{action}", action, requires(f"closure.{action}")(view), methods=["POST"])


for _action in closure.ACTIONS:
    _action_view(_action)
