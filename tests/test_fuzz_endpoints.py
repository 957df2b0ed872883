"""Every state-changing endpoint, fuzzed as every role: no 500, no partial write, nothing outside
the user's scope.

The endpoints are read from the URL map (every rule answering POST, PUT, PATCH or DELETE), so a new
one is fuzzed without being listed here. For each (actor, endpoint) of the access walk's actors
(``tests/test_access_rules.py``: one account per role on site 01, the other site's investigator,
an anonymous visitor), hypothesis builds requests from the walk's valid request for that endpoint
and the field names its pages show: each field missing, repeated, or given a wrong type, 100k
characters, unicode (NUL, right-to-left marks, lone surrogates sent as invalid UTF-8) or an id of
either site's objects, the URL pointing at either site's objects or at junk. Each request is
checked by the oracle of ``tests/fuzz_support.py``:

- the answer is not a server error;
- a refused request (4xx, or a redirect carrying an error message) changes nothing but the
  security log of the refusal;
- every changed audited table is recorded, every new audit row is the requester's own, under
  one of their grants and within their sites, and the chain still verifies.

CI runs a few requests per (actor, endpoint); ``make test-slow`` runs the full version
(``ECRF_FUZZ_EXAMPLES`` sets how many requests per pair in both).
"""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from flask import Blueprint
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import NotFound
from werkzeug.routing import Map, Rule

from ecrf import create_app
from ecrf.access.decorators import requires
from ecrf.database import MAX_ID, MAX_SEQ, parse_key
from ecrf.extensions import db as _db
from tests.conftest import FreshContextClient
from tests.factories import PASSWORD
from tests.fuzz_support import (
    CHANGED,
    FALLBACK_PARAMS,
    OTHER_SITE,
    PAIRS,
    REQUESTS,
    SITE,
    Finding,
    Identity,
    RequestReport,
    bodies,
    build_world,
    check,
    collect_fields,
    namespace,
    path_args,
    shown,
    snapshot,
    state_changing_endpoints,
    url_of,
    urlencoded,
    username,
    values,
)
from tests.test_access_rules import ACTORS, CALLS, ROUTES, URL_PARAMS

ENDPOINTS = state_changing_endpoints(create_app("test", DATABASE_URL="sqlite://"))
CASES = [pytest.param(actor, method, endpoint, id=f"{actor}-{method}-{endpoint}")
         for actor in ACTORS for method, endpoint in ENDPOINTS]
SHORT = int(os.environ.get("ECRF_FUZZ_EXAMPLES", "4"))
FULL = int(os.environ.get("ECRF_FUZZ_EXAMPLES", "60"))
SETTINGS = {"deadline": None, "database": None, "print_blob": True,
            # a finding is reported as found: shrinking would resend hundreds of requests
            "phases": [Phase.explicit, Phase.generate],
            "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large, HealthCheck.large_base_example]}


@pytest.fixture(scope="session", autouse=True)
def _report(pytestconfig):
    """The number of requests tried, printed in the run's summary."""
    if not pytestconfig.pluginmanager.has_plugin("ecrf-fuzz-report"):
        pytestconfig.pluginmanager.register(RequestReport(), "ecrf-fuzz-report")


def fill(app, endpoint: str, ns) -> dict:
    """The URL arguments of ``endpoint`` for the world seen as ``ns``: the access walk's
    ``URL_PARAMS``, or a fallback for an argument it does not know yet."""
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint)
    params = {**FALLBACK_PARAMS, **URL_PARAMS}
    unknown = rule.arguments - params.keys()
    assert not unknown, f"cannot fill {unknown} of {rule.rule}: add it to URL_PARAMS"
    return {name: params[name](ns) for name in rule.arguments}


