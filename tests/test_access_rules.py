"""Access rules: every endpoint declares one, and the server applies it to every role on every request.

``test_walk`` sends a real request to every (method, endpoint) of the URL map as every role, as the
other site's investigator and as an anonymous visitor, and checks the answer against the matrix
derived from ``ROLES``: allowed, refused (403, recorded), another site's object (404, recorded) or
not logged in (302 to the login page). Each (actor, endpoint) pair is a test case of its own on a
rolled-back database, so every state-changing POST (deactivate, revoke, enrol, ...) acts on the same
fresh world, and its effect is checked: done when allowed, nothing changed when refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from flask import Blueprint, Flask, url_for

from ecrf import create_app
from ecrf.access.decorators import AccessRule, requires
from ecrf.access.models import Grant
from ecrf.access.roles import PERMISSIONS, ROLES
from ecrf.access.services import grant_role, revoke_grant
from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.auth.models import User
from ecrf.auth.services import system_actor
from ecrf.casebook.models import FormInstance
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.database import utcnow
from ecrf.exports.models import ApiToken
from ecrf.extensions import db as _db
from ecrf.review import closure
from ecrf.review.delegation import site_today
from ecrf.review.models import ClosureState, DelegationEntry
from ecrf.study.models import ScreeningEntry, Site, Subject
from tests.factories import PASSWORD, audit_rows, without_csrf_token

RULE_KINDS = {"public", "authenticated", "permission"}


# --- (a) every endpoint declares its rule -----------------------------------------------------


def endpoints_without_rule(app: Flask) -> list[str]:
    """Endpoints of the URL map whose view declares no valid access rule."""
    missing = set()
    for rule in app.url_map.iter_rules():
        declared = getattr(app.view_functions[rule.endpoint], "access_rule", None)
        valid = (isinstance(declared, AccessRule) and declared.kind in RULE_KINDS
                 and (declared.kind != "permission" or declared.permission in PERMISSIONS))
        if not valid:
            missing.add(rule.endpoint)
    return sorted(missing)


@pytest.mark.requirement("P11-10d")
def test_every_endpoint_of_the_url_map_declares_an_access_rule(app):
    assert len(list(app.url_map.iter_rules())) > 10  # the real map, not an empty one
    assert endpoints_without_rule(app) == []


@pytest.mark.requirement("P11-10d")
def test_the_rule_check_reports_a_route_added_without_a_rule():
    throwaway = create_app("test", DATABASE_URL="sqlite://")
    forgotten = Blueprint("forgotten", __name__, url_prefix="/forgotten")

    @forgotten.route("/page")
    def page():
        return "no rule"

    @forgotten.route("/ruled")
    @requires("subject.view")
    def ruled():
        return "ruled"

    throwaway.register_blueprint(forgotten)
    throwaway.add_url_rule("/bare", "bare", lambda: "no rule either")
    assert endpoints_without_rule(throwaway) == ["bare", "forgotten.page"]
    assert endpoints_without_rule(Flask("plain")) == ["static"]  # Flask's own static route


# --- (b) the walk -----------------------------------------------------------------------------

SITE, OTHER_SITE = "01", "02"
TOY_CRF, TOY_VISIT, TOY_ITEM = "toy_vitals", "D1", "weight"  # tests/toy_crf.py, added by conftest
NEW_PASSWORD = "Another-Long-Passphrase-42"
REASON = {"reason_code": "administrative", "reason_text": "access walk"}

#: who walks: one user per role (site roles granted on site 01), the other site's user, nobody
ACTORS: dict[str, tuple[str | None, str | None]] = {
    **{name: (name, SITE if role.site_scoped else None) for name, role in ROLES.items()},
    "other_site_investigator": ("investigator", OTHER_SITE),
    "anonymous": (None, None),
}


def _count(stmt) -> int:
    return _db.session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery()))


def _actions(action: str) -> int:
    return _count(sa.select(AuditRecord.seq).where(AuditRecord.action == action))


def _target(column):
    return lambda w: _db.session.scalar(sa.select(column).where(User.id == w.target.id))


@dataclass(frozen=True)
class Call:
    """How the walk requests one (method, endpoint), and what it gives when allowed."""

    ok: int = 200
    #: path of the redirect when allowed
    to: Callable | None = None
    data: Callable = lambda w: {}
    #: the state the request changes (read fresh from the database before and after)
    effect: Callable | None = None
    #: the site of the object the request acts on: site-scoped users of other sites get 404
    on_site: str | None = None
    #: public pages: a logged-in user is redirected here instead, and nothing changes
    logged_in_to: str | None = None
    #: a permission the view checks itself, after loading the object (403, recorded)
    permission: str | None = None
    #: the JSON API: the walker authenticates with an API token of their own (Authorization:
    #: Bearer), not the session; the anonymous visitor sends none and gets 401
    bearer: bool = False


def _user_page(w) -> str:
    return f"/admin/users/{w.target.id}"


CALLS: dict[tuple[str, str], Call] = {
    ("GET", "static"): Call(),
    ("GET", "main.index"): Call(),
    ("GET", "main.health"): Call(),
    ("GET", "auth.login"): Call(logged_in_to="/"),
    ("POST", "auth.login"): Call(
        302, lambda w: "/", lambda w: {"username": w.holder.username, "password": PASSWORD},
        effect=lambda w: _actions("auth.login"), logged_in_to="/"),
    ("POST", "auth.logout"): Call(302, lambda w: "/auth/login",
                                  effect=lambda w: _actions("auth.logout")),
    ("GET", "auth.change_password"): Call(),
    ("POST", "auth.change_password"): Call(
        302, lambda w: "/", lambda w: {"current": PASSWORD, "new": NEW_PASSWORD,
                                       "confirm": NEW_PASSWORD},
        effect=lambda w: _actions("auth.password_changed")),
    ("GET", "admin.list_users"): Call(),
    ("POST", "admin.create_user"): Call(
        200, None, lambda w: {"username": "walk-newcomer", "full_name": "New Comer",
                              "email": "newcomer@example.org"},
        effect=lambda w: _count(sa.select(User.id).where(User.username == "walk-newcomer"))),
    ("GET", "admin.view_user"): Call(),
    ("POST", "admin.deactivate_user"): Call(302, _user_page, lambda w: REASON,
                                            effect=_target(User.is_active)),
    ("POST", "admin.unlock_user"): Call(302, _user_page, lambda w: REASON,
                                        effect=_target(User.locked_at)),
    ("POST", "admin.reset_password"): Call(200, None, lambda w: REASON,
                                           effect=_target(User.password_hash)),
    ("POST", "admin.add_grant"): Call(
        302, _user_page, lambda w: {"role": "monitor", "site": str(w.sites[OTHER_SITE].id)},
        effect=lambda w: _count(sa.select(Grant.id).where(Grant.user_id == w.target.id))),
    ("POST", "admin.revoke_grant"): Call(
        302, _user_page, lambda w: REASON,
        effect=lambda w: _db.session.scalar(
            sa.select(Grant.revoked_at).where(Grant.id == w.target_grant.id))),
    ("GET", "admin.list_sites"): Call(),
    ("POST", "admin.create_site"): Call(
        302, lambda w: "/admin/sites",
        lambda w: {"code": "04", "name": "Walk site", "timezone": "Europe/Paris"},
        effect=lambda w: _count(sa.select(Site.id).where(Site.code == "04"))),
    ("POST", "admin.activate_site"): Call(
        302, lambda w: "/admin/sites",
        effect=lambda w: _db.session.scalar(
            sa.select(Site.activated_at).where(Site.id == w.new_site.id))),
    ("GET", "subjects.list_subjects"): Call(),
    ("POST", "subjects.enrol"): Call(
        302, lambda w: f"/subjects/{OTHER_SITE}-002",
        lambda w: {"site": str(w.sites[OTHER_SITE].id)},
        effect=lambda w: _count(sa.select(Subject.id).where(
            Subject.site_id == w.sites[OTHER_SITE].id)),
        on_site=OTHER_SITE),
    ("GET", "subjects.view_subject"): Call(on_site=OTHER_SITE),
    ("POST", "subjects.change_status"): Call(
        302, lambda w: f"/subjects/{w.subjects[OTHER_SITE].code}",
        lambda w: {"status": "screen_failure", "reason_text": "access walk"},
        effect=lambda w: _db.session.scalar(
            sa.select(Subject.status).where(Subject.id == w.subjects[OTHER_SITE].id)),
        on_site=OTHER_SITE),
    ("GET", "audit.trail"): Call(),
    # the casebook of site 02's subject, on the toy CRF the suite adds to the schedule (conftest)
    ("GET", "casebook.grid"): Call(on_site=OTHER_SITE),
    ("GET", "casebook.form_page"): Call(on_site=OTHER_SITE),
    ("POST", "casebook.form_page"): Call(
        302, lambda w: w.form_page,
        lambda w: {"weight": "71.5", "fever": "N", "reason_code": "entry_error",
                   "reason_text": "access walk", "submission_token": "access-walk"},
        effect=lambda w: _actions("item.update"), on_site=OTHER_SITE, permission="crf.enter"),
    ("POST", "casebook.mark_not_done"): Call(
        302, lambda w: f"/subjects/{w.subjects[OTHER_SITE].code}/casebook",
        lambda w: {"not_done_reason": "access walk"},
        effect=lambda w: _db.session.scalar(
            sa.select(FormInstance.status).where(FormInstance.id == w.form.id)),
        on_site=OTHER_SITE),
    ("GET", "casebook.item_history"): Call(on_site=OTHER_SITE),
    ("POST", "i18n.choose_language"): Call(302, lambda w: "/", lambda w: {"next": "/"}),
    ("GET", "subjects.screening_log"): Call(),
    ("POST", "subjects.add_screening"): Call(
        302, lambda w: "/subjects/screening-log",
        lambda w: {"site": str(w.sites[OTHER_SITE].id), "screened_on": "2026-01-05",
                   "age": "50", "sex": "M", "reason_not_included": "access walk"},
        effect=lambda w: _count(sa.select(ScreeningEntry.id).where(
            ScreeningEntry.site_id == w.sites[OTHER_SITE].id)),
        on_site=OTHER_SITE),
    ("GET", "main.missing_forms"): Call(),
    ("GET", "main.sign_off"): Call(),
    # exports: site 02's data, asked for and run (inline in tests), viewed and downloaded
    ("GET", "exports.list_exports"): Call(),
    ("POST", "exports.request_export"): Call(
        302, None, lambda w: {"kind": "datasets", "site": OTHER_SITE}, effect=lambda w: _export_jobs(w),
        on_site=OTHER_SITE),
    ("GET", "exports.view_export"): Call(on_site=OTHER_SITE),
    ("GET", "exports.download_export"): Call(
        on_site=OTHER_SITE, effect=lambda w: (_walk_export(w), _actions("export.downloaded"))[1]),
    # freeze and lock: site 02 is open, site 03 (not yet activated) frozen and locked
    ("GET", "closure.overview"): Call(),
    ("POST", "closure.freeze"): Call(
        302, lambda w: "/closure", lambda w: {"level": "site", "site": str(w.sites[OTHER_SITE].id)},
        effect=lambda w: _closure_flags(f"site:{w.sites[OTHER_SITE].id}"), on_site=OTHER_SITE),
    ("POST", "closure.lock"): Call(
        302, lambda w: "/closure", lambda w: {"level": "site", "site": str(w.sites[OTHER_SITE].id)},
        effect=lambda w: _closure_flags(f"site:{w.sites[OTHER_SITE].id}"), on_site=OTHER_SITE),
    ("POST", "closure.unfreeze"): Call(
        302, lambda w: "/closure",
        lambda w: {"level": "site", "site": str(w.new_site.id), "reason_text": "access walk"},
        effect=lambda w: _closure_flags(f"site:{w.new_site.id}")),
    ("POST", "closure.unlock"): Call(
        302, lambda w: "/closure",
        lambda w: {"level": "site", "site": str(w.new_site.id), "reason_text": "access walk"},
        effect=lambda w: _closure_flags(f"site:{w.new_site.id}")),
    # source data verification: the site 01 monitor verifies nothing on site 02's form (404)
    ("GET", "sdv.backlog"): Call(),
    ("GET", "sdv.plan"): Call(),
    ("POST", "sdv.set_plan"): Call(
        302, lambda w: "/sdv/plan", lambda w: {"mode": "percentage", "percentage": "25"},
        effect=lambda w: _sdv_plan()),
    ("POST", "sdv.verify_form"): Call(
        302, lambda w: w.form_page, lambda w: {"item": "weight"},
        effect=lambda w: _sdv_verified(), on_site=OTHER_SITE),
    ("POST", "sdv.unverify"): Call(
        302, lambda w: w.form_page, lambda w: {"item": "weight", "reason_text": "access walk"},
        effect=lambda w: _sdv_verified(), on_site=OTHER_SITE),
    ("POST", "sdv.verify_visit"): Call(
        302, lambda w: f"/subjects/{w.subjects[OTHER_SITE].code}/casebook",
        effect=lambda w: _sdv_verified(), on_site=OTHER_SITE),
    ("POST", "sdv.verify_subject"): Call(
        302, lambda w: f"/subjects/{w.subjects[OTHER_SITE].code}/casebook",
        effect=lambda w: _sdv_verified(), on_site=OTHER_SITE),
    # signatures: site 02's visit D1 made complete, the walker on the log when they may be
    ("GET", "signatures.sign_casebook"): Call(on_site=OTHER_SITE),
    ("POST", "signatures.sign_casebook"): Call(
        302, lambda w: f"/subjects/{w.subjects[OTHER_SITE].code}/casebook", lambda w: _signing(w),
        effect=lambda w: _signatures(), on_site=OTHER_SITE),
    ("GET", "signatures.sign_visit"): Call(on_site=OTHER_SITE),
    ("POST", "signatures.sign_visit"): Call(
        302, lambda w: f"/subjects/{w.subjects[OTHER_SITE].code}/casebook", lambda w: _signing(w),
        effect=lambda w: _signatures(), on_site=OTHER_SITE),
    # delegation logs: site 03's log gets a line, a line of site 02 is ended
    ("GET", "signatures.delegation_sites"): Call(),
    ("GET", "signatures.delegation_log"): Call(),
    ("POST", "signatures.add_delegation"): Call(
        302, lambda w: f"/delegation/sites/{w.new_site.id}", lambda w: _new_delegation_line(w),
        effect=lambda w: _count(sa.select(DelegationEntry.id).where(
            DelegationEntry.site_id == w.new_site.id))),
    ("POST", "signatures.end_delegation"): Call(
        302, lambda w: f"/delegation/sites/{w.sites[OTHER_SITE].id}",
        lambda w: {"end_date": site_today(w.sites[OTHER_SITE]).isoformat(),
                   "reason_code": "administrative", "reason_text": "access walk"},
        effect=lambda w: _db.session.scalar(sa.select(DelegationEntry.end_date).where(
            DelegationEntry.id == _delegation_line(w).id))),
}


def _sdv_verified():
    from ecrf.review.models import ItemVerification

    return _count(sa.select(ItemVerification.id).where(ItemVerification.verified.is_(True)))


def _sdv_plan():
    from ecrf.review.models import SdvPlan

    return _db.session.execute(sa.select(SdvPlan.mode, SdvPlan.percentage)).first()


def _closure_flags(scope: str):
    return _db.session.execute(sa.select(ClosureState.frozen, ClosureState.locked).where(
        ClosureState.scope == scope)).first()


def _signatures():
    from ecrf.review.models import Signature

    return _count(sa.select(Signature.id))


def _signing(w) -> dict:
    """Visit D1 of site 02's subject complete (SOFA not done), the walker on site 02's log if
    they could be (an investigator there), and the walker's own credentials."""
    from ecrf.casebook.services import mark_not_done
    from ecrf.review.delegation import add_entry, eligible_users

    site = w.sites[OTHER_SITE]
    mark_not_done(system_actor(), w.subjects[OTHER_SITE], "sofa_daily", Slot(TOY_VISIT), "access walk")
    if w.holder in eligible_users(site):
        add_entry(system_actor(), site, w.holder, "sign", site_today(site))
    return {"meaning": "approval", "username": w.holder.username, "password": PASSWORD}


