"""Electronic signatures of a visit or a whole casebook (21 CFR 11.50, 11.70, 11.100, 11.200).

Who signs: the site's principal investigator, or a sub-investigator with the signing task, by an
active line of the site's delegation log on the day of signing (``delegation.py``), who also holds
``casebook.sign`` on that site through a role grant. Nobody signs on behalf of anyone.

When: once the scope is complete and no query is open on it (``readiness``). Complete means:

* every form instance in the scope has the status complete or not done, and
* every form the schedule expects at each visit of the scope is there, complete or not done. The
  visits of a casebook are those that have data, and the scheduled visits whose window has started
  by today (site calendar, from D0); visits due after a recorded death are not expected (the
  casebook grid's rule). Repeating forms are never expected, only checked when they exist.

No query open: no query in state open or answered on a form instance of the scope.

How: every signing asks again for the username and the password, whatever the session (P11-200);
the username must be the signer's own. The password is checked by the login's own check
(``ecrf.auth.services.check_password``): a wrong one counts toward the lockout exactly like a
failed login and is audited (``auth.signature_failed``); a locked account cannot sign. A username
other than one's own is refused and audited, without checking anyone's password.

What a signature is bound to (P11-70): the SHA-256 (hex) of the UTF-8 bytes of this JSON
document, written with sorted keys, separators "," and ":" and no other whitespace, non-ASCII
characters unescaped::

    {"format": 1, "subject": "<subject code>",
     "visit": "<visit key>" or null (whole casebook), "visit_repeat": <n> or null,
     "forms": [{"visit": "<visit key>", "visit_repeat": <n>, "crf": "<crf key>",
                "form_repeat": <n>, "crf_version": <n>, "status": "<status>",
                "not_done_reason": "<text>" or null,
                "items": {"<item key>": "<value text>", ...}}, ...]}

``forms`` holds every form instance of the scope, ordered by visit key, visit repeat, CRF key and
form repeat. ``items`` holds every stored item value of the form that has a value or a null
flavor, its text being exactly the ``value`` the audit trail records for that item: the typed
value as text (ISO 8601 dates, date-times in UTC, decimals without trailing zeros, multiple
choices as stored) or ``[<null flavor>]`` followed by a space and the comment if there is one.
An inspector can therefore recompute the hash from the data, or from the audit trail as of the
time of signing.

When that content changes, the signature shows as broken and a new signing is needed; signing
again adds a row and keeps the old one (the table is insert-only for the application role).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime

import sqlalchemy as sa
from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import selectinload

from ecrf import database
from ecrf.access.grants import Access
from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.auth.models import User
from ecrf.auth.services import check_password, system_actor
from ecrf.casebook.models import VALUE_COLUMNS, FormInstance, FormStatus, ItemValue
from ecrf.casebook.services import CheckContext, Slot
from ecrf.extensions import db
from ecrf.i18n import N_, Message, msg
from ecrf.review import closure
from ecrf.review.delegation import signing_line, site_today
from ecrf.review.models import SIGNATURE_MEANINGS, Query, QueryState, Signature, SignatureMeaning
from ecrf.study.models import Subject
from ecrf.study.schedule import ended_visits

CONTENT_FORMAT = 1
SIGNED_STATUSES = frozenset({FormStatus.COMPLETE.value, FormStatus.NOT_DONE.value})
OPEN_QUERY_STATES = (QueryState.OPEN.value, QueryState.ANSWERED.value)
#: the attestation texts, marked here for translation: what is stored is the English text of
#: ``SIGNATURE_MEANINGS``, what the signer reads before signing is its translation
MEANING_MESSAGES = (
    N_("I approve the data in this casebook as complete and accurate, and I attest that I "
       "reviewed them."),
)
assert set(MEANING_MESSAGES) == set(SIGNATURE_MEANINGS.values())
MEANING_LABELS = {SignatureMeaning.APPROVAL.value: _l("approval")}

VALID, BROKEN, NEVER = "valid", "broken", "never"


class SigningRefused(Exception):
    """A signing that cannot be done. ``kind``: "authority" (not the PI or delegated, no role on
    the site), "state" (not ready, closed, changed meanwhile) or "credentials"."""

    def __init__(self, message: Message, kind: str):
        super().__init__(str(message))
        self.message, self.kind = message, kind


# --- scopes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignScope:
    """What one signature covers: one visit (key and repeat) or, with no visit, the casebook."""

    visit_key: str | None = None
    visit_repeat: int | None = None

    @classmethod
    def casebook(cls) -> SignScope:
        return cls()

    @classmethod
    def visit(cls, key: str, repeat: int = 1) -> SignScope:
        return cls(key, repeat)

    @classmethod
    def of(cls, signature: Signature) -> SignScope:
        return cls(signature.visit_key, signature.visit_repeat)

    @property
    def is_casebook(self) -> bool:
        return self.visit_key is None

    @property
    def visit_label(self) -> str | None:
        """The visit as the audit trail names it: "D1", "UNS#2"."""
        if self.visit_key is None:
            return None
        return self.visit_key if self.visit_repeat == 1 else f"{self.visit_key}#{self.visit_repeat}"

    def describe(self) -> Message:
        if self.is_casebook:
            return msg("the whole casebook")
        return msg("visit %(visit)s", visit=self.visit_label)

    def covers(self, instance: FormInstance) -> bool:
        return self.is_casebook or (instance.visit_key == self.visit_key
                                    and instance.visit_repeat == self.visit_repeat)


def _schedule():
    return current_app.extensions["ecrf.registry"].schedule


def _title(crf_key: str) -> Message:
    registry = current_app.extensions["ecrf.registry"]
    try:
        return msg(registry.current(crf_key).title)
    except KeyError:
        return msg(crf_key)


# --- the content and its hash ------------------------------------------------------------------


def subject_instances(subject: Subject) -> list[FormInstance]:
    """Every form instance of the subject with its values, in content order."""
    return list(db.session.scalars(
        sa.select(FormInstance).where(FormInstance.subject_id == subject.id)
        .options(selectinload(FormInstance.values))
        .order_by(FormInstance.visit_key, FormInstance.visit_repeat, FormInstance.crf_key,
                  FormInstance.form_repeat)))


def item_text(value: ItemValue) -> str | None:
    """The item's text as the audit trail records it (None: no value and no null flavor)."""
    columns = {c: getattr(value, c) for c in (*VALUE_COLUMNS, "null_flavor", "null_comment")}
    return ItemValue.__audit__.compose(columns)["value"]