class Fuzzer:
    """Sends one request as an actor, inside a savepoint rolled back afterwards, and checks it."""

    def __init__(self, app, connection, world):
        self.app, self.connection, self.world = app, connection, world

    def login(self, client, actor: str) -> None:
        if ACTORS[actor][0] is None:
            return
        response = client.post("/auth/login", data={"username": username(actor),
                                                    "password": PASSWORD})
        assert response.status_code == 302, response.get_data(as_text=True)[:300]

    def request(self, actor: str, method: str, endpoint: str, draw, *, fuzz_body: bool = True) -> str:
        """One request; ``draw`` chooses the target site, the URL and the body."""
        limiter = self.app.extensions.get("ecrf.limiter")
        if limiter is not None and self.app.config.get("RATELIMIT_ENABLED"):
            limiter.reset()  # refused passwords of earlier requests must not refuse this login
        with self.app.app_context():
            savepoint = self.connection.begin_nested()
            try:
                return self._request(actor, method, endpoint, draw, fuzz_body)
            finally:
                _db.session.remove()
                savepoint.rollback()

    def _request(self, actor, method, endpoint, draw, fuzz_body) -> str:
        target = draw(st.sampled_from([SITE, OTHER_SITE]))
        ns = namespace(self.world, actor, target, query_index=draw(st.integers(0, 1)))
        call = CALLS.get((method, endpoint))
        seed = {k: str(v) for k, v in (call.data(ns) if call else {}).items()}
        filled = fill(self.app, endpoint, ns)
        args = draw(path_args(self.app, endpoint, filled)) if fuzz_body else filled
        seen = self.world.fields.get(endpoint, {})
        known = self.world.known_values
        pairs = draw(bodies(seed, seen, known)) if fuzz_body else list(seed.items())
        query = draw(st.lists(st.tuples(st.sampled_from(["query", "next", "page", *seen]),
                                        values(known, [])), max_size=2)) if fuzz_body else []
        _db.session.commit()  # what the seed made is part of the world before the request
        identity = Identity.of(self.world, actor, ACTORS)
        client = FreshContextClient(self.app, self.app.response_class, use_cookies=True)
        self.login(client, actor)
        url = url_of(self.app, endpoint, args)
        if query:
            url += "?" + urlencoded(query).decode()
        describe = f"{actor} {method} {url[:200]} {shown(pairs)[:600]}"
        before = snapshot()
        _db.session.remove()
        try:
            response = client.open(url, method=method, data=urlencoded(pairs),
                                   content_type="application/x-www-form-urlencoded")
        except Exception as e:
            raise Finding(f"{type(e).__name__}: {e}: {describe}") from e
        status = self.last_status = response.status_code
        response.close()
        with client.session_transaction() as session:
            errors = [m for c, m in session.get("_flashes", []) if c == "error"]
        outcome = check(identity, before, status, status >= 400 or bool(errors), describe)
        REQUESTS["total"] += 1
        REQUESTS[outcome] += 1
        PAIRS[actor, endpoint] += 1
        CHANGED[actor, endpoint] += outcome == "changed"
        return outcome


def _crawl(app, connection, world) -> None:
    """Read the field names of every POST form the GET pages show, as each actor, on both sites."""
    gets = [endpoint for method, endpoint in ROUTES if method == "GET" and endpoint not in
            {"static", "audit.export_csv", "audit.export_jsonl", "exports.download_export"}
            and not endpoint.startswith("api.")]
    for actor in ACTORS:
        with app.app_context():
            savepoint = connection.begin_nested()
            try:
                client = FreshContextClient(app, app.response_class, use_cookies=True)
                Fuzzer(app, connection, world).login(client, actor)
                for target in (SITE, OTHER_SITE):
                    ns = namespace(world, actor, target)
                    for endpoint in gets:
                        url = url_of(app, endpoint, fill(app, endpoint, ns))
                        response = client.get(url)
                        if response.status_code == 200 and response.mimetype == "text/html":
                            collect_fields(app, {url: response.get_data(as_text=True)},
                                           world.fields)
                        response.close()
            finally:
                _db.session.remove()
                savepoint.rollback()


@pytest.fixture(scope="module")
def fuzzer(app):
    """The world, built once for the module on a connection whose outer transaction is rolled
    back at the end (the ``db`` fixture's technique, at module scope)."""
    with app.app_context():
        connection = _db.engine.connect()
        outer = connection.begin()
        _db.session.remove()
        _db.session.configure(bind=connection, join_transaction_mode="create_savepoint")
        try:
            world = build_world(ACTORS)
            _db.session.remove()
            _crawl(app, connection, world)
            yield Fuzzer(app, connection, world)
        finally:
            _db.session.remove()
            _db.session.configure(bind=None)
            outer.rollback()
            connection.close()


# --- the endpoints fuzzed are the URL map's ----------------------------------------------------