def _new_delegation_line(w) -> dict:
    from tests.factories import Factories

    pi = Factories().user("walk-pi", role="investigator", site=w.new_site)
    return {"user": str(pi.id), "task": "pi", "start_date": "2026-01-05"}


def _delegation_line(w):
    """A line of site 02's log (made once per case), for the end-a-line request."""
    if not hasattr(w, "delegation_line"):
        from ecrf.review.delegation import add_entry
        from tests.factories import Factories

        site = w.sites[OTHER_SITE]
        sub = Factories().user("walk-sub", role="investigator", site=site)
        w.delegation_line = add_entry(system_actor(), site, sub, "sign",
                                      site_today(site) - timedelta(days=10))
    return w.delegation_line

#: URL parameters, by name, filled with real objects of the world (site 02's subject for <code>)
URL_PARAMS: dict[str, Callable] = {
    "code": lambda w: w.subjects[OTHER_SITE].code,
    "user_id": lambda w: w.target.id,
    "grant_id": lambda w: w.target_grant.id,
    "site_id": lambda w: w.new_site.id,
    "filename": lambda w: "css/ecrf.css",
    "visit_key": lambda w: w.form.visit_key,
    "visit_repeat": lambda w: w.form.visit_repeat,
    "crf_key": lambda w: w.form.crf_key,
    "form_repeat": lambda w: w.form.form_repeat,
    "item_key": lambda w: TOY_ITEM,
    "lang": lambda w: "fr",
    "entry_id": lambda w: _delegation_line(w).id,
    "export_id": lambda w: _walk_export(w).id,
}


