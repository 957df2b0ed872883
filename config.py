"""Configuration classes: development (embedded SQLite), test, production (PostgreSQL).

Production refuses to start without an explicit SECRET_KEY and DATABASE_URL (21 CFR 11.10(d)).
"""

from __future__ import annotations

import os
from pathlib import Path

_SOURCE_TREE = Path(__file__).resolve().parent
#: where the embedded SQLite database lives: instance/ in a source checkout, else the working folder
INSTANCE_DIR = Path(os.environ.get(
    "ECRF_INSTANCE_DIR",
    (_SOURCE_TREE if (_SOURCE_TREE / "pyproject.toml").exists() else Path.cwd()) / "instance",
))


def normalise_database_url(url: str) -> str:
    """Accept ``postgresql://...`` as written and drive it with psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Config:
    ENV_NAME = "base"
    SECRET_KEY = None
    SQLALCHEMY_DATABASE_URI = f"sqlite:///{INSTANCE_DIR / 'ecrf.sqlite'}"
    # Migrations may run as a separate owner role (least privilege for the app role).
    MIGRATION_DATABASE_URL = None
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}

    # Accounts (21 CFR 11.300): all configurable, defaults from the Foundation requirements.
    PASSWORD_MIN_LENGTH = 12
    PASSWORD_HISTORY = 5
    LOGIN_MAX_FAILURES = 5
    # Minutes a locked account stays locked; 0 means until an administrator unlocks it.
    LOCKOUT_MINUTES = 30
    SESSION_IDLE_MINUTES = 30
    # How often (seconds) a session's last activity is written back; bounds write load.
    SESSION_TOUCH_SECONDS = 30

    # Refused password checks (login, second-factor code, signing), counted per client address
    # and per account in a store every app server shares (production: Redis), in limits'
    # notation ("10 per 5 minutes"). Only refusals count.
    RATELIMIT_ENABLED = True
    RATELIMIT_STORAGE_URI = "memory://"
    RATELIMIT_KEY_PREFIX = "ecrf"
    RATELIMIT_STRATEGY = "moving-window"
    RATELIMIT_HEADERS_ENABLED = True
    # the store unreachable: count in the app server's memory rather than refuse every login
    RATELIMIT_SWALLOW_ERRORS = True
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
    AUTH_RATE_LIMIT_PER_ADDRESS = "30 per 5 minutes"
    AUTH_RATE_LIMIT_PER_ACCOUNT = "10 per 5 minutes"
    # Second factor (TOTP, RFC 6238): optional for every user; the roles listed here must use it
    # (a holder of such a role enrols at the next login). Empty by default; see docs/security.md.
    TOTP_REQUIRED_ROLES: tuple[str, ...] = ()
    TOTP_ISSUER = "ecrf JAKAHDI"
    # Minutes between a correct password and its second-factor code.
    TOTP_PENDING_MINUTES = 5
    # Access review: an account without a login for this many days is reported as dormant.
    DORMANT_DAYS = 90

    # Reverse proxies (the TLS terminator) in front of the app whose X-Forwarded-For/-Proto/-Host
    # are trusted; 0 when clients connect directly. Wrong here, every client shares one address.
    PROXY_COUNT = 0
    # Strict-Transport-Security max-age (seconds) sent with every answer; 0 sends none.
    HSTS_SECONDS = 0

    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_NAME = "ecrf_session"
    WTF_CSRF_ENABLED = True
    WTF_CSRF_TIME_LIMIT = None  # the server-side session time-out bounds the token's life

    DEMO_PASSWORD = "Demo-JAKAHDI-2026"  # noqa: S105 (the DEMO study only; printed by make run)
    SUBJECTS_PER_PAGE = 50
    # Read-only API tokens: longest validity a user may choose (days); how often (seconds) a
    # token's last use is written back (bounds write load, like SESSION_TOUCH_SECONDS).
    API_TOKEN_DAYS = 90
    API_TOKEN_TOUCH_SECONDS = 60
    AUDIT_PER_PAGE = 50
    # Where web exports run: "auto" (a Procrastinate job on PostgreSQL, run by
    # `ecrf export worker`; a background thread of the app server on SQLite), "procrastinate"
    # or "thread".
    EXPORTS_QUEUE = "auto"


class DevelopmentConfig(Config):
    ENV_NAME = "development"
    SECRET_KEY = "dev-only-secret-not-for-production"  # noqa: S105 (development only)


class TestConfig(Config):
    ENV_NAME = "test"
    TESTING = True
    SECRET_KEY = "test-secret"  # noqa: S105 (test configuration only)
    SQLALCHEMY_DATABASE_URI = "sqlite://"
    WTF_CSRF_ENABLED = False  # tests that prove CSRF switch it back on
    ARGON2_PROFILE = "CHEAPEST"  # fast hashing for the suite; production uses RFC 9106
    #: web exports run in the request's thread in tests (one test runs the real background job)
    EXPORTS_RUN_INLINE = True
    #: the rate limits would count every test's logins together: the tests that prove them
    #: switch them on with a store of their own
    RATELIMIT_ENABLED = False


class ProductionConfig(Config):
    ENV_NAME = "production"
    SESSION_COOKIE_SECURE = True
    SESSION_COOKIE_SAMESITE = "Strict"
    PREFERRED_URL_SCHEME = "https"
    HSTS_SECONDS = 31536000  # served over TLS only: browsers must never fall back to http

    @staticmethod
    def check(app_config: dict, explicit: set[str]) -> None:
        """Refuse to start on defaults: an explicit secret and database are required, and the
        rate limits must be counted where every app server sees them."""
        missing = [name for name in ("SECRET_KEY", "DATABASE_URL") if name not in explicit]
        if missing:
            raise RuntimeError(
                "Production configuration refuses to start without: " + ", ".join(missing)
            )
        if app_config["RATELIMIT_ENABLED"] and app_config["RATELIMIT_STORAGE_URI"].startswith(
                "memory://"):
            raise RuntimeError(
                "Production configuration refuses to count login attempts in one server's "
                "memory: set ECRF_RATELIMIT_STORAGE_URI (e.g. redis://host:6379/0)")


#: environment variable -> (config key, converter); read when the app is created, not at import
ENVIRONMENT = {
    "SECRET_KEY": ("SECRET_KEY", str),
    "DATABASE_URL": ("SQLALCHEMY_DATABASE_URI", normalise_database_url),
    "MIGRATION_DATABASE_URL": ("MIGRATION_DATABASE_URL", str),
    "ECRF_PASSWORD_MIN_LENGTH": ("PASSWORD_MIN_LENGTH", int),
    "ECRF_PASSWORD_HISTORY": ("PASSWORD_HISTORY", int),
    "ECRF_LOGIN_MAX_FAILURES": ("LOGIN_MAX_FAILURES", int),
    "ECRF_LOCKOUT_MINUTES": ("LOCKOUT_MINUTES", int),
    "ECRF_SESSION_IDLE_MINUTES": ("SESSION_IDLE_MINUTES", int),
    "ECRF_DEMO_PASSWORD": ("DEMO_PASSWORD", str),
    "ECRF_RATELIMIT_STORAGE_URI": ("RATELIMIT_STORAGE_URI", str),
    "ECRF_AUTH_RATE_LIMIT_PER_ADDRESS": ("AUTH_RATE_LIMIT_PER_ADDRESS", str),
    "ECRF_AUTH_RATE_LIMIT_PER_ACCOUNT": ("AUTH_RATE_LIMIT_PER_ACCOUNT", str),
    "ECRF_TOTP_REQUIRED_ROLES": ("TOTP_REQUIRED_ROLES",
                                 lambda v: tuple(r.strip() for r in v.split(",") if r.strip())),
    "ECRF_DORMANT_DAYS": ("DORMANT_DAYS", int),
    "ECRF_PROXY_COUNT": ("PROXY_COUNT", int),
    "ECRF_HSTS_SECONDS": ("HSTS_SECONDS", int),
    "ECRF_API_TOKEN_DAYS": ("API_TOKEN_DAYS", int),
    "ECRF_EXPORTS_QUEUE": ("EXPORTS_QUEUE", str),
    "ECRF_EXPORTS_DIR": ("EXPORTS_DIR", str),
}


def from_environment(config_class: type[Config]) -> dict:
    """Settings given in the environment (the test configuration ignores it)."""
    if config_class is TestConfig:
        return {}
    return {key: convert(os.environ[name]) for name, (key, convert) in ENVIRONMENT.items()
            if os.environ.get(name)}


CONFIGS = {
    "development": DevelopmentConfig,
    "test": TestConfig,
    "production": ProductionConfig,
}


def config_from_env() -> type[Config]:
    return CONFIGS[os.environ.get("ECRF_CONFIG", "development")]