@pytest.mark.requirement("P11-10g", "E6-4.3.3")
def test_the_fuzzed_endpoints_are_every_state_changing_rule_of_the_url_map(app):
    assert state_changing_endpoints(app) == ENDPOINTS
    assert len(ENDPOINTS) >= 30
    gets_only = {e for m, e in ROUTES if m == "GET"} - {e for _m, e in ENDPOINTS}
    assert "subjects.list_subjects" in gets_only  # reading pages are not fuzzed here


@pytest.mark.requirement("P11-10g", "E6-4.3.3")
def test_a_new_state_changing_route_is_fuzzed_without_being_listed():
    throwaway = create_app("test", DATABASE_URL="sqlite://")
    added = Blueprint("added", __name__, url_prefix="/added")

    @added.route("/thing", methods=["PUT", "DELETE"])
    @requires("crf.enter")
    def thing():
        return "changed"

    @added.route("/page")
    @requires("crf.view")
    def page():
        return "read"

    throwaway.register_blueprint(added)
    found = set(state_changing_endpoints(throwaway)) - set(ENDPOINTS)
    assert found == {("PUT", "added.thing"), ("DELETE", "added.thing")}


def test_the_pages_give_the_real_field_names_of_the_forms(fuzzer):
    from tests.toy_crf import DEFINITION

    fields = fuzzer.world.fields
    assert {item.key for item in DEFINITION.items} <= set(fields["casebook.form_page"])
    assert {"reason_code", "reason_text", "submission_token", "row_version"} <= set(
        fields["casebook.form_page"])
    assert {"status", "reason_text"} <= set(fields["subjects.change_status"])
    assert {"level", "site", "subject", "next"} <= set(fields["closure.freeze"])
    assert {"username", "password"} <= set(fields["auth.login"])
    sites = {str(s.site_id) for s in fuzzer.world.sites.values()}
    assert sites <= set(fields["subjects.enrol"]["site"])  # each site's id, from the choices


# --- the fuzzing itself ------------------------------------------------------------------------


def _fuzz(fuzzer, actor, method, endpoint, data):
    fuzzer.request(actor, method, endpoint, data.draw)


@pytest.mark.parametrize(("actor", "method", "endpoint"), CASES)
@settings(max_examples=SHORT, **SETTINGS)
@given(data=st.data())
@pytest.mark.requirement("P11-10g", "E6-4.3.3")
def test_fuzz(fuzzer, actor, method, endpoint, data):
    _fuzz(fuzzer, actor, method, endpoint, data)


@pytest.mark.slow
@pytest.mark.parametrize(("actor", "method", "endpoint"), CASES)
@settings(max_examples=FULL, **SETTINGS)
@given(data=st.data())
@pytest.mark.requirement("P11-10g", "E6-4.3.3")
def test_fuzz_full(fuzzer, actor, method, endpoint, data):
    _fuzz(fuzzer, actor, method, endpoint, data)


# --- the oracle catches what it is meant to catch (negative controls) ----------------------------


def scripted(*answers):
    """A ``draw`` that gives these answers in order: the target site, the query's index, then
    (when the body is fuzzed) the URL arguments, the form pairs and the query string."""
    queue = list(answers)
    return lambda strategy: queue.pop(0)


def _valid(fuzzer, actor, endpoint):
    """The walk's valid request for ``endpoint`` on the actor's own site's objects."""
    return fuzzer.request(actor, "POST", endpoint, scripted(ACTORS[actor][1] or SITE, 0),
                          fuzz_body=False)


def test_the_valid_request_changes_and_passes_the_oracle(fuzzer):
    assert _valid(fuzzer, "investigator", "subjects.change_status") == "changed"


@pytest.mark.requirement("E6-4.3.3")
def test_control_a_server_error_is_a_finding(fuzzer, monkeypatch):
    from ecrf.study import services

    def broken(*args, **kwargs):
        raise RuntimeError("a crash in the service")

    monkeypatch.setattr(services, "change_subject_status", broken)
    with pytest.raises(Finding, match="RuntimeError"):
        _valid(fuzzer, "investigator", "subjects.change_status")
    monkeypatch.setitem(fuzzer.app.config, "PROPAGATE_EXCEPTIONS", False)  # production: a 500
    with pytest.raises(Finding, match="^500"):
        _valid(fuzzer, "investigator", "subjects.change_status")


