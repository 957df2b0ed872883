"""Login, logout and one's own password."""

from __future__ import annotations

from datetime import timedelta

from flask import current_app, flash, g, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_user, logout_user

from ecrf.access.decorators import authenticated, public
from ecrf.auth import bp, second_factor, services
from ecrf.auth.forms import ChangePasswordForm, CodeForm, LoginForm
from ecrf.auth.models import User
from ecrf.auth.ratelimit import checks_password
from ecrf.database import utcnow
from ecrf.extensions import db


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
@checks_password()
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
        if result.second_factor:
            _fresh_session()
            session["pending_login"] = {"user": result.user.id, "at": utcnow().timestamp(),
                                        "next": _safe_next(request.args.get("next"))}
            return redirect(url_for("auth.second_factor_step"))
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


def _pending_user() -> User | None:
    """The account whose password was accepted a few minutes ago and whose code is due."""
    pending = session.get("pending_login")
    if not pending:
        return None
    minutes = current_app.config["TOTP_PENDING_MINUTES"]
    if utcnow().timestamp() - pending["at"] > timedelta(minutes=minutes).total_seconds():
        session.pop("pending_login", None)
        return None
    user = db.session.get(User, pending["user"])
    if user is None or not user.is_active or user.locked_at is not None or user.expired():
        session.pop("pending_login", None)
        return None
    return user


def _accepted_code(user: User, form: CodeForm, *, confirming: bool) -> bool:
    """Check a posted code: accepted (and remembered), or refused, counted toward the lockout
    and said to the user."""
    step = second_factor.matching_step(user, form.code.data)
    if step is None:
        services.count_failure(user, purpose="second factor",
                               failure_action="auth.second_factor_failed", what="wrong code")
        flash(_("The code is wrong or was already used. Type the code your app shows now."),
              "error")
        return False
    second_factor.accept(user, step, confirming=confirming)
    return True


def _code_page(form: CodeForm, user: User, status: int, *, enrolling: bool):
    form.code.data = ""
    return render_template("auth/second_factor.html", form=form, user=user, enrolling=enrolling,
                           qr=second_factor.qr_svg(user) if enrolling else None), status


@bp.route("/second-factor", methods=["GET", "POST"])
@public
@checks_password("pending")
def second_factor_step():
    """The code after the password; a role that requires a second factor enrols here first."""
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    user = _pending_user()
    if user is None:
        flash(_("Log in again: the code was not given in time, or the account is locked."), "error")
        return redirect(url_for("auth.login"))
    enrolling = not second_factor.enrolled(user)
    if enrolling and user.totp_secret is None:
        second_factor.start_enrolment(user)
    form = CodeForm()
    if not form.validate_on_submit():
        return _code_page(form, user, 200, enrolling=enrolling)
    if not _accepted_code(user, form, confirming=enrolling):
        if user.locked_at is not None:
            session.pop("pending_login", None)
            return redirect(url_for("auth.login"))
        return _code_page(form, user, 401, enrolling=enrolling)
    services.start_session(user, client=request.remote_addr, user_agent=request.user_agent.string)
    target = session["pending_login"]["next"]
    _fresh_session()
    login_user(user)
    return redirect(_safe_next(target))


@bp.route("/second-factor/setup", methods=["GET", "POST"])
@authenticated
@checks_password("signed-in")
def second_factor_setup():
    """Any user may add a second factor to their account."""
    if second_factor.enrolled(current_user):
        return render_template("auth/second_factor.html", user=current_user, enrolled=True,
                               form=None, enrolling=False, qr=None)
    if current_user.totp_secret is None:
        second_factor.start_enrolment(current_user)
    form = CodeForm()
    if not form.validate_on_submit():
        return _code_page(form, current_user, 200, enrolling=True)
    if not _accepted_code(current_user, form, confirming=True):
        return _code_page(form, current_user, 401, enrolling=True)
    flash(_("Your second factor is set: each login now asks for a code."), "info")
    return redirect(url_for("main.index"))
