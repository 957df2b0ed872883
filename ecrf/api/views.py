"""Read-only JSON API: subjects, their forms and values, the audit trail (documented in
``openapi.json`` beside this module; a test keeps the two equal).

Every endpoint but the document itself needs ``Authorization: Bearer <token>`` and acts with the
token owner's grants of the moment, scoped like the pages: no or a refused token -> 401, a
permission not held -> 403, another site's subject -> 404 (both recorded as ``access.denied``,
as on the pages). Messages are English: they are read by programs and their authors.
"""

from __future__ import annotations

import functools
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import sqlalchemy as sa
from flask import abort, current_app, g, jsonify, request
from sqlalchemy.orm import selectinload

from ecrf.access.decorators import AccessRule, public
from ecrf.access.grants import Access
from ecrf.access.roles import PERMISSIONS
from ecrf.api import bp, tokens
from ecrf.audit.capture import audit_text
from ecrf.audit.chain import format_time
from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import Reason
from ecrf.audit.redaction import REDACTED_FLAVOR
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.casebook.models import VALUE_COLUMNS, FormInstance, ItemValue
from ecrf.extensions import db
from ecrf.study.models import Site, Subject

security_log = logging.getLogger("ecrf.security")

OPENAPI = Path(__file__).resolve().parent / "openapi.json"
MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 50
DEFAULT_AUDIT_LIMIT = 100


# --- answers and refusals ----------------------------------------------------------------------


def _error(status: int, code: str, message: str, headers: dict | None = None) -> NoReturn:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    response.headers.update(headers or {})
    abort(response)


def _record_refusal(user, detail: str) -> None:
    """The pages' refusal record (``access.denied``, field = endpoint), against the token's owner."""
    security_log.warning("API refused %s %s for %s: %s", request.method, request.path,
                         user.username, detail)
    db.session.rollback()  # nothing of the refused request may be written with the record
    with unit_of_work(Actor.of(user), Reason.system("access refused")) as uow:
        uow.record("access.denied", "request", None, field=request.endpoint,
                   new=f"{request.method} {request.path[:200]}: {detail}")


def _refuse(status: int, detail: str) -> NoReturn:
    """403 or 404, recorded; a 404 says nothing of whether the object exists elsewhere."""
    _record_refusal(g.api_user, f"{detail} (API token {g.api_token.id})")
    if status == 404:
        _error(404, "not_found", "Not found.")
    _error(403, "forbidden", "Your role does not allow this request.")


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _unauthorized(authentication: tokens.Authentication, presented: bool) -> NoReturn:
    """401: no token, or one refused. A known token's refusal is recorded against its owner."""
    if authentication.user is not None:
        _record_refusal(authentication.user,
                        f"API token {authentication.token.id}: {authentication.refused}")
    else:
        security_log.warning("API refused %s %s: %s", request.method, request.path,
                             authentication.refused)
    challenge = 'Bearer realm="ecrf"' + (', error="invalid_token"' if presented else "")
    _error(401, "unauthorized",
           "A valid API token is required (Authorization: Bearer <token>)." if not presented
           else "The API token is unknown, expired or revoked, or its account cannot log in.",
           {"WWW-Authenticate": challenge})


def api_requires(permission: str):
    """The access rule of an API endpoint: a valid bearer token whose owner holds ``permission``
    through an active grant; ``g.access`` says on which sites."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            presented = _bearer()
            authentication = tokens.authenticate(presented)
            if not authentication.ok:
                _unauthorized(authentication, presented is not None)
            g.api_user, g.api_token = authentication.user, authentication.token
            access = Access.for_user(authentication.user, permission)
            if not access:
                _refuse(403, f"permission {permission} not held")
            g.access = access
            return view(*args, **kwargs)

        wrapper.access_rule = AccessRule("permission", permission)
        return wrapper

    return decorator


# --- query parameters ----------------------------------------------------------------------------


def _int_arg(name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        _error(400, "bad_request", f"{name} must be an integer {bound}.")
    return value


def _time_arg(name: str) -> datetime | None:
    """An ISO 8601 time; without a zone it is read as UTC."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        _error(400, "bad_request", f"{name} must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z.")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _window(column, stmt: sa.Select) -> sa.Select:
    """``since`` (included) and ``until`` (excluded) on a time column."""
    since, until = _time_arg("since"), _time_arg("until")
    if since is not None:
        stmt = stmt.where(column >= since)
    if until is not None:
        stmt = stmt.where(column < until)
    return stmt