@pytest.mark.requirement("E6-4.3.3")
def test_control_a_partial_write_behind_an_error_message_is_a_finding(fuzzer, monkeypatch):
    """The status change is saved, then the view reports a failure: the oracle sees a refused
    request that wrote."""
    from ecrf.study import services

    real = services.change_subject_status

    def half_done(*args, **kwargs):
        real(*args, **kwargs)
        raise services.StudyError("a failure after the first unit of work committed")

    monkeypatch.setattr(services, "change_subject_status", half_done)
    with pytest.raises(Finding, match="refused .* but wrote"):
        _valid(fuzzer, "investigator", "subjects.change_status")


@pytest.mark.requirement("P11-10g")
def test_control_a_change_outside_the_users_sites_is_a_finding(fuzzer, monkeypatch):
    """With the site check of subject loading switched off, site 01's investigator changes the
    status of site 02's subject: the oracle sees a row of a site that is not theirs."""
    from ecrf.access import grants
    from ecrf.subjects import views

    def any_subject(code):
        return _db.session.scalar(sa.select(views.Subject).where(views.Subject.code == code))

    real_actor = grants.Access.actor

    def actor_of_first_grant(self, site_id=None):
        return real_actor(self, next(iter(self.site_ids() or [None])))

    monkeypatch.setattr(views, "subject_or_404", any_subject)
    monkeypatch.setattr(grants.Access, "actor", actor_of_first_grant)

    with pytest.raises(Finding, match="site 02 is not one of"):
        fuzzer.request("investigator", "POST", "subjects.change_status", scripted(OTHER_SITE, 0),
                       fuzz_body=False)


@pytest.mark.requirement("P11-10e-1", "EMA-2")
def test_control_an_unrecorded_change_is_a_finding(fuzzer, monkeypatch):
    """A change the audit trail does not show (a raw statement on the connection, past the
    flush listener) is found, even on an accepted request."""
    from ecrf.audit.unit_of_work import unit_of_work
    from ecrf.study import services
    from ecrf.study.models import Site

    real = services.change_subject_status

    def with_a_raw_write(actor, subject, status, reason=None):
        with unit_of_work(actor, reason):
            _db.session.connection().execute(sa.update(Site.__table__).where(
                Site.__table__.c.id == subject.site_id).values(name="renamed without a trace"))
            return real(actor, subject, status, reason)

    monkeypatch.setattr(services, "change_subject_status", with_a_raw_write)
    with pytest.raises(Finding, match=r"\['site'\] changed without an audit row"):
        _valid(fuzzer, "investigator", "subjects.change_status")


# --- defects the fuzzing found, fixed: kept as regression tests ---------------------------------


@pytest.mark.parametrize("raw", ["\u00b2", "\u0663", "9" * 100_000, str(2**31), " 1", "+1", "1_0", "",
                                 None])
def test_an_id_sent_as_text_is_ascii_digits_within_an_integer_column_or_nothing(raw):
    assert parse_key(raw) is None


def test_an_id_within_an_integer_column_and_a_seq_within_a_bigint_are_read():
    assert parse_key("0012") == 12
    assert parse_key(str(MAX_ID)) == MAX_ID == 2**31 - 1
    assert parse_key(str(2**40), MAX_SEQ) == 2**40
    assert parse_key(str(2**63), MAX_SEQ) is None


def test_an_id_beyond_an_integer_column_in_a_url_names_nothing(app):
    """The database refuses 2**31 for an ``integer`` id (PostgreSQL) and 2**63 for any (SQLite's
    driver): the route does not match it (404) rather than pass it on; Werkzeug's own converter
    (the control) would."""
    ours = app.url_map.bind("localhost")
    for too_big in (2**31, 2**63):
        with pytest.raises(NotFound):
            ours.match(f"/queries/{too_big}/answer", method="POST")
    assert ours.match(f"/queries/{MAX_ID}/answer", method="POST")[1] == {"query_id": MAX_ID}
    plain = Map([Rule("/queries/<int:query_id>/answer", endpoint="answer", methods=["POST"])])
    assert plain.bind("localhost").match(f"/queries/{2**63}/answer", method="POST")[1] == {
        "query_id": 2**63}