def _walk_export(w):
    """A finished export of site 02 (made once per case)."""
    if not hasattr(w, "export"):
        from ecrf.exports import jobs

        w.export = jobs.export_now(system_actor(), "audit_jsonl", jobs.Scope(site=w.sites[OTHER_SITE]))
    return w.export


def _export_jobs(w) -> int:
    from ecrf.exports.models import ExportJob

    return _count(sa.select(ExportJob.id).where(ExportJob.site_code == OTHER_SITE,
                                               ExportJob.kind == "datasets"))


# --- queries: one open query on site 02's form (made once per case); closing and re-opening need
# it answered first (done by the effect's first read, before the request)


def _walk_query(w):
    if not hasattr(w, "query"):
        from ecrf.access.grants import Access
        from ecrf.review.queries import raise_query
        from tests.factories import Factories

        manager = Factories().user("walk-query-dm", role="data_manager")
        actor = Access.for_user(manager, "query.manage").actor(w.sites[OTHER_SITE].id)
        w.query = raise_query(actor, w.form, TOY_ITEM, "access walk")
    return w.query


def _answered_walk_query(w):
    query = _walk_query(w)
    if not hasattr(w, "query_answered"):
        from ecrf.access.grants import Access
        from ecrf.review.queries import answer
        from tests.factories import Factories

        site = w.sites[OTHER_SITE]
        investigator = Factories().user("walk-query-inv", role="investigator", site=site)
        answer(Access.for_user(investigator, "query.answer").actor(site.id), query, "access walk")
        w.query_answered = True
    return query


