"""The read-only JSON API: tokens made and revoked by their owner (shown once, only a SHA-256
kept, audited), and endpoints that act with the owner's grants of the moment, scoped like the
pages; the OpenAPI document describes exactly the routes the blueprint serves."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from ecrf import create_app
from ecrf.api import bp as api_bp
from ecrf.api import tokens
from ecrf.api.views import OPENAPI
from ecrf.audit.capture import SECRET_MARK
from ecrf.audit.models import AuditValue
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.auth.services import deactivate_user, reset_password, system_actor
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.database import utcnow
from ecrf.exports.models import ApiToken
from tests.factories import audit_rows

D1 = Slot("D1")
TOY = "toy_vitals"


def api_user(make, role: str, site=None, name: str | None = None):
    """A user holding ``role`` and a fresh API token of theirs: (user, token)."""
    user = make.user(name or f"api-{role.replace('_', '-')}-{site or 'all'}", role=role, site=site)
    return user, tokens.create_token(user, "tests")[1]


def get(client, url: str, token: str | None, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(url, headers=headers, query_string=params)


def codes(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [s["code"] for s in response.get_json()["items"]]


def denied() -> list[tuple[str, str]]:
    return [(r.username, r.field) for r in audit_rows(action="access.denied")]


def save_toy(subject, values=None, null_flavors=None, reason=None):
    result = save_form(system_actor(), subject, TOY, D1,
                       Submitted(values or {"weight": "72.5", "height": "180", "fever": "N"},
                                 null_flavors or {}), reason=reason)
    assert result.ok, result.errors
    return result.instance


@pytest.fixture
def two_sites(make):
    """Sites 01 and 02, two subjects on 01 and one on 02."""
    return [make.subject("01"), make.subject("01"), make.subject("02")]


# --- tokens: shown once, only a digest kept, audited, revocable by their owner only --------------


def _token_on(page: str) -> str:
    return re.search(r'<p class="secret" id="api-token">([^<]+)</p>', page).group(1)


def test_a_new_token_is_shown_once_and_only_its_sha256_is_stored(login_as, client, db):
    user = login_as("investigator", site="01")
    response = client.post("/account/api-tokens/", data={"name": "R script", "days": "30"})
    assert response.status_code == 200
    token = _token_on(response.get_data(as_text=True))
    assert len(token) >= 43  # token_urlsafe(32)

    row = db.session.scalar(sa.select(ApiToken).where(ApiToken.user_id == user.id))
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in [getattr(row, c.key) for c in sa.inspect(ApiToken).column_attrs]
    assert 29 <= (row.expires_at - utcnow()).days <= 30
    listing = client.get("/account/api-tokens/").get_data(as_text=True)
    assert "R script" in listing and token not in listing  # never shown again
    kept = db.session.scalars(sa.select(AuditValue.new_value)).all()
    assert token not in kept and row.token_hash not in kept  # neither it nor its digest

    assert get(client, "/api/v1/subjects", token).status_code == 200


@pytest.mark.requirement("P11-300c")
def test_creating_and_revoking_a_token_are_audit_records_of_its_owner(login_as, client, db):
    user = login_as("monitor", site="01")
    client.post("/account/api-tokens/", data={"name": "sync", "days": "7"})
    row = db.session.scalar(sa.select(ApiToken).where(ApiToken.user_id == user.id))
    created = audit_rows(action="api_token.create", entity_id=str(row.id))
    assert {r.username for r in created} == {user.username}
    values = {r.field: r.value.new_value for r in created}
    assert values["name"] == "sync" and values["token_hash"] == SECRET_MARK
    assert "expires_at" in values

    response = client.post(f"/account/api-tokens/{row.id}/revoke")
    assert response.status_code == 302
    revoked = audit_rows(action="api_token.update", entity_id=str(row.id))
    assert [(r.username, r.field, r.value.old_value) for r in revoked] == [
        (user.username, "revoked_at", None)]
    assert revoked[0].value.new_value is not None


@pytest.mark.requirement("P11-10h", "P11-300c")
def test_a_revoked_token_is_refused_and_its_use_recorded_against_its_owner(make, client, db):
    user, token = api_user(make, "monitor", "01")
    assert get(client, "/api/v1/subjects", token).status_code == 200
    row = db.session.scalar(sa.select(ApiToken).where(ApiToken.user_id == user.id))
    tokens.revoke_token(user, row)
    response = get(client, "/api/v1/subjects", token)
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
    assert denied() == [(user.username, "api.list_subjects")]
    assert "token revoked" in audit_rows(action="access.denied")[0].value.new_value


def test_a_user_cannot_revoke_another_users_token(make, login_as, client, db):
    owner, token = api_user(make, "monitor", "01", name="token-owner")
    row = db.session.scalar(sa.select(ApiToken).where(ApiToken.user_id == owner.id))
    intruder = login_as("data_manager")
    assert client.post(f"/account/api-tokens/{row.id}/revoke").status_code == 404
    assert db.session.scalar(sa.select(ApiToken.revoked_at).where(ApiToken.id == row.id)) is None
    assert denied() == [(intruder.username, "api_tokens.revoke_token")]
    assert "token-owner" not in client.get("/account/api-tokens/").get_data(as_text=True)
    assert get(client, "/api/v1/subjects", token).status_code == 200
    with pytest.raises(tokens.TokenError):
        tokens.revoke_token(intruder, row)


def test_a_token_expires_after_the_days_chosen(make, client, later):
    user = make.user("api-expiring", role="monitor", site="01")
    row, token = tokens.create_token(user, "short", days=1)
    assert get(client, "/api/v1/subjects", token).status_code == 200
    later(hours=23)
    assert get(client, "/api/v1/subjects", token).status_code == 200
    later(hours=1, seconds=1)
    assert get(client, "/api/v1/subjects", token).status_code == 401
    assert tokens.state(row) == "expired"
    assert denied() == [(user.username, "api.list_subjects")]


def test_the_validity_is_chosen_up_to_the_configured_maximum(app, make, login_as, client, db,
                                                             monkeypatch):
    monkeypatch.setitem(app.config, "API_TOKEN_DAYS", 7)
    user = login_as("auditor")
    assert "At most 7 days" in client.get("/account/api-tokens/").get_data(as_text=True)
    refused = client.post("/account/api-tokens/", data={"name": "too long", "days": "8"})
    assert refused.status_code == 400
    assert "A token is valid 1 to 7 days." in refused.get_data(as_text=True)
    assert client.post("/account/api-tokens/", data={"name": "", "days": "7"}).status_code == 400
    assert db.session.scalar(sa.select(sa.func.count(ApiToken.id))) == 0
    row, _token = tokens.create_token(user, "default")
    assert timedelta(days=6, hours=23) < row.expires_at - utcnow() <= timedelta(days=7)
    for days in (0, 8):
        with pytest.raises(tokens.TokenError):
            tokens.create_token(user, "bad", days=days)


@pytest.mark.requirement("P11-10d")
@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not-a-token", "Basic dXNlcjpwYXNz",
                                    "Bearer " + "x" * 500])
def test_a_request_without_a_valid_token_gets_401_and_no_data(header, make, client, two_sites):
    response = client.get("/api/v1/subjects", headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="ecrf"')
    assert response.get_json()["error"] == "unauthorized"
    assert not any(s.code in response.get_data(as_text=True) for s in two_sites)
    assert "Set-Cookie" not in response.headers  # no session is opened for the API
    assert denied() == []  # no owner to record against: the security log has it


def test_a_logged_in_session_does_not_open_the_api(login_as, client, two_sites):
    login_as("data_manager")
    assert client.get("/subjects/").status_code == 200
    assert client.get("/api/v1/subjects").status_code == 401


@pytest.mark.parametrize("state", ["inactive", "locked", "password_reset"])
def test_a_token_of_an_account_that_cannot_log_in_is_refused(state, make, client, db):
    user, token = api_user(make, "data_manager")
    assert get(client, "/api/v1/subjects", token).status_code == 200
    if state == "inactive":
        deactivate_user(system_actor(), user, Reason("administrative", "left"))
    elif state == "locked":
        with unit_of_work(system_actor(), Reason.system("locked")):
            user.locked_at = utcnow()
    else:
        reset_password(system_actor(), user, Reason("administrative", "forgotten"))
    assert get(client, "/api/v1/subjects", token).status_code == 401
    assert denied() == [(user.username, "api.list_subjects")]


def test_the_last_use_is_kept_without_an_audit_record(app, make, client, db, monkeypatch):
    user, token = api_user(make, "monitor", "01")
    row = db.session.scalar(sa.select(ApiToken).where(ApiToken.user_id == user.id))
    assert row.last_used_at is None
    before = len(audit_rows())
    get(client, "/api/v1/subjects", token)
    db.session.refresh(row)
    first = row.last_used_at
    assert first is not None
    get(client, "/api/v1/subjects", token)  # within API_TOKEN_TOUCH_SECONDS: not rewritten
    db.session.refresh(row)
    assert row.last_used_at == first
    monkeypatch.setitem(app.config, "API_TOKEN_TOUCH_SECONDS", 0)
    get(client, "/api/v1/subjects", token)
    db.session.refresh(row)
    assert row.last_used_at > first
    assert len(audit_rows()) == before


# --- scoping: the owner's grants, like the pages ---------------------------------------------------


@pytest.mark.requirement("ALCOA-available", "GDPR-4")
@pytest.mark.parametrize(("role", "site", "sees"), [
    ("investigator", "01", [0, 1]), ("investigator", "02", [2]), ("monitor", "01", [0, 1]),
    ("data_manager", None, [0, 1, 2]), ("auditor", None, [0, 1, 2])])
def test_the_subject_list_holds_the_subjects_of_the_owners_sites(role, site, sees, make, client,
                                                                 two_sites):
    _user, token = api_user(make, role, site)
    assert codes(get(client, "/api/v1/subjects", token)) == [two_sites[i].code for i in sees]


def test_a_subject_is_described_by_code_site_status_and_dates(make, client, db):
    subject = make.included("01")
    _user, token = api_user(make, "monitor", "01")
    body = get(client, f"/api/v1/subjects/{subject.code}", token).get_json()
    assert body["code"] == subject.code and body["site"] == "01"
    assert body["status"] == "included"
    assert body["inclusion_date"] == subject.inclusion_date.isoformat()
    last = audit_rows(entity_type="subject", subject=subject.code)[-1]
    assert body["updated_at"] == last.recorded_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert body["created_at"].endswith("Z")


def test_another_sites_subject_is_404_like_one_that_does_not_exist(make, client, two_sites):
    user, token = api_user(make, "investigator", "01")
    other = two_sites[2].code
    for url in (f"/api/v1/subjects/{other}", f"/api/v1/subjects/{other}/forms"):
        hidden, missing = get(client, url, token), get(client, url.replace(other, "02-999"), token)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.get_json() == missing.get_json() == {"error": "not_found",
                                                           "message": "Not found."}
    assert get(client, f"/api/v1/subjects/{two_sites[0].code}", token).status_code == 200
    assert denied() == [(user.username, "api.get_subject")] * 2 + [
        (user.username, "api.list_forms")] * 2


def test_an_admin_gets_403_on_clinical_data_and_the_audit_trail(make, client, two_sites):
    admin, token = api_user(make, "admin")
    for url in ("/api/v1/subjects", f"/api/v1/subjects/{two_sites[0].code}",
                f"/api/v1/subjects/{two_sites[0].code}/forms", "/api/v1/audit"):
        response = get(client, url, token)
        assert response.status_code == 403, url
        assert response.get_json()["error"] == "forbidden"
        assert two_sites[0].code not in response.get_data(as_text=True)
    assert denied() == [(admin.username, e) for e in (
        "api.list_subjects", "api.get_subject", "api.list_forms", "api.list_audit")]


@pytest.mark.requirement("P11-10h")
def test_a_grant_revoked_after_the_token_was_made_ends_access(make, client, two_sites):
    from ecrf.access.services import revoke_grant

    user, token = api_user(make, "monitor", "01")
    assert get(client, "/api/v1/subjects", token).status_code == 200
    revoke_grant(system_actor(), user.grants[0], Reason("administrative", "left the study"))
    assert get(client, "/api/v1/subjects", token).status_code == 403


# --- forms and values ----------------------------------------------------------------------------


def test_the_forms_carry_visit_crf_version_status_and_values_as_the_audit_trail_writes_them(
        make, client, db):
    subject = make.subject("01")
    save_toy(subject, {"weight": "72.5", "height": "180", "fever": "N",
                       "devices": ["ECG", "SPO2"]}, {"comment": ("ASKU", "declined")})
    _user, token = api_user(make, "investigator", "01")
    body = get(client, f"/api/v1/subjects/{subject.code}/forms", token).get_json()
    assert body["subject"] == subject.code and body["total"] == 1
    form = body["items"][0]
    assert {k: form[k] for k in ("visit", "visit_repeat", "crf", "crf_version", "form_repeat",
                                 "status")} == {"visit": "D1", "visit_repeat": 1, "crf": TOY,
                                                "crf_version": 1, "form_repeat": 1,
                                                "status": "complete"}
    values = {v["item"]: v for v in form["items"]}
    assert list(values)[:3] == ["weight", "height", "bmi"]  # the definition's order
    assert values["comment"] == {"item": "comment", "value": None, "null_flavor": "ASKU",
                                 "null_comment": "declined"}
    trail = {r.item: r.value.new_value for r in audit_rows(action="item.create",
                                                           subject=subject.code)}
    for key, value in values.items():
        if value["null_flavor"] is None:
            assert value["value"] == trail[key], key  # 72.5, not the column's 72.50000000
    assert values["weight"]["value"] == "72.5"


def test_a_monitor_reads_the_forms_of_their_sites_subjects_only(make, client, two_sites):
    save_toy(two_sites[0])
    _user, token = api_user(make, "monitor", "01")
    assert get(client, f"/api/v1/subjects/{two_sites[0].code}/forms", token).get_json()["total"] == 1
    assert get(client, f"/api/v1/subjects/{two_sites[2].code}/forms", token).status_code == 404


def test_the_forms_are_filtered_by_their_update_time(make, client, db):
    subject = make.subject("01")
    instance = save_toy(subject)
    _user, token = api_user(make, "auditor")
    url = f"/api/v1/subjects/{subject.code}/forms"
    stamp = instance.updated_at
    assert get(client, url, token, since=stamp.isoformat()).get_json()["total"] == 1
    assert get(client, url, token, until=stamp.isoformat()).get_json()["total"] == 0
    later = (stamp + timedelta(microseconds=1)).isoformat().replace("+00:00", "Z")
    assert get(client, url, token, since=later).get_json()["total"] == 0
    assert get(client, url, token, until=later).get_json()["total"] == 1


# --- pagination and time windows -----------------------------------------------------------------


def test_the_subject_list_is_paged_with_per_page_at_most_200(make, client):
    subjects = [make.subject("01") for _ in range(5)]
    _user, token = api_user(make, "data_manager")
    first = get(client, "/api/v1/subjects", token, per_page=2).get_json()
    assert (first["page"], first["per_page"], first["total"], first["pages"]) == (1, 2, 5, 3)
    pages = [codes(get(client, "/api/v1/subjects", token, per_page=2, page=n)) for n in (1, 2, 3, 4)]
    assert pages == [[s.code for s in subjects[i:i + 2]] for i in (0, 2, 4)] + [[]]
    assert get(client, "/api/v1/subjects", token).get_json()["per_page"] == 50
    for bad in ({"per_page": 201}, {"per_page": 0}, {"page": 0}, {"page": "x"}):
        response = get(client, "/api/v1/subjects", token, **bad)
        assert response.status_code == 400, bad
        assert response.get_json()["error"] == "bad_request"
    assert get(client, "/api/v1/subjects", token, per_page=200).status_code == 200


def test_the_subject_list_is_filtered_by_the_time_of_the_last_change(make, client, db):
    first = make.subject("01")
    second = make.subject("01")
    _user, token = api_user(make, "data_manager")
    items = get(client, "/api/v1/subjects", token).get_json()["items"]
    stamp = items[1]["updated_at"]  # the second subject's enrolment
    assert codes(get(client, "/api/v1/subjects", token, since=stamp)) == [second.code]
    assert codes(get(client, "/api/v1/subjects", token, until=stamp)) == [first.code]
    from ecrf.study.services import change_subject_status

    change_subject_status(system_actor(), first, "screen_failure", Reason("other", "not eligible"))
    changed = get(client, f"/api/v1/subjects/{first.code}", token).get_json()["updated_at"]
    assert changed > stamp
    assert codes(get(client, "/api/v1/subjects", token, since=changed)) == [first.code]
    assert codes(get(client, "/api/v1/subjects", token, status="screen_failure")) == [first.code]
    bad = get(client, "/api/v1/subjects", token, since="yesterday")
    assert bad.status_code == 400 and "ISO 8601" in bad.get_json()["message"]
    # a time without a zone is UTC
    naive = stamp.rstrip("Z")
    assert codes(get(client, "/api/v1/subjects", token, since=naive)) == codes(
        get(client, "/api/v1/subjects", token, since=stamp))


# --- the audit trail -------------------------------------------------------------------------------


@pytest.mark.requirement("ALCOA-available")
def test_the_auditor_reads_the_audit_trail_with_old_and_new_values(make, client, two_sites):
    subject = two_sites[0]
    save_toy(subject)
    save_toy(subject, {"weight": "80", "height": "180", "fever": "N"},
             reason=Reason("entry_error", "typo"))
    _user, token = api_user(make, "auditor")
    body = get(client, "/api/v1/audit", token, subject=subject.code, action="item.update").get_json()
    weight = next(r for r in body["items"] if r["item"] == "weight")
    assert (weight["old_value"], weight["new_value"]) == ("72.5", "80")
    assert (weight["reason_code"], weight["reason_text"]) == ("entry_error", "typo")
    assert weight["site"] == "01" and weight["form"] == TOY and weight["visit"] == "D1"
    assert {r["subject"] for r in body["items"]} == {subject.code}
    stored = audit_rows(action="item.update", subject=subject.code)
    assert [r["seq"] for r in body["items"]] == [r.seq for r in stored]
    assert [r["row_hash"] for r in body["items"]] == [r.row_hash for r in stored]


def test_the_audit_trail_is_read_by_keyset_and_filtered(make, client, two_sites):
    _user, token = api_user(make, "data_manager")
    everything = [r.seq for r in audit_rows()]
    seen, after = [], 0
    while True:
        body = get(client, "/api/v1/audit", token, after_seq=after, limit=7).get_json()
        seen += [r["seq"] for r in body["items"]]
        if body["next_after_seq"] is None:
            break
        after = body["next_after_seq"]
    assert seen[:len(everything)] == everything  # in order, none missed, none twice
    assert len(set(seen)) == len(seen)

    site_02 = get(client, "/api/v1/audit", token, site="02", limit=200).get_json()["items"]
    assert site_02 and {r["site"] for r in site_02} == {"02"}
    rows = audit_rows()
    middle = rows[len(rows) // 2].recorded_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    since = get(client, "/api/v1/audit", token, since=middle, limit=200).get_json()["items"]
    until = get(client, "/api/v1/audit", token, until=middle, limit=200).get_json()["items"]
    assert all(r["recorded_at"] >= middle for r in since)
    assert all(r["recorded_at"] < middle for r in until)
    assert {r["seq"] for r in until} | {r["seq"] for r in since} >= set(everything)
    for bad in ({"limit": 201}, {"limit": 0}, {"after_seq": -1}):
        assert get(client, "/api/v1/audit", token, **bad).status_code == 400


@pytest.mark.parametrize(("role", "site"), [("investigator", "01"), ("monitor", "01"),
                                            ("admin", None)])
def test_only_the_audit_trail_readers_get_it(role, site, make, client, two_sites):
    user, token = api_user(make, role, site)
    assert get(client, "/api/v1/audit", token).status_code == 403
    assert denied() == [(user.username, "api.list_audit")]


# --- the OpenAPI document --------------------------------------------------------------------------

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def openapi_document() -> dict:
    return json.loads(OPENAPI.read_text(encoding="utf-8"))


def api_routes(app: Flask) -> set[tuple[str, str]]:
    """(path as OpenAPI writes it, method) of every route under the API's prefix."""
    prefix = api_bp.url_prefix
    return {(re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule[len(prefix):]), method.lower())
            for rule in app.url_map.iter_rules() if rule.rule.startswith(prefix + "/")
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def documented(document: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, operations in document["paths"].items()
            for method in operations if method in HTTP_METHODS}