@pytest.mark.parametrize(("actor", "endpoint", "pairs"), [
    ("investigator", "subjects.enrol", [("site", "\u00b2")]),
    ("investigator", "subjects.enrol", [("site", "9" * 100_000)]),
    ("investigator", "subjects.add_screening",
     [("site", "9" * 30), ("screened_on", "2026-01-05"), ("age", "50"), ("sex", "M"),
      ("reason_not_included", "fuzzing")]),
    ("data_manager", "closure.freeze", [("level", "site"), ("site", "9" * 100_000)]),
    ("data_manager", "sdv.set_plan", [("mode", "percentage"), ("percentage", "\u00b2")]),
    ("data_manager", "audit.review_record",
     [("seq", str(2**64)), ("flag", "many_changes"), ("comment", "fuzzing")]),
    ("admin", "admin.add_grant", [("role", "monitor"), ("site", "\u00b2")]),
    ("admin", "admin.add_grant", [("role", "monitor"), ("site", "9" * 30)]),
])
@pytest.mark.requirement("E6-4.3.3")
def test_a_hostile_number_in_a_form_is_refused_not_a_crash(fuzzer, actor, endpoint, pairs):
    url_args = fill_world(fuzzer, actor, endpoint)
    assert fuzzer.request(actor, "POST", endpoint, scripted(SITE, 0, url_args, pairs, [])) \
        == "refused"


@pytest.mark.parametrize(("endpoint", "name"), [("casebook.form_page", "row_version"),
                                                ("queries.answer", "row_version")])
@pytest.mark.requirement("E6-4.3.3")
def test_a_hostile_row_version_is_not_a_crash(fuzzer, endpoint, name):
    url_args = fill_world(fuzzer, "investigator", endpoint)
    pairs = [("weight", "71"), ("fever", "N"), ("text", "fuzzing"), (name, "\u00b9")]
    assert fuzzer.request("investigator", "POST", endpoint,
                          scripted(SITE, 0, url_args, pairs, [])) in {"refused", "changed"}


@pytest.mark.requirement("E6-4.3.3")
def test_a_hostile_query_id_on_the_form_page_is_refused_not_a_crash(fuzzer):
    url_args = fill_world(fuzzer, "investigator", "casebook.form_page")
    pairs = [("weight", "71"), ("fever", "N"), ("query_id", "\u00b2")]
    assert fuzzer.request("investigator", "POST", "casebook.form_page",
                          scripted(SITE, 0, url_args, pairs, [])) == "refused"


SCREENED = [("site", "1"), ("screened_on", "2026-01-05"), ("age", "50"), ("sex", "M")]


def _without_nul_check(app, monkeypatch):
    hooks = app.before_request_funcs[None]
    monkeypatch.setitem(app.before_request_funcs, None,
                        [h for h in hooks if h.__name__ != "_no_nul_character"])
    assert len(app.before_request_funcs[None]) == len(hooks) - 1


def test_a_nul_character_in_a_form_is_refused_before_anything_is_written(fuzzer, monkeypatch):
    """PostgreSQL cannot hold a NUL in text (a server error there); SQLite would store it. Without
    the check (the control) the entry is stored, or the database fails."""
    pairs = [*SCREENED, ("reason_not_included", "not \x00 eligible")]
    send = lambda: fuzzer.request("investigator", "POST", "subjects.add_screening",  # noqa: E731
                                  scripted(SITE, 0, {}, pairs, []))
    site_01 = str(fuzzer.world.sites[SITE].site_id)
    pairs[0] = ("site", site_01)
    assert send() == "refused" and fuzzer.last_status == 400
    _without_nul_check(fuzzer.app, monkeypatch)
    try:
        outcome = send()
    except Finding as e:
        outcome = "server error" if "NUL" in str(e) else str(e)
    assert outcome in {"changed", "server error"}


def test_a_nul_character_in_the_url_is_refused(fuzzer, monkeypatch):
    """Refused as a bad request (400); without the check (the control), the subject is looked
    up: not found (404) on SQLite, a server error on PostgreSQL."""
    def send():
        return fuzzer.request("investigator", "POST", "subjects.change_status",
                              scripted(SITE, 0, {"code": "01-\x00001"}, [("status", "withdrawn")], []))

    assert send() == "refused" and fuzzer.last_status == 400
    _without_nul_check(fuzzer.app, monkeypatch)
    try:
        send()
        assert fuzzer.last_status == 404
    except Finding as e:
        assert "NUL" in str(e)


def fill_world(fuzzer, actor: str, endpoint: str) -> dict:
    """The URL arguments of ``endpoint`` on site 01's objects."""
    with fuzzer.app.app_context():
        try:
            return fill(fuzzer.app, endpoint, namespace(fuzzer.world, actor, SITE))
        finally:
            _db.session.remove()