def _query_messages(action: str):
    from ecrf.review.models import QueryMessage

    return _count(sa.select(QueryMessage.id).where(QueryMessage.action == action))


def _query_step(action: str, prepare=_walk_query) -> Call:
    return Call(302, lambda w: f"/queries/{_walk_query(w).id}",
                lambda w: {"text": "access walk"},
                effect=lambda w: (prepare(w), _query_messages(action))[1], on_site=OTHER_SITE)


CALLS.update({
    ("GET", "queries.list_queries"): Call(),
    ("GET", "queries.view_query"): Call(on_site=OTHER_SITE),
    ("POST", "queries.raise_query"): Call(
        302, lambda w: w.form_page, lambda w: {"item_key": TOY_ITEM, "text": "access walk"},
        effect=lambda w: _query_messages("raise"), on_site=OTHER_SITE),
    ("POST", "queries.answer"): _query_step("answer"),
    ("POST", "queries.cancel"): _query_step("cancel"),
    ("POST", "queries.close"): _query_step("close", _answered_walk_query),
    ("POST", "queries.reopen"): _query_step("reopen", _answered_walk_query),
})
# --- the read-only API (with the walker's own token) and one's own API tokens


def _api_token(w):
    """The walker's API token (row, token), made once per case."""
    if not hasattr(w, "api_token"):
        from ecrf.api.tokens import create_token

        w.api_token = create_token(w.holder, "access walk")
    return w.api_token