def signed_content(subject: Subject, scope: SignScope,
                   instances: list[FormInstance] | None = None) -> bytes:
    """The canonical document a signature of ``scope`` covers (format in the module docstring)."""
    instances = subject_instances(subject) if instances is None else instances
    forms = []
    for i in sorted((i for i in instances if scope.covers(i)),
                    key=lambda i: (i.visit_key, i.visit_repeat, i.crf_key, i.form_repeat)):
        items = {v.item_key: text for v in i.values if (text := item_text(v)) is not None}
        forms.append({"visit": i.visit_key, "visit_repeat": i.visit_repeat, "crf": i.crf_key,
                      "form_repeat": i.form_repeat, "crf_version": i.crf_version,
                      "status": i.status, "not_done_reason": i.not_done_reason, "items": items})
    document = {"format": CONTENT_FORMAT, "subject": subject.code, "visit": scope.visit_key,
                "visit_repeat": scope.visit_repeat, "forms": forms}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_hash(subject: Subject, scope: SignScope,
                 instances: list[FormInstance] | None = None) -> str:
    return hashlib.sha256(signed_content(subject, scope, instances)).hexdigest()


# --- readiness ---------------------------------------------------------------------------------


@dataclass
class Readiness:
    """Whether a scope can be signed now; ``problems`` says what is missing, in words."""

    scope: SignScope
    instances: list[FormInstance]
    problems: list[Message] = field(default_factory=list)
    open_queries: int = 0

    @property
    def ready(self) -> bool:
        return not self.problems


def _ended_visit_keys(subject: Subject, visits) -> set[str]:
    """Visits due after a recorded death: the grid's own rule, so sign-off and grid agree."""
    death = CheckContext(subject, Slot("D90")).values("end_of_study") or {}
    return ended_visits(visits, subject.inclusion_date, death.get("death_date"))


