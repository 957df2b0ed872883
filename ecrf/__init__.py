"""ecrf: electronic case report forms with a tamper-evident audit trail."""

from __future__ import annotations

import uuid
from pathlib import Path

from flask import Flask, g, redirect, render_template, request, url_for
from flask_login import current_user

__version__ = "0.1.0"

def _migrations_dir() -> str:
    """The repository's migrations/, or the copy installed beside the package."""
    import importlib.util

    spec = importlib.util.find_spec("migrations")
    if spec is not None and spec.origin:
        return str(Path(spec.origin).parent)
    return str(Path(__file__).resolve().parent.parent / "migrations")


MIGRATIONS_DIR = _migrations_dir()

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'; frame-ancestors 'none'"
)


def create_app(config=None, **overrides) -> Flask:
    """Build the app: bind extensions, register blueprints, error handlers and the CLI."""
    import config as config_module
    from ecrf import models  # noqa: F401  (registers every table and the audit listeners)
    from ecrf.database import configure_engine
    from ecrf.extensions import babel, csrf, db, login_manager, migrate
    from ecrf.i18n import select_locale

    app = Flask(__name__, instance_path=str(config_module.INSTANCE_DIR))
    config = config or config_module.config_from_env()
    if isinstance(config, str):
        config = config_module.CONFIGS[config]
    app.config.from_object(config)
    environment = config_module.from_environment(config)
    app.config.update(environment)
    if "DATABASE_URL" in overrides:
        overrides["SQLALCHEMY_DATABASE_URI"] = config_module.normalise_database_url(
            overrides.pop("DATABASE_URL"))
    app.config.update(overrides)
    if config is config_module.ProductionConfig:
        given = set(environment) | set(overrides)
        explicit = {"SECRET_KEY"} & given
        explicit |= {"DATABASE_URL"} if "SQLALCHEMY_DATABASE_URI" in given else set()
        config.check(app.config, explicit)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///"):
        Path(app.config["SQLALCHEMY_DATABASE_URI"][len("sqlite:///"):]).parent.mkdir(
            parents=True, exist_ok=True)

    if app.config["PROXY_COUNT"]:
        # behind the TLS proxy: the client's address (rate limits, the audit trail's client) and
        # scheme come from the proxies' X-Forwarded-* headers, trusted for this many hops only
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = app.config["PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR)
    csrf.init_app(app)
    babel.init_app(app, locale_selector=select_locale, default_translation_directories=str(
        Path(__file__).resolve().parent / "translations"))
    _init_login(app, login_manager)
    _load_study(app)
    _register_blueprints(app)
    from ecrf.auth import ratelimit

    ratelimit.init_app(app)  # after the blueprints: it limits the views that check passwords
    _register_hooks(app)
    _register_errors(app)

    from ecrf.cli import register_commands

    register_commands(app)
    return app


def _load_study(app: Flask) -> None:
    """Load and validate the CRF definitions and the schedule; a bad one stops the app here."""
    from ecrf.forms import registry
    from ecrf.study.schedule import SCHEDULE

    app.extensions["ecrf.registry"] = registry.load(
        app.config.get("CRF_MODULES"), app.config.get("SCHEDULE") or SCHEDULE,
        app.config.get("EXTRA_CRF_MODULES", ()))


def _init_login(app: Flask, login_manager) -> None:
    from flask_babel import gettext

    from ecrf.auth.services import load_session
    from ecrf.i18n import N_

    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = N_("Please log in.")
    login_manager.localize_callback = gettext
    login_manager.session_protection = "basic"

    @login_manager.user_loader
    def _load(token: str):
        user, why = load_session(token)
        if why == "timeout":
            g.session_timed_out = True
        return user


def _register_blueprints(app: Flask) -> None:
    from ecrf.admin import bp as admin_bp
    from ecrf.audit.views import bp as audit_bp
    from ecrf.auth import bp as auth_bp
    from ecrf.casebook import bp as casebook_bp
    from ecrf.closure import bp as closure_bp
    from ecrf.exports import bp as exports_bp
    from ecrf.i18n import bp as i18n_bp
    from ecrf.main import bp as main_bp
    from ecrf.sdv import bp as sdv_bp
    from ecrf.subjects import bp as subjects_bp

    for bp in (main_bp, auth_bp, i18n_bp, admin_bp, subjects_bp, casebook_bp, audit_bp, closure_bp,
               exports_bp):
        app.register_blueprint(bp)
    app.register_blueprint(sdv_bp)
    from ecrf.signatures import bp as signatures_bp

    app.register_blueprint(signatures_bp)
    from ecrf.queries import bp as queries_bp

    app.register_blueprint(queries_bp)
    from ecrf.api import bp as api_bp
    from ecrf.api import tokens_bp as api_tokens_bp

    app.register_blueprint(api_bp)
    app.register_blueprint(api_tokens_bp)
    from ecrf.access.decorators import public

    public(app.view_functions["static"])


def _register_hooks(app: Flask) -> None:
    from ecrf.access.grants import Access
    from ecrf.access.roles import ROLES

    @app.before_request
    def _request_id():
        request.environ["ecrf.request_id"] = str(uuid.uuid4())

    @app.before_request
    def _change_control():
        """Once per process: record a new study definition in the audit trail."""
        if not app.extensions.get("ecrf.definition_recorded"):
            from ecrf.study.change_control import record_if_changed

            record_if_changed()
            app.extensions["ecrf.definition_recorded"] = True

    @app.before_request
    def _force_password_change():
        if request.endpoint in ("auth.change_password", "auth.logout", "static", "main.health"):
            return None
        if current_user.is_authenticated and current_user.must_change_password:
            return redirect(url_for("auth.change_password"))
        return None

    @app.after_request
    def _security_headers(response):
        h = response.headers
        h["Content-Security-Policy"] = CSP
        h["X-Content-Type-Options"] = "nosniff"
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "same-origin"
        h["Cache-Control"] = h.get("Cache-Control", "no-store")
        if app.config["HSTS_SECONDS"]:
            h["Strict-Transport-Security"] = f"max-age={app.config['HSTS_SECONDS']}"
        return response

    @app.context_processor
    def _helpers():
        def can(permission: str) -> bool:
            """Asked many times while one page renders: the answer is kept for the request."""
            if not current_user.is_authenticated:
                return False
            held = g.setdefault("template_permissions", {})
            key = (current_user.get_id(), permission)
            if key not in held:
                held[key] = bool(Access.for_user(current_user, permission))
            return held[key]

        from flask_babel import get_locale

        from ecrf.casebook.models import FORM_STATUS_LABELS
        from ecrf.i18n import LANGUAGES, tr, visit_title
        from ecrf.study.models import status_label

        def form_status_label(code: str) -> str:
            return str(FORM_STATUS_LABELS.get(code, code.replace("_", " ")))

        return {"can": can, "ROLES": ROLES, "endpoints": app.view_functions,
                "app_version": __version__, "LANGUAGES": LANGUAGES,
                "current_language": str(get_locale()), "tr": tr, "visit_title": visit_title,
                "subject_status_label": status_label, "form_status_label": form_status_label}


def _register_errors(app: Flask) -> None:
    from flask_babel import gettext

    from ecrf.i18n import N_

    def page(status: int, title: str, message: str):
        def handler(_error):
            return render_template("error.html", status=status, title=gettext(title),
                                   message=gettext(message)), status
        return handler

    app.register_error_handler(400, page(400, N_("Bad request"), N_("The request could not be read.")))
    app.register_error_handler(403, page(403, N_("Not allowed"),
                                         N_("Your role does not allow this action.")))
    app.register_error_handler(404, page(404, N_("Not found"), N_("There is nothing here for you.")))
    app.register_error_handler(405, page(405, N_("Not allowed"),
                                         N_("This method is not allowed here.")))

    from ecrf.extensions import db
    from ecrf.i18n import tr
    from ecrf.review.closure import ClosedError

    @app.errorhandler(ClosedError)
    def _closed(error: ClosedError):
        """A write refused by freeze or lock, whatever the page: say why, nothing was saved."""
        db.session.rollback()
        return render_template("error.html", status=409, title=gettext("Not saved"),
                               message=tr(error.message)), 409
