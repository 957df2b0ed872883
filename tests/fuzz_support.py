"""Fuzzing the state-changing endpoints: the world they act on, the bodies, and the oracle.

The world is built once per module, on one connection inside an outer transaction; each request
runs inside a savepoint of its own that is rolled back afterwards, so every request meets the same
world (two activated sites with the same objects on each, a site not yet activated, one account
per walking actor). The oracle compares the database before and after each request: a refused
request changes nothing but the security log, an accepted one changes only what it records in
the audit trail, within the user's sites, and the chain still verifies.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from types import SimpleNamespace
from urllib.parse import quote_from_bytes, urlsplit

import sqlalchemy as sa
from flask import Flask, url_for
from hypothesis import strategies as st

from ecrf.access.models import Grant
from ecrf.access.roles import ROLES
from ecrf.audit import chain
from ecrf.audit.models import Audited, AuditRecord
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.auth.models import User
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.database import MAX_ID, utcnow
from ecrf.extensions import db
from ecrf.review import closure
from ecrf.study.models import Site, Subject

#: what makes a request state-changing
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: the columns a refused password or code check changes on the account it names (the count of
#: failures in a row and the lock-out), recorded by the system account
SECURITY_COLUMNS = {"user": frozenset({"failed_logins", "locked_at"})}


def is_security_record(row, system_id: int) -> bool:
    """What a refused request may still write: the record of the refused access, and what the
    system account records of a failed password or code check (the failure, the count of
    failures in a row, the lock-out it causes, the lifting of a lock whose time has passed)."""
    action = row.action
    if action == "access.denied":
        return True
    return row.user_id == system_id and (
        action in ("auth.locked", "auth.unlocked")
        or (action.startswith("auth.") and action.endswith("_failed"))
        or (action == "user.update" and row.field in SECURITY_COLUMNS["user"]))


#: tables of the audit trail itself (compared through the chain, not row by row)
TRAIL_TABLES = frozenset({"audit_trail", "audit_value", "audit_chain_head"})

SITE, OTHER_SITE = "01", "02"
TOY_CRF, TOY_VISIT = "toy_vitals", "D1"


def state_changing_endpoints(app: Flask) -> list[tuple[str, str]]:
    """Every (method, endpoint) of the URL map that may change state: a new one is fuzzed too."""
    return sorted({(method, rule.endpoint) for rule in app.url_map.iter_rules()
                   for method in rule.methods & WRITE_METHODS})


# --- the request counter ---------------------------------------------------------------------

#: requests sent: "total" and per outcome
REQUESTS: Counter = Counter()
#: requests sent per (actor, endpoint), and those of them that changed something
PAIRS: Counter = Counter()
CHANGED: Counter = Counter()


class RequestReport:
    """Prints, at the end of the run, how many fuzzed requests were sent (and per outcome)."""

    def pytest_terminal_summary(self, terminalreporter):
        if not REQUESTS:
            return
        detail = ", ".join(f"{k} {v}" for k, v in sorted(REQUESTS.items()) if k != "total")
        changed = {e for (_a, e), n in CHANGED.items() if n}
        terminalreporter.write_sep("-", "endpoint fuzzing")
        endpoints = {e for _a, e in PAIRS}
        terminalreporter.write_line(
            f"fuzzed requests: {REQUESTS['total']} ({detail}) to {len(endpoints)} endpoints as "
            f"{len({a for a, _e in PAIRS})} actors; {len(changed)} endpoints accepted at least "
            f"one change")
        if endpoints - changed:
            terminalreporter.write_line("no change accepted by: " + ", ".join(
                sorted(endpoints - changed)))


# --- the world -------------------------------------------------------------------------------


@dataclass
class SiteObjects:
    """What each activated site holds, as ids (reloaded in each request's session)."""

    site_id: int
    code: str
    subject_id: int
    form_id: int
    queries: list[int] = field(default_factory=list)
    delegation_id: int = 0
    export_id: int = 0
    flagged_seq: int = 0


@dataclass
class World:
    sites: dict[str, SiteObjects]
    new_site_id: int
    users: dict[str, int]  # walking actor -> user id
    target_id: int
    target_grant_id: int
    tokens: dict[str, tuple[int, str]]  # walking actor -> (token id, secret)
    #: values any field may be given: ids and codes of every site's objects, usernames
    known_values: list[str] = field(default_factory=list)
    #: field names and the values seen for them in the pages, per endpoint
    fields: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def username(actor: str) -> str:
    return "fuzz-" + actor.replace("_", "-")


def build_world(actors: dict[str, tuple[str | None, str | None]]) -> World:
    """Sites 01 and 02 with the same objects each, site 03 not activated (frozen and locked), one
    account per actor, a locked account holding a grant, and an API token per account."""
    from ecrf.access.grants import Access
    from ecrf.api.tokens import create_token
    from ecrf.exports import jobs
    from ecrf.review.delegation import add_entry, site_today
    from ecrf.review.queries import answer, raise_query
    from ecrf.review.sdv import verify_items
    from tests.factories import Factories

    make = Factories()
    sites = {code: make.site(code) for code in (SITE, OTHER_SITE)}
    users = {actor: make.user(username(actor), role=role, site=site)
             for actor, (role, site) in actors.items() if role is not None}
    manager = make.user("fuzz-query-dm", role="data_manager")
    target = make.user("fuzz-target", role="monitor", site=OTHER_SITE)
    with unit_of_work(system_actor(), Reason.system("locked for the fuzzing")):
        target.locked_at, target.failed_logins = utcnow(), 5
    objects = {}
    for code, site in sites.items():
        subject = make.subject(site)
        for weight in ("70", "71", "72", "73", "74"):  # the fourth change is flagged for review
            saved = save_form(system_actor(), subject, TOY_CRF, Slot(TOY_VISIT),
                              Submitted({"weight": weight, "fever": "N"}),
                              reason=Reason("entry_error", "fuzzing"))
            assert saved.ok, saved.errors
        form = saved.instance
        flagged = db.session.scalar(sa.select(sa.func.max(AuditRecord.seq)).where(
            AuditRecord.action == "item.update", AuditRecord.subject == subject.code))
        monitor = make.user(f"fuzz-monitor-{code}", role="monitor", site=site)
        verify_items(Access.for_user(monitor, "sdv.verify").actor(site.id), subject, form,
                     ["weight"])
        # the queries are on another subject's form: an open query would keep this one's
        # visit from being signed
        queried = make.subject(site)
        on_form = save_form(system_actor(), queried, TOY_CRF, Slot(TOY_VISIT),
                            Submitted({"weight": "80", "fever": "N"})).instance
        dm = Access.for_user(manager, "query.manage").actor(site.id)
        investigator = make.user(f"fuzz-inv-{code}", role="investigator", site=site)
        open_query = raise_query(dm, on_form, "weight", "fuzzing: open")
        answered = raise_query(dm, on_form, "fever", "fuzzing: answered")
        answer(Access.for_user(investigator, "query.answer").actor(site.id), answered, "fuzzing")
        line = add_entry(system_actor(), site, investigator, "sign",
                         site_today(site).replace(day=1))
        export = jobs.export_now(system_actor(), "audit_jsonl", jobs.Scope(site=site))
        objects[code] = SiteObjects(site.id, code, subject.id, form.id,
                                    [open_query.id, answered.id], line.id, export.id, flagged)
    new_site = make.site("03", activated=False)
    for action in ("freeze", "lock"):
        closure.change(system_actor(), closure.Scope.of_site(new_site), action)
    tokens = {}
    for actor, user in users.items():
        row, secret = create_token(user, "fuzzing")
        tokens[actor] = (row.id, secret)
    world = World(objects, new_site.id, {a: u.id for a, u in users.items()}, target.id,
                  target.grants[0].id, tokens)
    subjects = db.session.scalars(sa.select(Subject)).all()
    world.known_values = sorted({str(v) for v in itertools.chain(
        (s.site_id for s in objects.values()), [new_site.id, target.id, target.grants[0].id],
        (s.form_id for s in objects.values()), (q for s in objects.values() for q in s.queries),
        (s.delegation_id for s in objects.values()), (s.export_id for s in objects.values()),
        (s.flagged_seq for s in objects.values()), (t[0] for t in tokens.values()),
        (u.id for u in users.values()), (u.username for u in users.values()),
        (s.code for s in subjects), (s.code for s in sites.values()), ["03"])})
    return world


def namespace(world: World, actor: str, target: str, *, query_index: int = 0) -> SimpleNamespace:
    """The world as the access walk's requests read it (``tests/test_access_rules.py``: its
    ``CALLS`` bodies and ``URL_PARAMS`` act on the objects of site "02"), with the ``target``
    site's objects in that place: the walk's requests then act on either site's objects."""
    other = SITE if target == OTHER_SITE else OTHER_SITE
    objs = world.sites[target]
    site = {code: db.session.get(Site, world.sites[code].site_id) for code in world.sites}
    subject = {code: db.session.get(Subject, world.sites[code].subject_id) for code in world.sites}
    from ecrf.casebook.models import FormInstance
    from ecrf.exports.models import ApiToken, ExportJob
    from ecrf.review.models import DelegationEntry, Query

    form = db.session.get(FormInstance, objs.form_id)
    holder_actor = actor if actor in world.users else "investigator"
    holder = db.session.get(User, world.users[holder_actor])
    token_id, secret = world.tokens[holder_actor]
    return SimpleNamespace(
        sites={SITE: site[other], OTHER_SITE: site[target]},
        subjects={SITE: subject[other], OTHER_SITE: subject[target]},
        users={holder_actor: holder}, holder=holder,
        target=db.session.get(User, world.target_id),
        target_grant=db.session.get(Grant, world.target_grant_id),
        form=form,
        form_page=(f"/subjects/{subject[target].code}/visits/{form.visit_key}/"
                   f"{form.visit_repeat}/forms/{form.crf_key}/{form.form_repeat}"),
        new_site=db.session.get(Site, world.new_site_id),
        # the objects the walk would make on first use, made once for the whole world
        query=db.session.get(Query, objs.queries[query_index % len(objs.queries)]),
        query_answered=True,
        delegation_line=db.session.get(DelegationEntry, objs.delegation_id),
        export=db.session.get(ExportJob, objs.export_id),
        api_token=(db.session.get(ApiToken, token_id), secret),
        flagged_seq=objs.flagged_seq,
    )


# --- field names, read from the pages --------------------------------------------------------


class FormFields(HTMLParser):
    """The POST forms of a page: action -> {field name: values seen (hidden, options, ...)}."""

    def __init__(self):
        super().__init__()
        self.forms: list[tuple[str, dict[str, list[str]]]] = []
        self._current: dict[str, list[str]] | None = None
        self._select: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            if (a.get("method") or "get").lower() == "post":
                self._current = {}
                self.forms.append((a.get("action") or "", self._current))
            return
        if self._current is None:
            return
        if tag in ("input", "textarea", "select", "button") and a.get("name"):
            values = self._current.setdefault(a["name"], [])
            if a.get("value") is not None and a["value"] not in values:
                values.append(a["value"])
            self._select = a["name"] if tag == "select" else self._select
        elif tag == "option" and self._select and a.get("value") is not None:
            values = self._current.setdefault(self._select, [])
            if a["value"] not in values:
                values.append(a["value"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._current = None
        elif tag == "select":
            self._select = None


def collect_fields(app: Flask, pages: dict[str, str], into: dict[str, dict[str, list[str]]]) -> None:
    """Add the POST forms of ``pages`` (their path -> HTML) to ``into``, by the endpoint their
    action reaches."""
    adapter = app.url_map.bind("localhost")
    for path, html in pages.items():
        parser = FormFields()
        parser.feed(html)
        for action, fields in parser.forms:
            target = urlsplit(action).path or path
            try:
                endpoint, _args = adapter.match(target, method="POST")
            except Exception:  # noqa: S112 (an action outside the app: nothing to learn)
                continue
            known = into.setdefault(endpoint, {})
            for name, values in fields.items():
                seen = known.setdefault(name, [])
                seen.extend(v for v in values if v not in seen and len(seen) < 12)


# --- hostile values ----------------------------------------------------------------------------

HUGE = 100_000
WRONG_TYPES = ["", " ", "0", "-1", "1.5", "1e309", "NaN", "-inf", "99999999999999999999999",
               str(2**63), str(-(2**63) - 1), "0x1F", "true", "null", "None", "[]", "{}", "[1, 2]",
               '{"a": 1}', "2024-02-30", "2024-13-01", "31/12/2024", "24:00", "00:00:00",
               "1970-01-01T00:00", "9999-12-31", "0000-00-00", "../../etc/passwd", "/\\evil.example",
               "//evil.example/", "javascript:alert(1)", "%00", "%s%s%n", "{{7*7}}",
               "<script>alert(1)</script>", "' OR '1'='1", "\"; DROP TABLE subject; --"]
UNICODE = ["\x00", "a\x00b", "\u202eevil\u202c", "\u200f\u05e9\u05dc\u05d5\u05dd",
           "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\ufeff", "\u00e9\u0301", "Z\u0335\u0321a",
           "\U0001f600" * 3, "\u2028\u2029", "\r\n\t", "\uffff", "\ud800", "x\udfffy", "\U0010ffff",
           "\u0130stanbul", "\u00df", "\u3000", "\u2003"]


def huge() -> st.SearchStrategy[str]:
    return st.sampled_from(["x", "9", "\u00e9", "\U0001f600", "<", "a\x00"]).map(
        lambda c: (c * HUGE)[:HUGE])


def values(known: list[str], seen: list[str]) -> st.SearchStrategy[str]:
    """A value for a field: one seen in the page or in a valid body, an id of any site's objects,
    a wrong type, unicode (NUL, RTL, lone surrogates), or 100k characters."""
    choices = [st.sampled_from(WRONG_TYPES), st.sampled_from(UNICODE), st.text(max_size=30),
               huge(), st.integers(-(2**70), 2**70).map(str)]
    if known:
        choices.append(st.sampled_from(known))
    if seen:
        choices.insert(0, st.sampled_from(seen))
        choices.insert(0, st.sampled_from(seen))
    return st.one_of(choices)


def encode(value: str) -> bytes:
    """A value as the bytes a hostile client may send: UTF-8, with a lone surrogate sent as the
    invalid UTF-8 it would be encoded to (``surrogatepass``)."""
    return value.encode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=512)
def _quoted(value: str) -> bytes:
    return quote_from_bytes(encode(value), safe="").encode()


def urlencoded(pairs: list[tuple[str, str]]) -> bytes:
    """An ``application/x-www-form-urlencoded`` body; repeated names stay repeated."""
    return b"&".join(_quoted(k) + b"=" + _quoted(v) for k, v in pairs)


def shown(pairs: list[tuple[str, str]]) -> str:
    """The pairs of a request as a finding shows them (long values cut)."""
    return repr([(k[:40], v if len(v) <= 60 else f"{v[:20]}...({len(v)} chars)") for k, v in pairs])


def _mutation(draw, name: str, choices: list[str], known: list[str]) -> list[tuple[str, str]]:
    """A field missing, given once or repeated, with a valid, another site's or hostile value."""
    how = draw(st.sampled_from(["fuzz", "fuzz", "missing", "repeated"]))
    if how == "missing":
        return []
    count = draw(st.integers(2, 3)) if how == "repeated" else 1
    return [(name, draw(values(known, choices))) for _ in range(count)]


@st.composite
def bodies(draw, seed: dict[str, str], seen: dict[str, list[str]], known: list[str]):
    """Form pairs from the endpoint's field names: the valid body with one field changed, or
    every field changed at random; sometimes with an unknown field too."""
    names = list(dict.fromkeys([*seed, *seen]))
    choices = {name: list(dict.fromkeys([*([seed[name]] if name in seed else []),
                                          *seen.get(name, [])])) for name in names}
    if names and draw(st.booleans()):  # the valid body, one field changed
        changed = draw(st.sampled_from(names))
        pairs = []
        for name in names:
            if name == changed:
                pairs += _mutation(draw, name, choices[name], known)
            elif name in seed:
                pairs.append((name, seed[name]))
    else:
        pairs = []
        for name in names:
            if name in seed and draw(st.booleans()):
                pairs.append((name, seed[name]))
            else:
                pairs += _mutation(draw, name, choices[name], known)
    if draw(st.integers(0, 3)) == 0:
        pairs.append((draw(st.sampled_from(["extra", "id", "user_id", "site_id", "role", "next",
                                             "query_id", "__proto__", "a" * 300, "\x00"])),
                      draw(values(known, []))))
    return draw(st.permutations(pairs)) if draw(st.integers(0, 3)) == 0 else pairs


# --- the oracle --------------------------------------------------------------------------------


def _table_digest(table: sa.Table, columns) -> str:
    cols = [c for c in table.columns if c.name in columns]
    rows = db.session.execute(sa.select(*cols).order_by(*table.primary_key.columns)).all()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def audited_tables() -> dict[str, Audited]:
    """Table name -> its audited model."""
    return {m.class_.__table__.name: m.class_ for m in db.Model.registry.mappers
            if issubclass(m.class_, Audited) and hasattr(m.class_, "__audit__")}


@dataclass(frozen=True)
class Snapshot:
    head: tuple[int, str]
    #: table -> digest of its rows, security columns aside
    tables: dict[str, str]
    #: table -> digest of the columns its audit rows record (audited tables)
    recorded: dict[str, str]
    #: table -> digest of its security columns
    security: dict[str, str]


def snapshot() -> Snapshot:
    tables, recorded, security = {}, {}, {}
    audited = audited_tables()
    for table in db.metadata.sorted_tables:
        if table.name in TRAIL_TABLES or table.name.startswith("procrastinate_"):
            continue
        names = {c.name for c in table.columns}
        secure = SECURITY_COLUMNS.get(table.name, frozenset())
        tables[table.name] = _table_digest(table, names - secure)
        if secure:
            security[table.name] = _table_digest(table, secure | {"id"})
        if table.name in audited:
            spec = audited[table.name].__audit__
            recorded[table.name] = _table_digest(table, names - (spec.exclude - {"id"}))
    return Snapshot(chain.stored_head(db.session), tables, recorded, security)


@dataclass
class Identity:
    """Who sends the request, and the scope their grants give."""

    actor: str
    user_id: int | None
    roles: set[str]
    #: site codes of site-scoped grants; None when a study-wide grant covers every site
    site_codes: set[str] | None

    @classmethod
    def of(cls, world: World, actor: str, actors) -> Identity:
        role, site = actors[actor]
        if role is None:
            return cls(actor, None, set(), set())
        scoped = ROLES[role].site_scoped
        return cls(actor, world.users[actor], {role}, {site} if scoped else None)


class Finding(AssertionError):
    """A request that broke an invariant: a 500, a partial write, a change outside scope."""


def check(identity: Identity, before: Snapshot, status: int, refused: bool, describe: str) -> str:
    """Compare the database with ``before``; raise ``Finding`` on any broken invariant. Returns
    the outcome's name for the counter."""
    if status >= 500:
        raise Finding(f"{status}: {describe}")
    after = snapshot()
    rows = list(db.session.scalars(sa.select(AuditRecord).where(
        AuditRecord.seq > before.head[0]).order_by(AuditRecord.seq)))
    if [r.seq for r in rows] != list(range(before.head[0] + 1, after.head[0] + 1)):
        raise Finding(f"the trail's rows {[r.seq for r in rows]} do not end at the head "
                      f"{after.head[0]}: {describe}")
    if rows and rows[0].prev_hash != before.head[1]:
        raise Finding(f"the new rows do not link to the previous head: {describe}")
    changed = {t for t in after.tables if after.tables[t] != before.tables.get(t)}
    recorded = {t for t in after.recorded if after.recorded[t] != before.recorded.get(t)}
    security_changed = {t for t in after.security if after.security[t] != before.security.get(t)}
    system_id = system_actor().user_id
    written = [r.action for r in rows if not is_security_record(r, system_id)]
    if refused and (written or changed):
        raise Finding(f"refused ({status}) but wrote {written or ''} {sorted(changed) or ''}: "
                      f"{describe}")
    entities = {r.entity_type for r in rows}
    audited = audited_tables()
    unrecorded = sorted(t for t in recorded | security_changed
                        if audited[t].__audit__.entity not in entities)
    if unrecorded:
        raise Finding(f"{unrecorded} changed without an audit row: {describe}")
    for row in rows:
        problem = out_of_scope(identity, row, system_id)
        if problem:
            raise Finding(f"seq {row.seq} {row.action} ({row.site}/{row.subject}): {problem}: "
                          f"{describe}")
    if rows:
        verified = chain.verify_db(db.session)
        if not verified.ok:
            raise Finding(f"the chain no longer verifies: {verified.problems[:3]}: {describe}")
    if refused:
        return "refused"
    return "changed" if written else "unchanged"


def out_of_scope(identity: Identity, row: AuditRecord, system_id: int) -> str | None:
    """Why an audit row written by ``identity``'s request lies outside their scope, if it does."""
    if is_security_record(row, system_id):
        if row.user_id == system_id or row.user_id == identity.user_id:
            return None
        return "a refusal recorded under another account"
    if identity.user_id is None:  # an anonymous visitor: only a login, by the account it names
        if row.action.startswith("auth.") and row.entity_type == "user" \
                and row.user_id is not None and row.entity_id == str(row.user_id):
            return None
        return "written by an anonymous request"
    if row.user_id != identity.user_id:
        return f"written as user {row.user_id}, not the requester {identity.user_id}"
    if row.grant_id is None:  # one's own account, whatever the grants
        if row.role is not None or row.actor_site is not None:
            return "a role without a grant"
        if row.subject is not None:
            return "clinical data changed without a grant"
        if row.site is not None and identity.site_codes is not None \
                and row.site not in identity.site_codes:
            return "another site's object changed without a grant"
        return None
    grant = db.session.get(Grant, row.grant_id)
    if grant is None or grant.user_id != identity.user_id or grant.role != row.role:
        return "a grant that is not the requester's"
    if row.role not in identity.roles:
        return f"role {row.role} not held"
    if row.subject is not None and "subject.view" not in ROLES[row.role].permissions:
        return f"clinical data changed by a {row.role}"
    if identity.site_codes is not None:
        if row.site is None:
            return "a study-level change by a site-scoped role"
        if row.site not in identity.site_codes or row.actor_site not in identity.site_codes:
            return f"site {row.site} is not one of {sorted(identity.site_codes)}"
    return None


# --- URLs --------------------------------------------------------------------------------------

HOSTILE_PATH = ["x", "0", "-1", "%00", "\u202e", "\U0001f600", "a" * 300, "..", "02-999", "01-001x",
                "D999", "toy_vitals\x00", "\u00e9", "%2F"]


#: URL arguments the access walk does not fill yet (it is the first place to add one)
FALLBACK_PARAMS = {
    "seq": lambda ns: ns.flagged_seq,
    "side": lambda ns: "new",
}


def url_of(app: Flask, endpoint: str, args: dict) -> str:
    with app.test_request_context():
        return url_for(endpoint, **args)


def path_args(app: Flask, endpoint: str, filled: dict[str, object]) -> st.SearchStrategy[dict]:
    """The URL arguments: the world's (either site's), or hostile ones (huge ids, junk codes)."""
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint)
    strategies = {}
    for name in rule.arguments:
        value = filled[name]
        if isinstance(value, int):
            junk = st.sampled_from([0, 999_999, MAX_ID, MAX_ID + 1, 2**63, 2**70])
        else:
            junk = st.sampled_from(HOSTILE_PATH)
        strategies[name] = st.one_of(st.just(value), st.just(value), st.just(value), junk)
    return st.fixed_dictionaries(strategies)