def _api_tokens(w):
    return _count(sa.select(ApiToken.id).where(ApiToken.user_id == w.holder.id))


CALLS.update({
    ("GET", "api.openapi"): Call(),
    ("GET", "api.list_subjects"): Call(bearer=True),
    ("GET", "api.get_subject"): Call(on_site=OTHER_SITE, bearer=True),
    ("GET", "api.list_forms"): Call(on_site=OTHER_SITE, bearer=True),
    ("GET", "api.list_audit"): Call(bearer=True),
    ("GET", "api_tokens.list_tokens"): Call(),
    ("POST", "api_tokens.create_token"): Call(200, None, lambda w: {"name": "walk", "days": "30"},
                                              effect=_api_tokens),
    ("POST", "api_tokens.revoke_token"): Call(
        302, lambda w: "/account/api-tokens/",
        effect=lambda w: _db.session.scalar(sa.select(ApiToken.revoked_at).where(
            ApiToken.id == _api_token(w)[0].id))),
})
URL_PARAMS.update({
    "token_id": lambda w: _api_token(w)[0].id,
    "query_id": lambda w: _walk_query(w).id,
    "form_instance_id": lambda w: w.form.id,
})

# --- the audit trail's downloads and the data managers' review worklist


def _walk_flagged(w) -> dict:
    """Site 02's weight changed four times: the fourth change is flagged (more than 3 changes)."""
    if not hasattr(w, "flagged_seq"):
        for weight in ("71", "72", "73", "74"):
            saved = save_form(system_actor(), w.subjects[OTHER_SITE], TOY_CRF, Slot(TOY_VISIT),
                              Submitted({"weight": weight, "fever": "N"}),
                              reason=Reason("entry_error", "access walk"))
            assert saved.ok, saved.errors
        w.flagged_seq = audit_rows(action="item.update", item=TOY_ITEM)[-1].seq
    return {"seq": str(w.flagged_seq), "flag": "many_changes", "comment": "access walk"}


def _audit_reviews():
    from ecrf.exports.models import AuditReview

    return _count(sa.select(AuditReview.id))


CALLS.update({
    ("GET", "audit.export_csv"): Call(effect=lambda w: _actions("audit.exported")),
    ("GET", "audit.export_jsonl"): Call(effect=lambda w: _actions("audit.exported")),
    ("GET", "audit.worklist"): Call(),
    ("POST", "audit.review_record"): Call(302, lambda w: "/audit/review", _walk_flagged,
                                          effect=lambda w: _audit_reviews()),
})


# --- redaction: the weight entered on site 02's form, redacted by a data manager


def _walk_redactable(w) -> int:
    return audit_rows(action="item.create", subject=w.subjects[OTHER_SITE].code, item=TOY_ITEM)[0].seq


CALLS.update({
    ("GET", "audit.redact_value"): Call(),
    ("POST", "audit.redact_value"): Call(
        302, lambda w: "/audit/", lambda w: {"reason_code": "entry_error", "reason_text": "access walk"},
        effect=lambda w: _actions("audit.redact")),
})
URL_PARAMS.update({"seq": _walk_redactable, "side": lambda w: "new"})


