"""Login, logout and one's own password."""

from __future__ import annotations

from flask import flash, g, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_user, logout_user

from ecrf.access.decorators import authenticated, public
from ecrf.auth import bp, services
from ecrf.auth.forms import ChangePasswordForm, LoginForm


def _fresh_session() -> None:
    """Clear the session (at login and logout), keeping only the language the user chose."""
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("main.index")


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    if getattr(g, "session_timed_out", False):
        flash(_("Your session ended after a period without activity. Please log in again."), "info")
    form = LoginForm()
    if form.validate_on_submit():
        result = services.login(form.username.data, form.password.data,
                                client=request.remote_addr, user_agent=request.user_agent.string)
        if result.ok:
            _fresh_session()  # a fresh session at login
            login_user(result.user)
            return redirect(_safe_next(request.args.get("next")))
        flash(result.message, "error")
        return render_template("auth/login.html", form=form), 401
    return render_template("auth/login.html", form=form)


@bp.route("/logout", methods=["POST"])
@authenticated
def logout():
    services.logout(current_user.session_token)
    logout_user()
    _fresh_session()
    flash(_("You are logged out."), "info")
    return redirect(url_for("auth.login"))


@bp.route("/password", methods=["GET", "POST"])
@authenticated
def change_password():
    form = ChangePasswordForm()
    problems: list[str] = []
    if form.validate_on_submit():
        problems = services.change_password(current_user, form.current.data, form.new.data,
                                            form.confirm.data)
        if not problems:
            flash(_("Your password is changed."), "info")
            return redirect(url_for("main.index"))
    status = 400 if problems else 200
    return render_template("auth/password.html", form=form, problems=problems,
                           forced=current_user.must_change_password), status
