"""Accounts, grants and sites. Administrators see no clinical data."""

from __future__ import annotations

from datetime import UTC
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from flask import Response, abort, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ecrf.access import services as access_services
from ecrf.access.decorators import requires
from ecrf.access.models import Grant
from ecrf.admin import access_review, bp
from ecrf.admin.forms import ConfirmForm, ExpiryForm, GrantForm, ReasonForm, SiteForm, UserForm
from ecrf.auth import second_factor
from ecrf.auth import services as auth_services
from ecrf.auth.models import User
from ecrf.database import parse_key
from ecrf.extensions import db
from ecrf.forms.choices import choices
from ecrf.i18n import N_
from ecrf.study import services as study_services
from ecrf.study.models import Site


def _user_or_404(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None or user.is_system:
        abort(404)
    return user


def _sites() -> list[Site]:
    return list(db.session.scalars(sa.select(Site).order_by(Site.code)))


@bp.route("/users")
@requires("users.manage")
def list_users():
    users = db.session.scalars(
        sa.select(User).where(User.is_system.is_(False)).order_by(User.username)).all()
    return render_template("admin/users.html", users=users, form=UserForm())


@bp.route("/users", methods=["POST"])
@requires("users.manage")
def create_user():
    form = UserForm()
    if form.validate_on_submit():
        try:
            user, temp = auth_services.create_user(
                g.access.actor(), username=form.username.data, full_name=form.full_name.data,
                email=form.email.data)
        except auth_services.AccountError as e:
            form.username.errors = [*form.username.errors, str(e)]
        else:
            return render_template("admin/temporary_password.html", user=user, password=temp)
    users = db.session.scalars(
        sa.select(User).where(User.is_system.is_(False)).order_by(User.username)).all()
    return render_template("admin/users.html", users=users, form=form), 400


@bp.route("/users/<int:user_id>")
@requires("users.manage")
def view_user(user_id: int):
    user = _user_or_404(user_id)
    grant_form = GrantForm()
    grant_form.site.choices = choices([("", "—")] + [(s.id, f"{s.code} {s.name}") for s in _sites()])
    expiry_form = ExpiryForm(expires_at=user.expires_at.replace(tzinfo=None)
                             if user.expires_at else None)
    return render_template("admin/user.html", user=user, grant_form=grant_form,
                           reason_form=ReasonForm(), expiry_form=expiry_form)


def _reasoned_action(user_id: int, action, done: str):
    user = _user_or_404(user_id)
    form = ReasonForm()
    if not form.validate_on_submit():
        flash(_("A reason is required: %(problems)s",
                problems="; ".join(str(e) for errs in form.errors.values() for e in errs)), "error")
        return redirect(url_for("admin.view_user", user_id=user.id))
    try:
        result = action(g.access.actor(), user, form.reason())
    except auth_services.AccountError as e:
        flash(str(e), "error")
        return redirect(url_for("admin.view_user", user_id=user.id))
    if isinstance(result, str):
        return render_template("admin/temporary_password.html", user=user, password=result)
    flash(_(done, user=user.username), "info")
    return redirect(url_for("admin.view_user", user_id=user.id))


@bp.route("/users/<int:user_id>/deactivate", methods=["POST"])
@requires("users.manage")
def deactivate_user(user_id: int):
    return _reasoned_action(user_id, auth_services.deactivate_user, N_("%(user)s is deactivated."))


@bp.route("/users/<int:user_id>/unlock", methods=["POST"])
@requires("users.manage")
def unlock_user(user_id: int):
    return _reasoned_action(user_id, auth_services.unlock_user, N_("%(user)s is unlocked."))


@bp.route("/users/<int:user_id>/reset-password", methods=["POST"])
@requires("users.manage")
def reset_password(user_id: int):
    return _reasoned_action(user_id, auth_services.reset_password, "")


@bp.route("/users/<int:user_id>/reset-second-factor", methods=["POST"])
@requires("users.manage")
def reset_second_factor(user_id: int):
    """A lost phone: the second factor is removed; a role that requires one enrols again."""
    return _reasoned_action(user_id, second_factor.reset,
                            N_("%(user)s has no second factor now."))


@bp.route("/users/<int:user_id>/expiry", methods=["POST"])
@requires("users.manage")
def set_expiry(user_id: int):
    user = _user_or_404(user_id)
    form = ExpiryForm()
    if not form.validate_on_submit():
        flash(_("The end date could not be read: %(problems)s",
                problems="; ".join(str(e) for errs in form.errors.values() for e in errs)), "error")
        return redirect(url_for("admin.view_user", user_id=user.id))
    when = form.expires_at.data.replace(tzinfo=UTC) if form.expires_at.data else None
    try:
        auth_services.set_expiry(g.access.actor(), user, when, form.reason())
    except auth_services.AccountError as e:
        flash(str(e), "error")
    else:
        flash(_("%(user)s expires on %(date)s UTC.", user=user.username,
                date=f"{when:%Y-%m-%d %H:%M}") if when else
              _("%(user)s has no end date.", user=user.username), "info")
    return redirect(url_for("admin.view_user", user_id=user.id))


@bp.route("/access-review")
@requires("users.manage")
def access_review_report():
    """Who holds which role, who logged in when, and which accounts are dormant (P11-10d)."""
    report = access_review.build()
    if request.args.get("format") == "csv":
        return Response(access_review.to_csv(report), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="access-review-{report.at:%Y%m%d}.csv"'})
    return render_template("admin/access_review.html", report=report)


@bp.route("/users/<int:user_id>/grants", methods=["POST"])
@requires("users.manage")
def add_grant(user_id: int):
    user = _user_or_404(user_id)
    form = GrantForm()
    form.site.choices = choices([("", "—")] + [(s.id, s.code) for s in _sites()])
    if form.validate_on_submit():
        site_id = parse_key(form.site.data) if form.site.data else None
        site = db.session.get(Site, site_id) if site_id is not None else None
        if form.site.data and site is None:
            flash(_("The grant could not be read: choose a site from the list."), "error")
            return redirect(url_for("admin.view_user", user_id=user.id))
        when = [d.replace(tzinfo=UTC) if d else None for d in (form.valid_from.data,
                                                               form.valid_to.data)]
        try:
            access_services.grant_role(g.access.actor(), user, form.role.data, site,
                                       valid_from=when[0], valid_to=when[1])
            flash(_("%(user)s now holds the role %(role)s.", user=user.username, role=form.role.data),
                  "info")
        except access_services.GrantError as e:
            flash(str(e), "error")
    else:
        flash(_("The grant could not be read: check the dates."), "error")
    return redirect(url_for("admin.view_user", user_id=user.id))


@bp.route("/grants/<int:grant_id>/revoke", methods=["POST"])
@requires("users.manage")
def revoke_grant(grant_id: int):
    grant = db.session.get(Grant, grant_id) or abort(404)
    form = ReasonForm()
    if form.validate_on_submit():
        try:
            access_services.revoke_grant(g.access.actor(), grant, form.reason())
            flash(_("The grant is revoked."), "info")
        except access_services.GrantError as e:
            flash(str(e), "error")
    else:
        flash(_("A reason is required to revoke a grant."), "error")
    return redirect(url_for("admin.view_user", user_id=grant.user_id))


@bp.route("/sites")
@requires("sites.manage")
def list_sites():
    return render_template("admin/sites.html", sites=_sites(), form=SiteForm(),
                           confirm=ConfirmForm())


@bp.route("/sites", methods=["POST"])
@requires("sites.manage")
def create_site():
    form = SiteForm()
    if form.validate_on_submit():
        try:
            ZoneInfo(form.timezone.data)
            study_services.create_site(g.access.actor(), form.code.data, form.name.data,
                                       form.timezone.data)
            flash(_("Site %(code)s is created; activate it to enrol.", code=form.code.data), "info")
            return redirect(url_for("admin.list_sites"))
        except (study_services.StudyError, ZoneInfoNotFoundError, ValueError) as e:
            form.code.errors = [*form.code.errors, str(e) or _("Unknown time zone.")]
    return render_template("admin/sites.html", sites=_sites(), form=form,
                           confirm=ConfirmForm()), 400


@bp.route("/sites/<int:site_id>/activate", methods=["POST"])
@requires("sites.manage")
def activate_site(site_id: int):
    site = db.session.get(Site, site_id) or abort(404)
    if ConfirmForm().validate_on_submit():
        try:
            study_services.activate_site(g.access.actor(), site)
            flash(_("Site %(code)s is activated.", code=site.code), "info")
        except study_services.StudyError as e:
            flash(str(e), "error")
    return redirect(url_for("admin.list_sites"))