# --- stronger authentication: the second factor, account end dates, the access review


def _walk_code(w) -> dict:
    """A valid code for the walker's own enrolment (its secret made just before the request)."""
    import pyotp

    from ecrf.auth import second_factor

    second_factor.start_enrolment(w.holder)
    totp = pyotp.TOTP(w.holder.totp_secret)
    return {"code": totp.generate_otp(totp.timecode(utcnow()))}


CALLS.update({
    ("GET", "auth.second_factor_step"): Call(302, lambda w: "/auth/login", logged_in_to="/"),
    # without a password accepted a moment ago there is nothing to complete (tested in
    # tests/test_auth_hardening.py)
    ("POST", "auth.second_factor_step"): Call(302, lambda w: "/auth/login", lambda w: {"code": "1"},
                                              logged_in_to="/"),
    ("GET", "auth.second_factor_setup"): Call(),
    ("POST", "auth.second_factor_setup"): Call(
        302, lambda w: "/", _walk_code,
        effect=lambda w: _actions("auth.second_factor_enrolled")),
    ("POST", "admin.reset_second_factor"): Call(
        302, _user_page, lambda w: REASON, effect=lambda w: _actions("auth.second_factor_reset")),
    ("POST", "admin.set_expiry"): Call(
        302, _user_page, lambda w: {"expires_at": "2030-01-01T00:00", **REASON},
        effect=_target(User.expires_at)),
    ("GET", "admin.access_review_report"): Call(),
})


def url_map_calls(app: Flask) -> list[tuple[str, str]]:
    """Every (method, endpoint) the URL map answers, HEAD and OPTIONS aside."""
    return sorted({(method, rule.endpoint) for rule in app.url_map.iter_rules()
                   for method in rule.methods - {"HEAD", "OPTIONS"}})


#: the map is read from an app built at collection time, so a new endpoint is a new case
ROUTES = url_map_calls(create_app("test", DATABASE_URL="sqlite://"))

WALK = [pytest.param(actor, method, endpoint, id=f"{actor}-{method}-{endpoint}")
        for actor in ACTORS for method, endpoint in ROUTES]


@dataclass(frozen=True)
class Outcome:
    status: int
    location: str | None = None
    refused: bool = False  # 403/404, with an access.denied record
    changes: bool = False  # the request's effect is done


def expected_outcome(app: Flask, actor: str, endpoint: str, call: Call, world) -> Outcome:
    """The answer the matrix derived from ROLES gives to ``actor`` on ``endpoint``."""
    rule: AccessRule = app.view_functions[endpoint].access_rule
    role, site = ACTORS[actor]
    allowed = Outcome(call.ok, call.to(world) if call.to else None, changes=True)
    if rule.kind == "public":
        if role is not None and call.logged_in_to:
            return Outcome(302, call.logged_in_to)
        return allowed
    if role is None:
        return Outcome(401) if call.bearer else Outcome(302, "/auth/login")
    if rule.kind == "authenticated":
        return allowed
    if rule.permission not in ROLES[role].permissions:
        return Outcome(403, refused=True)
    if call.on_site and ROLES[role].site_scoped and site != call.on_site:
        return Outcome(404, refused=True)
    if call.permission and call.permission not in ROLES[role].permissions:
        return Outcome(403, refused=True)
    return allowed


def visible_codes(actor: str, world) -> tuple[set[str], set[str]]:
    """Subject codes the actor may see, and those they must never see, derived from ROLES."""
    role, site = ACTORS[actor]
    codes = {code: s.code for code, s in world.subjects.items()}
    if role is None or "subject.view" not in ROLES[role].permissions:
        return set(), set(codes.values())
    if ROLES[role].site_scoped:
        return {codes[site]}, {c for s, c in codes.items() if s != site}
    return set(codes.values()), set()


@pytest.fixture
def world(make, db, actor):
    """Two activated sites with a subject each (site 02's with a saved CRF), the walking actor's
    account, and the objects the admin endpoints act on: a locked account holding a grant, and a
    site not yet activated.

    Only the walking actor's account is created (each case logs in one user); the anonymous
    visitor gets the site-01 investigator's account, whose credentials it posts to the login form.
    """
    sites = {code: make.site(code) for code in (SITE, OTHER_SITE)}
    subjects = {code: make.subject(code) for code in sites}
    holder = "investigator" if actor == "anonymous" else actor
    role, site = ACTORS[holder]
    users = {holder: make.user(f"walk-{holder.replace('_', '-')}", role=role, site=site)}
    target = make.user("walk-target", role="monitor", site=OTHER_SITE)
    with unit_of_work(system_actor(), Reason.system("locked for the access walk")):
        target.locked_at, target.failed_logins = utcnow(), 5
    saved = save_form(system_actor(), subjects[OTHER_SITE], TOY_CRF, Slot(TOY_VISIT),
                      Submitted({"weight": "70", "fever": "N"}))
    assert saved.ok, saved.errors
    form = saved.instance
    form_page = (f"/subjects/{subjects[OTHER_SITE].code}/visits/{form.visit_key}/"
                 f"{form.visit_repeat}/forms/{form.crf_key}/{form.form_repeat}")
    new_site = make.site("03", activated=False)
    for action in ("freeze", "lock"):
        closure.change(system_actor(), closure.Scope.of_site(new_site), action)
    return SimpleNamespace(sites=sites, subjects=subjects, users=users, holder=users[holder],
                           target=target, target_grant=target.grants[0], form=form,
                           form_page=form_page, new_site=new_site)


