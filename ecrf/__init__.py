"""ecrf: electronic case report forms with a tamper-evident audit trail."""

from __future__ import annotations

import uuid
from pathlib import Path

from flask import Flask, abort, g, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.routing import IntegerConverter

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


class KeyConverter(IntegerConverter):
    """``<int:...>`` in a URL: only what an id column can hold. A larger number names nothing
    (404) instead of reaching the database, which refuses it with a server error."""

    def __init__(self, map, fixed_digits=0, min=None, max=None, signed=False):  # noqa: A002
        from ecrf.database import MAX_ID

        super().__init__(map, fixed_digits=fixed_digits, min=min,
                         max=MAX_ID if max is None else max, signed=signed)


def create_app(config=None, **overrides) -> Flask:
    """Build the app: bind extensions, register blueprints, error handlers and the CLI."""
    import config as config_module
    from ecrf import models  # noqa: F401  (registers every table and the audit listeners)
    from ecrf.database import configure_engine
    from ecrf.extensions import babel, csrf, db, login_manager, migrate
    from ecrf.i18n import select_locale

    app = Flask(__name__, instance_path=str(config_module.INSTANCE_DIR))
    app.url_map.converters["int"] = KeyConverter  # before any route is added
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
    def _no_nul_character():
        """A NUL character in the URL or a form is refused (400) before anything reads it:
        PostgreSQL cannot hold it in text, SQLite would, and nobody types it."""
        texts = [v for v in (request.view_args or {}).values() if isinstance(v, str)]
        for source in (request.args, request.form):
            for key, value in source.items(multi=True):
                texts += (key, value)
        if any("\x00" in text for text in texts):
            abort(400)

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

    _register_database_outage(app)


#: seconds a client is asked to wait before retrying when the database cannot be reached
RETRY_AFTER_SECONDS = 5


def _register_database_outage(app: Flask) -> None:
    """503 when the database cannot be reached (down, restarting, connection lost, pool
    exhausted): a page or, under /api/, JSON, with Retry-After; one warning in the log.

    Nothing of the request was saved unless a commit had been sent: then the connection may
    have been lost after the database committed, and the page says so, since a user told
    "nothing was saved" would enter the same adverse event a second time."""
    import contextlib
    import logging

    import sqlalchemy as sa
    from flask import jsonify
    from flask_babel import gettext

    from ecrf.audit.unit_of_work import COMMIT_SENT
    from ecrf.extensions import db, login_manager

    log = logging.getLogger("ecrf.database")

    def unreachable(error: Exception) -> bool:
        if isinstance(error, sa.exc.DBAPIError):
            return isinstance(error, sa.exc.OperationalError) or error.connection_invalidated
        return isinstance(error, sa.exc.TimeoutError)  # no pooled connection came free

    def handler(error: Exception):
        if not unreachable(error):
            raise error  # a constraint or a programming error stays a server error
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            db.session.rollback()
        in_doubt = bool(request.environ.get(COMMIT_SENT))
        cause = str(getattr(error, "orig", None) or error).strip().splitlines()
        log.warning("database unreachable: %s %s -> 503 (%s%s: %s)", request.method,
                    request.path, type(error).__name__, ", commit in doubt" if in_doubt else "",
                    cause[0] if cause else "")
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if request.path.startswith("/api/"):  # read by programs: English, as the API's messages
            return jsonify({"error": "database_unavailable", "message": (
                "The database cannot be reached at the moment; nothing of this request was "
                "saved. Retry in a moment.")}), 503, headers
        # the page is drawn without the database: no user, no permission can be looked up
        g._login_user = login_manager.anonymous_user()
        if in_doubt:
            message = gettext(
                "The connection to the database was lost while this request was being saved, "
                "so it may have been saved. Wait a moment, then submit the same page again "
                "(reload it, or go back and submit): a form already saved is recognised and not "
                "saved twice. Do not enter it again in a new form.")
        else:
            message = gettext("The database cannot be reached at the moment. Nothing of this "
                              "request was saved. Please try again in a moment.")
        return render_template("error.html", status=503, title=gettext("Database unavailable"),
                               message=message), 503, headers

    for kind in (sa.exc.DBAPIError, sa.exc.TimeoutError):
        app.register_error_handler(kind, handler)

    @app.teardown_appcontext
    def _end_transaction_on_a_lost_connection(_error):
        """Runs before Flask-SQLAlchemy's own teardown (registered earlier). The request's
        answer is ready (a page read, a save committed); if ending its transaction fails
        because the database dropped the connection, nothing was pending (the engine has
        already discarded the dropped connection): the answer must not become a server error."""
        try:
            db.session.close()
        except (sa.exc.DBAPIError, sa.exc.TimeoutError) as e:
            if not unreachable(e):
                raise
            log.warning("database connection lost while ending a transaction (nothing "
                        "pending): %s", str(getattr(e, "orig", None) or e).strip().splitlines()[0])