def visits_in_scope(subject: Subject, scope: SignScope, instances: list[FormInstance],
                    today: date | None = None) -> list[tuple[object, int]]:
    """The (visit, repeat) pairs whose expected forms a signature of ``scope`` needs: a visit
    scope's own visit; for a casebook, visits with data and visits whose window has started."""
    schedule = _schedule()
    if not scope.is_casebook:
        return [(schedule.visit(scope.visit_key), scope.visit_repeat)]
    today = today or site_today(subject.site)
    d0 = subject.inclusion_date
    pairs = {(i.visit_key, i.visit_repeat) for i in instances}
    for v in schedule.visits:
        window = v.window(d0) if d0 is not None and not v.unscheduled else None
        if window is not None and window[0] <= today:
            pairs.add((v.key, 1))
    order = {v.key: n for n, v in enumerate(schedule.visits)}
    known = [(k, r) for k, r in pairs if k in order]
    return [(schedule.visit(k), r) for k, r in sorted(known, key=lambda p: (order[p[0]], p[1]))]


def readiness(subject: Subject, scope: SignScope, instances: list[FormInstance] | None = None,
              today: date | None = None) -> Readiness:
    """Complete and no query open (rules in the module docstring)."""
    instances = subject_instances(subject) if instances is None else instances
    in_scope = [i for i in instances if scope.covers(i)]
    result = Readiness(scope, in_scope)
    visits = visits_in_scope(subject, scope, instances, today)
    ended = _ended_visit_keys(subject, _schedule().visits)
    present = {(i.visit_key, i.visit_repeat, i.crf_key) for i in in_scope}
    for visit, repeat in visits:
        label = visit.key if repeat == 1 else f"{visit.key}#{repeat}"
        for crf_key in visit.forms:
            if visit.key not in ended and (visit.key, repeat, crf_key) not in present:
                result.problems.append(msg(
                    "Visit %(visit)s: %(form)s is expected but not entered (enter it, or mark it "
                    "not done).", visit=label, form=_title(crf_key)))
    for i in in_scope:
        if i.status not in SIGNED_STATUSES:
            result.problems.append(msg("Visit %(visit)s: %(form)s is not complete.",
                                       visit=i.visit_label, form=_title(i.crf_key)))
    if in_scope:
        result.open_queries = db.session.scalar(sa.select(sa.func.count(Query.id)).where(
            Query.form_instance_id.in_([i.id for i in in_scope]),
            Query.state.in_(OPEN_QUERY_STATES))) or 0
    if result.open_queries:
        result.problems.append(msg("%(n)s queries are open or answered on these forms: they must "
                                   "be closed first.", n=result.open_queries))
    if not in_scope and not result.problems:
        result.problems.append(msg("Nothing to sign: no form is entered here yet."))
    return result


# --- who may sign ------------------------------------------------------------------------------


def authority_refusal(user: User, subject: Subject, today: date | None = None) -> Message | None:
    """Why ``user`` may not sign at the subject's site today (None: they may)."""
    if not Access.for_user(user, "casebook.sign").covers(subject.site_id):
        return msg("You hold no role that signs casebooks at site %(site)s.", site=subject.site.code)
    if signing_line(user, subject.site, today) is None:
        return msg("Only the principal investigator of site %(site)s, or a sub-investigator the "
                   "delegation log allows to sign, can sign: you have no such line active today.",
                   site=subject.site.code)
    return None


# --- signing -----------------------------------------------------------------------------------

WRONG_CREDENTIALS = N_("Wrong username or password: nothing was signed. After repeated failures "
                       "the account is locked.")


def sign(user: User, subject: Subject, scope: SignScope, *, username: str, password: str,
         meaning: str = SignatureMeaning.APPROVAL.value, seen_hash: str | None = None) -> Signature:
    """Sign ``scope`` of the subject's casebook as ``user``, who typed ``username`` and
    ``password`` for this signing. ``seen_hash``: the content hash of the page the signer read;
    if the data changed since, nothing is signed. Raises ``SigningRefused``."""
    if not scope.is_casebook:
        try:
            visit = _schedule().visit(scope.visit_key)
        except KeyError:
            raise SigningRefused(msg("Unknown visit %(visit)s.", visit=scope.visit_key), "state") from None
        if scope.visit_repeat < 1 or (scope.visit_repeat > 1 and not visit.unscheduled):
            raise SigningRefused(msg("Unknown visit %(visit)s.", visit=scope.visit_label), "state")
    if meaning not in SIGNATURE_MEANINGS:
        raise SigningRefused(msg("Unknown meaning of signature %(meaning)s.", meaning=repr(meaning)),
                             "state")
    why = authority_refusal(user, subject)
    if why is not None:
        raise SigningRefused(why, "authority")
    closed = closure.refusal(subject, closure.REVIEW)
    if closed is not None:
        raise SigningRefused(closed, "state")
    instances = subject_instances(subject)
    ready = readiness(subject, scope, instances)
    if not ready.ready:
        raise SigningRefused(Message.join(" ", ready.problems), "state")
    digest = content_hash(subject, scope, instances)
    if seen_hash and seen_hash != digest:
        raise SigningRefused(msg("The data changed since you opened this page: nothing was signed. "
                                 "Review them again, then sign."), "state")
    _check_credentials(user, username, password)
    actor = Access.for_user(user, "casebook.sign").actor(subject.site_id)
    with unit_of_work(actor, Reason.system("electronic signature")):
        if user.failed_logins:
            user.audit_reason = Reason.system("successful signing")
            user.failed_logins = 0
        signature = Signature(subject=subject, visit_key=scope.visit_key,
                              visit_repeat=scope.visit_repeat, signer=user,
                              signer_name=user.full_name, meaning=meaning,
                              meaning_text=SIGNATURE_MEANINGS[meaning],
                              signed_at=database.utcnow(), content_hash=digest)
        db.session.add(signature)
    return signature