def build_url(app: Flask, endpoint: str, world) -> str:
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint)
    unknown = rule.arguments - URL_PARAMS.keys()
    assert not unknown, f"the walk cannot fill {unknown} of {rule.rule}: add it to URL_PARAMS"
    with app.test_request_context():
        return url_for(endpoint, **{name: URL_PARAMS[name](world) for name in rule.arguments})


def test_the_walk_has_a_request_for_every_endpoint_of_the_url_map(app):
    assert url_map_calls(app) == ROUTES
    assert set(ROUTES) == set(CALLS)


@pytest.mark.requirement("P11-10d", "P11-10g")
@pytest.mark.parametrize(("actor", "method", "endpoint"), WALK)
def test_walk(actor, method, endpoint, app, client, login, world):
    call = CALLS.get((method, endpoint))
    assert call is not None, f"the walk has no request for {method} {endpoint}: add it to CALLS"
    user = world.users.get(actor)
    if user is not None:
        assert login(user.username).status_code == 302
    expected = expected_outcome(app, actor, endpoint, call, world)
    url = build_url(app, endpoint, world)
    before = call.effect(world) if call.effect else None
    denied_before = len(audit_rows(action="access.denied"))

    headers = {"Authorization": f"Bearer {_api_token(world)[1]}"} if call.bearer and user else None
    response = client.open(url, method=method, data=call.data(world) if method == "POST" else None,
                           headers=headers)
    body = response.get_data(as_text=True)
    response.close()  # a static file is streamed from an open file

    assert response.status_code == expected.status, (actor, method, url, body[:300])
    if expected.location is not None:
        assert urlsplit(response.headers["Location"]).path == expected.location
    denied = audit_rows(action="access.denied")[denied_before:]
    if expected.refused:
        assert [(r.username, r.field) for r in denied] == [(user.username, endpoint)]
    else:
        assert denied == []
    if call.effect:
        changed = call.effect(world) != before
        assert changed == expected.changes, f"{actor} {method} {url}: changed={changed}"

    may_see, never = visible_codes(actor, world)
    if user is not None:
        assert not [code for code in never if code in body], f"{actor} sees another site's subject"
    if endpoint == "subjects.list_subjects" and expected.status == 200:
        assert may_see and all(code in body for code in may_see)


# --- (c) rules that read like requirements ----------------------------------------------------


@pytest.mark.requirement("P11-10g")
def test_an_admin_gets_403_on_the_subject_list_no_clinical_data(make, login_as, client):
    subject = make.subject(SITE)
    admin = login_as("admin")
    for url in ("/subjects/", f"/subjects/{subject.code}"):
        response = client.get(url)
        assert response.status_code == 403
        assert subject.code not in response.get_data(as_text=True)
    assert [r.username for r in audit_rows(action="access.denied")] == [admin.username] * 2
    assert "/subjects/" not in client.get("/").get_data(as_text=True)  # no menu entry either


@pytest.mark.requirement("P11-10g")
def test_an_auditor_cannot_enrol(make, login_as, client, db):
    site = make.site(SITE)
    auditor = login_as("auditor")
    response = client.post("/subjects/enrol", data={"site": str(site.id)})
    assert response.status_code == 403
    assert db.session.scalar(sa.select(sa.func.count(Subject.id))) == 0
    denied = audit_rows(action="access.denied")
    assert [(r.username, r.field) for r in denied] == [(auditor.username, "subjects.enrol")]
    assert "Enrol a new subject" not in client.get("/subjects/").get_data(as_text=True)


@pytest.mark.requirement("P11-10g", "GDPR-4")
def test_a_monitor_of_site_01_gets_404_on_a_site_02_subject_page(make, login_as, client):
    own, other = make.subject(SITE), make.subject(OTHER_SITE)
    monitor = login_as("monitor", site=SITE)
    assert client.get(f"/subjects/{own.code}").status_code == 200
    response = client.get(f"/subjects/{other.code}")
    missing = client.get(f"/subjects/{OTHER_SITE}-999")
    assert response.status_code == missing.status_code == 404
    # another site's subject looks exactly like one that does not exist
    assert without_csrf_token(response) == without_csrf_token(missing)
    assert other.code not in response.get_data(as_text=True)
    assert [r.username for r in audit_rows(action="access.denied")] == [monitor.username] * 2
    assert other.code not in client.get("/subjects/").get_data(as_text=True)