def _page(stmt: sa.Select, serialise) -> dict:
    """One page of a select (``page``, ``per_page``), with the total."""
    page = _int_arg("page", 1, 1)
    per_page = _int_arg("per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(stmt.order_by(None).subquery()))
    rows = db.session.execute(stmt.limit(per_page).offset((page - 1) * per_page)).all()
    return {"items": [serialise(row) for row in rows], "page": page, "per_page": per_page,
            "total": total, "pages": math.ceil(total / per_page)}


def _time(value: datetime | None) -> str | None:
    return format_time(value) if value is not None else None


# --- subjects ------------------------------------------------------------------------------------

#: the last change of the subject record itself (enrolment, status, inclusion date)
SUBJECT_UPDATED_AT = sa.func.coalesce(
    sa.select(sa.func.max(AuditRecord.recorded_at))
    .where(AuditRecord.entity_type == "subject", AuditRecord.subject == Subject.code)
    .scalar_subquery(),
    Subject.created_at,
)


def _subjects() -> sa.Select:
    stmt = sa.select(Subject, Site.code, SUBJECT_UPDATED_AT.label("updated_at")).join(Site)
    site_ids = g.access.site_ids()
    return stmt if site_ids is None else stmt.where(Subject.site_id.in_(site_ids))


def _subject_json(row) -> dict:
    subject, site_code, updated_at = row
    return {"code": subject.code, "site": site_code, "status": subject.status,
            "inclusion_date": subject.inclusion_date.isoformat() if subject.inclusion_date else None,
            "created_at": _time(subject.created_at), "updated_at": _time(updated_at)}


def _subject_or_404(code: str):
    row = db.session.execute(sa.select(Subject, Site.code, SUBJECT_UPDATED_AT.label("updated_at"))
                             .join(Site).where(Subject.code == code)).first()
    if row is None:
        _refuse(404, f"subject {code[:16]!r} not found")
    if not g.access.covers(row[0].site_id):
        _refuse(404, f"subject {row[0].code} is on a site not granted")
    return row


@bp.route("/subjects")
@api_requires("subject.view")
def list_subjects():
    stmt = _subjects()
    if request.args.get("site"):
        stmt = stmt.where(Site.code == request.args["site"])
    if request.args.get("status"):
        stmt = stmt.where(Subject.status == request.args["status"])
    stmt = _window(SUBJECT_UPDATED_AT, stmt).order_by(Subject.code)
    return jsonify(_page(stmt, _subject_json))


@bp.route("/subjects/<code>")
@api_requires("subject.view")
def get_subject(code: str):
    return jsonify(_subject_json(_subject_or_404(code)))


# --- forms ---------------------------------------------------------------------------------------


def _value_json(value: ItemValue) -> dict:
    """The value as the audit trail writes it; a null flavor (NI, UNK, NA, ASKU) instead of it,
    or MSK (masked) for a value a data manager redacted."""
    if value.redacted_seq:
        return {"item": value.item_key, "value": None, "null_flavor": REDACTED_FLAVOR,
                "null_comment": None}
    text = None
    if not value.null_flavor:
        text = next((audit_text(getattr(value, c)) for c in VALUE_COLUMNS
                     if getattr(value, c) is not None), None)
    return {"item": value.item_key, "value": text, "null_flavor": value.null_flavor,
            "null_comment": value.null_comment}


def _item_order(instance: FormInstance) -> dict[str, int]:
    """Items in the order of the definition version the data were entered against."""
    try:
        crf = current_app.extensions["ecrf.registry"].version(instance.crf_key, instance.crf_version)
    except KeyError:
        return {}
    return {item.key: n for n, item in enumerate(crf.items)}


def _form_json(row) -> dict:
    instance: FormInstance = row[0]
    order = _item_order(instance)
    values = sorted(instance.values, key=lambda v: (order.get(v.item_key, len(order)), v.item_key))
    return {"visit": instance.visit_key, "visit_repeat": instance.visit_repeat,
            "crf": instance.crf_key, "crf_version": instance.crf_version,
            "form_repeat": instance.form_repeat, "status": instance.status,
            "not_done_reason": instance.not_done_reason,
            "created_at": _time(instance.created_at), "updated_at": _time(instance.updated_at),
            "items": [_value_json(v) for v in values]}


@bp.route("/subjects/<code>/forms")
@api_requires("crf.view")
def list_forms(code: str):
    subject = _subject_or_404(code)[0]
    stmt = (sa.select(FormInstance).where(FormInstance.subject_id == subject.id)
            .options(selectinload(FormInstance.values)))
    if request.args.get("visit"):
        stmt = stmt.where(FormInstance.visit_key == request.args["visit"])
    if request.args.get("crf"):
        stmt = stmt.where(FormInstance.crf_key == request.args["crf"])
    stmt = _window(FormInstance.updated_at, stmt).order_by(FormInstance.id)
    return jsonify({"subject": subject.code, **_page(stmt, _form_json)})


# --- audit trail ---------------------------------------------------------------------------------


def _kept(record: AuditRecord, side: str) -> tuple[str | None, bool]:
    """A kept value, and whether it was masked by an audited redaction."""
    value = record.value
    text = getattr(value, f"{side}_value") if value is not None else None
    redacted = bool(value is not None and value.redacted_seq and text is None
                    and getattr(record, f"{side}_digest"))
    return text, redacted


def _audit_json(record: AuditRecord) -> dict:
    old, old_redacted = _kept(record, "old")
    new, new_redacted = _kept(record, "new")
    return {"seq": record.seq, "recorded_at": _time(record.recorded_at),
            "username": record.username, "role": record.role, "actor_site": record.actor_site,
            "action": record.action, "entity_type": record.entity_type,
            "entity_id": record.entity_id, "site": record.site, "subject": record.subject,
            "visit": record.visit, "form": record.form, "item": record.item, "field": record.field,
            "old_value": old, "new_value": new, "old_redacted": old_redacted,
            "new_redacted": new_redacted, "reason_code": record.reason_code,
            "reason_text": record.reason_text, "request_id": record.request_id,
            "row_hash": record.row_hash}


@bp.route("/audit")
@api_requires("audit.view")
def list_audit():
    after_seq = _int_arg("after_seq", 0, 0)
    limit = _int_arg("limit", DEFAULT_AUDIT_LIMIT, 1, MAX_PER_PAGE)
    stmt = sa.select(AuditRecord).where(AuditRecord.seq > after_seq)
    site_ids = g.access.site_ids()
    if site_ids is not None:
        stmt = stmt.where(AuditRecord.site.in_(sa.select(Site.code).where(Site.id.in_(site_ids))))
    for name in ("site", "subject", "action"):
        if request.args.get(name):
            stmt = stmt.where(getattr(AuditRecord, name) == request.args[name])
    stmt = _window(AuditRecord.recorded_at, stmt).order_by(AuditRecord.seq).limit(limit)
    records = list(db.session.scalars(stmt).unique())
    return jsonify({"items": [_audit_json(r) for r in records], "limit": limit,
                    "next_after_seq": records[-1].seq if len(records) == limit else None})


# --- the document --------------------------------------------------------------------------------


@bp.route("/openapi.json")
@public
def openapi():
    """The OpenAPI 3.0 description of this API (no data in it: open to anyone)."""
    return current_app.response_class(OPENAPI.read_bytes(), mimetype="application/json")