def _check_credentials(user: User, username: str, password: str) -> None:
    """The two components of the signature (P11-200): one's own username and password."""
    given = (username or "").strip()[:64]
    if given != user.username:
        with unit_of_work(system_actor(), Reason.system("signing refused: not one's own username")) \
                as uow:
            uow.record("auth.signature_failed", "user", user.id,
                       new=f"{user.username}: gave the username {given!r}")
        raise SigningRefused(msg("Sign with your own username (%(username)s): nobody signs on behalf "
                                 "of another person. Nothing was signed.", username=user.username),
                             "credentials")
    why = check_password(user, password or "", purpose="signing",
                         failure_action="auth.signature_failed")
    if why == "locked":
        raise SigningRefused(msg("Your account is locked: it cannot sign. Ask an administrator."),
                             "credentials")
    if why is not None:
        raise SigningRefused(msg(WRONG_CREDENTIALS), "credentials")


# --- status of the signatures ------------------------------------------------------------------


@dataclass
class ScopeStatus:
    """The state of one scope's signature: valid, broken (content changed) or never signed.
    ``signature`` is the latest; ``history`` every signature of the scope, newest first."""

    scope: SignScope
    state: str
    signature: Signature | None = None
    history: list[Signature] = field(default_factory=list)
    #: broken: when the first change after the signing was recorded (audit trail), if found
    changed_at: datetime | None = None

    @property
    def valid(self) -> bool:
        return self.state == VALID


def _first_change_after(signature: Signature, scope: SignScope) -> datetime | None:
    """The time of the first recorded change to the scope's forms after the signing."""
    signed_seq = db.session.scalar(sa.select(sa.func.min(AuditRecord.seq)).where(
        AuditRecord.entity_type == "signature", AuditRecord.entity_id == str(signature.id)))
    if signed_seq is None:
        return None
    stmt = sa.select(AuditRecord.recorded_at).where(
        AuditRecord.subject == signature.subject.code, AuditRecord.seq > signed_seq,
        AuditRecord.entity_type.in_(("form", "item")))
    if not scope.is_casebook:
        stmt = stmt.where(AuditRecord.visit == scope.visit_label)
    return db.session.scalar(stmt.order_by(AuditRecord.seq).limit(1))


def signature_status(subject: Subject, instances: list[FormInstance] | None = None) -> list[ScopeStatus]:
    """Per scope, the casebook first, then each visit with data or a signature (schedule order):
    valid, broken or never signed."""
    instances = subject_instances(subject) if instances is None else instances
    signatures = list(db.session.scalars(sa.select(Signature).where(
        Signature.subject_id == subject.id).order_by(Signature.id.desc())))
    by_scope: dict[SignScope, list[Signature]] = {}
    for s in signatures:
        by_scope.setdefault(SignScope.of(s), []).append(s)
    order = {v.key: n for n, v in enumerate(_schedule().visits)}
    visits = {SignScope.visit(i.visit_key, i.visit_repeat) for i in instances}
    visits |= {s for s in by_scope if not s.is_casebook}
    scopes = [SignScope.casebook(), *sorted(visits, key=lambda s: (order.get(s.visit_key, len(order)),
                                                                    s.visit_key, s.visit_repeat))]
    result = []
    for scope in scopes:
        history = by_scope.get(scope, [])
        if not history:
            result.append(ScopeStatus(scope, NEVER))
            continue
        latest = history[0]
        if content_hash(subject, scope, instances) == latest.content_hash:
            result.append(ScopeStatus(scope, VALID, latest, history))
        else:
            result.append(ScopeStatus(scope, BROKEN, latest, history,
                                      _first_change_after(latest, scope)))
    return result


