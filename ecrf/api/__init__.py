"""The read-only JSON API (/api/v1) and the pages where users manage their own API tokens.

The API authenticates each request with a bearer token (no session, hence no CSRF: it answers
GET only) and acts with the token owner's grants of the moment, scoped like the pages.
"""

from flask import Blueprint

from ecrf.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")
#: one's own tokens: list, create (shown once), revoke
tokens_bp = Blueprint("api_tokens", __name__, url_prefix="/account/api-tokens")

csrf.exempt(bp)  # bearer-token authentication, GET only: no cookie a forged request could ride on

from ecrf.api import account, views  # noqa: E402,F401