def _grant_window(kind: str) -> dict:
    now = utcnow()
    return {
        "current": {},
        "expired": {"valid_from": now - timedelta(days=2), "valid_to": now - timedelta(days=1)},
        "not_yet_valid": {"valid_from": now + timedelta(days=1)},
        "revoked": {},
    }[kind]


@pytest.mark.requirement("P11-10d", "A11-12.1-12.3", "EMA-9", "E6-4.3.8a-c")
@pytest.mark.parametrize(("kind", "status"), [("current", 200), ("expired", 403),
                                               ("not_yet_valid", 403), ("revoked", 403)])
def test_only_a_grant_within_its_validity_and_not_revoked_gives_access(kind, status, make, login,
                                                                        client, db):
    site = make.site(SITE)
    make.subject(SITE)
    user = make.user(f"inv-{kind.replace('_', '-')}", role="investigator", site=site,
                     **_grant_window(kind))
    if kind == "revoked":
        revoke_grant(system_actor(), user.grants[0], Reason("administrative", "left the study"))
    assert login(user.username).status_code == 302  # the account itself is fine
    assert client.get("/subjects/").status_code == status
    assert client.get(f"/subjects/{SITE}-001").status_code == status
    enrol = client.post("/subjects/enrol", data={"site": str(site.id)})
    assert enrol.status_code == (302 if status == 200 else 403)
    assert db.session.scalar(sa.select(sa.func.count(Subject.id))) == (2 if status == 200 else 1)
    home = client.get("/").get_data(as_text=True)
    assert ("You hold no active role" in home) == (status == 403)


@pytest.mark.requirement("EMA-9", "E6-4.3.8a-c")
def test_a_grant_ending_during_a_session_ends_access_without_a_new_login(make, login, client,
                                                                        later):
    user = make.user("inv-ending", role="investigator", site=SITE,
                     valid_to=utcnow() + timedelta(minutes=10))
    login(user.username)
    assert client.get("/subjects/").status_code == 200
    later(minutes=11)
    assert client.get("/subjects/").status_code == 403


@pytest.mark.requirement("A11-12.4", "EMA-3", "ALCOA-attributable")
def test_the_audit_rows_of_an_enrolment_record_the_role_site_and_grant_that_allowed_it(
        make, login_as, client, db):
    make.site(SITE)
    other = make.site(OTHER_SITE)
    user = login_as("investigator", site=SITE)
    second = grant_role(system_actor(), user, "investigator", other)
    response = client.post("/subjects/enrol", data={"site": str(other.id)})
    assert response.status_code == 302
    code = response.headers["Location"].rsplit("/", 1)[-1]
    rows = audit_rows(action="subject.create", subject=code)
    assert rows  # one row per recorded column of the new subject
    assert {(r.username, r.role, r.actor_site, r.grant_id) for r in rows} == {
        (user.username, "investigator", OTHER_SITE, second.id)}
    assert second.id != user.grants[0].id  # the grant of the site acted on, not the first one


@pytest.mark.requirement("E6-4.3.5")
def test_a_site_that_is_not_activated_cannot_enrol(make, login, client, db):
    site = make.site("03", activated=False)
    user = make.user("inv-03", role="investigator", site=site)
    login(user.username)
    page = client.get("/subjects/").get_data(as_text=True)
    assert f'value="{site.id}"' not in page  # not offered
    response = client.post("/subjects/enrol", data={"site": str(site.id)}, follow_redirects=True)
    assert response.status_code == 200
    assert "Site 03 is not activated: it cannot enrol yet." in response.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count(Subject.id))) == 0
    assert audit_rows(action="subject.create") == []


@pytest.mark.requirement("P11-10g")
def test_an_enrolment_at_a_site_not_granted_is_refused_with_404_and_recorded(make, login_as,
                                                                             client, db):
    make.site(SITE)
    other = make.site(OTHER_SITE)
    user = login_as("investigator", site=SITE)
    response = client.post("/subjects/enrol", data={"site": str(other.id)})
    assert response.status_code == 404
    assert db.session.scalar(sa.select(sa.func.count(Subject.id))) == 0
    denied = audit_rows(action="access.denied")
    assert [(r.username, r.field) for r in denied] == [(user.username, "subjects.enrol")]


# --- defects the walk found, fixed in 8b3c3eb: kept as regression tests ----------------------


def test_an_administrator_can_create_an_account_with_an_e_mail_address(login_as, client, db):
    login_as("admin")
    response = client.post("/admin/users", data={"username": "with-mail", "full_name": "With Mail",
                                                  "email": "with.mail@example.org"})
    assert response.status_code == 200
    assert db.session.scalar(sa.select(User.email).where(User.username == "with-mail")) \
        == "with.mail@example.org"