@dataclass
class SignOff:
    """For dashboards: casebooks ready to sign that were never signed, and broken signatures."""

    ready_unsigned: list[Subject] = field(default_factory=list)
    broken: list[tuple[Subject, ScopeStatus]] = field(default_factory=list)


def pending_and_broken(site_ids: set[int] | None = None) -> SignOff:
    """Casebooks (at these sites; None: all) complete with no query open but never signed, and
    every scope whose latest signature is broken.

    Only candidates are checked one by one, so the cost follows the signatures and the casebooks
    close to signing, not the size of the study: a signature can only be broken if the subject's
    data has an audit record after the signature's own (every change of a value or a form is
    one); a casebook can only be ready if it has forms, no casebook signature, no form outside
    the signed statuses and no open query."""
    result = SignOff()
    for subject in _scoped(sa.select(Subject).where(Subject.id.in_(_changed_since_signed())),
                           site_ids):
        instances = subject_instances(subject)
        result.broken += [(subject, s) for s in signature_status(subject, instances)
                          if s.state == BROKEN]
    has_forms = sa.exists().where(FormInstance.subject_id == Subject.id)
    casebook_signed = sa.exists().where(Signature.subject_id == Subject.id,
                                        Signature.visit_key.is_(None))
    unfinished = sa.exists().where(FormInstance.subject_id == Subject.id,
                                   FormInstance.status.not_in(SIGNED_STATUSES))
    queried = sa.exists().where(Query.form_instance_id == FormInstance.id,
                                FormInstance.subject_id == Subject.id,
                                Query.state.in_(OPEN_QUERY_STATES))
    candidates = sa.select(Subject).where(has_forms, ~casebook_signed, ~unfinished, ~queried)
    for subject in _scoped(candidates, site_ids):
        instances = list(db.session.scalars(sa.select(FormInstance).where(
            FormInstance.subject_id == subject.id)))  # readiness needs no values
        if readiness(subject, SignScope.casebook(), instances).ready:
            result.ready_unsigned.append(subject)
    result.broken.sort(key=lambda pair: pair[0].code)
    return result


def _scoped(stmt: sa.Select, site_ids: set[int] | None) -> list[Subject]:
    if site_ids is not None:
        stmt = stmt.where(Subject.site_id.in_(site_ids))
    return list(db.session.scalars(stmt.order_by(Subject.code)))


def _changed_since_signed() -> sa.Select:
    """Subjects with a latest signature (per scope) followed by a change of the data it covers
    in the audit trail (any visit for a casebook, its own visit for a visit), or whose signature
    has no audit record to compare with."""
    latest = (sa.select(sa.func.max(Signature.id))
              .group_by(Signature.subject_id, Signature.visit_key, Signature.visit_repeat))
    own = sa.orm.aliased(AuditRecord)
    signed_seq = (sa.select(sa.func.max(own.seq))
                  .where(own.entity_type == "signature", own.entity_id == sa.cast(Signature.id, sa.String))
                  .correlate(Signature).scalar_subquery())
    visit_label = sa.case((Signature.visit_repeat == 1, Signature.visit_key),
                          else_=Signature.visit_key + "#" + sa.cast(Signature.visit_repeat, sa.String))
    changed_after = sa.exists().where(AuditRecord.subject == Subject.code,
                                      AuditRecord.entity_type.in_(("item", "form")),
                                      AuditRecord.seq > signed_seq,
                                      sa.or_(Signature.visit_key.is_(None),  # a casebook: any
                                             AuditRecord.visit == visit_label))
    return (sa.select(Signature.subject_id).join(Subject, Subject.id == Signature.subject_id)
            .where(Signature.id.in_(latest), sa.or_(signed_seq.is_(None), changed_after)))


def signatures_of(subject: Subject) -> list[Signature]:
    """Every signature of the subject, newest first."""
    return list(db.session.scalars(sa.select(Signature).where(Signature.subject_id == subject.id)
                                   .order_by(Signature.id.desc())))