def undocumented(app: Flask, document: dict) -> tuple[set, set]:
    """(routes the document lacks, documented operations no route serves)."""
    routes, doc = api_routes(app), documented(document)
    return routes - doc, doc - routes


def test_the_openapi_document_describes_exactly_the_routes_of_the_api(app):
    document = openapi_document()
    assert document["openapi"].startswith("3.0")
    assert document["servers"] == [{"url": api_bp.url_prefix}]
    assert len(api_routes(app)) == 5
    assert undocumented(app, document) == (set(), set())


def test_the_comparison_reports_a_route_missing_from_the_document_and_a_stale_path():
    throwaway = create_app("test", DATABASE_URL="sqlite://")
    throwaway.add_url_rule(api_bp.url_prefix + "/subjects/<code>/queries/<int:query_id>",
                           "api_undocumented", lambda code, query_id: "")
    document = openapi_document()
    document["paths"]["/sites"] = {"get": {}}
    del document["paths"]["/audit"]
    missing, stale = undocumented(throwaway, document)
    assert missing == {("/subjects/{code}/queries/{query_id}", "get"), ("/audit", "get")}
    assert stale == {("/sites", "get")}


def test_every_reference_of_the_document_resolves_and_every_operation_is_secured():
    document = openapi_document()
    text = json.dumps(document)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node = document
        for part in ref.split("/"):
            node = node[part]  # KeyError: a reference to nothing
    assert document["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if operation.get("security") == []:
                assert path == "/openapi.json"
                continue
            assert {"401", "403"} <= set(operation["responses"]), path
            declared = {p["$ref"].rsplit("/", 1)[-1] if "$ref" in p else p["name"]
                        for p in operation.get("parameters", [])}
            assert set(re.findall(r"{(\w+)}", path)) <= declared, path


def _schema_keys(document: dict, name: str) -> set[str]:
    return set(document["components"]["schemas"][name]["properties"])


def test_the_answers_have_the_fields_the_document_states(make, client, db):
    subject = make.subject("01")
    save_toy(subject)
    _user, token = api_user(make, "auditor")
    document = openapi_document()
    listing = get(client, "/api/v1/subjects", token).get_json()
    assert set(listing) == _schema_keys(document, "Page") | {"items"}
    assert set(listing["items"][0]) == _schema_keys(document, "Subject")
    forms = get(client, f"/api/v1/subjects/{subject.code}/forms", token).get_json()
    assert set(forms["items"][0]) == _schema_keys(document, "Form")
    assert set(forms["items"][0]["items"][0]) == _schema_keys(document, "ItemValue")
    audit = get(client, "/api/v1/audit", token).get_json()
    assert set(audit) == _schema_keys(document, "AuditPage")
    assert set(audit["items"][0]) == _schema_keys(document, "AuditRecord")
    error = get(client, "/api/v1/audit", token, limit=0).get_json()
    assert set(error) == _schema_keys(document, "Error")


def test_the_document_is_served_to_anyone(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.is_json
    assert response.get_json() == openapi_document()


def test_the_document_is_shipped_with_the_package():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert "api/*.json" in pyproject["tool"]["setuptools"]["package-data"]["ecrf"]

