"""PDF casebooks: one PDF per subject, for the archive and for inspection.

A casebook lists every form of the subject in visit order (the schedule's), then form order (the
visit's), with each item's label, its value as read on the form (codelist labels, units, local
date-times with their offset) or its null flavor (code and comment), the item's history from the
audit trail (old -> new, who, when in UTC and in the site's local time, the reason), its source
data verification (by whom, when), the form's queries with every message, and the electronic
signatures as 21 CFR 11.50 asks (printed name, date and time, meaning) with whether each still
matches the data it covers (``signature_status``: valid or broken).

Rendered from a Jinja template (``templates/exports/casebook_pdf.html``, its stylesheet beside it
in the package) with WeasyPrint. Nothing is fetched while rendering: no web font, no image, no
URL. Pages are numbered "Page X of Y"; the header names the subject, the footer the study and
the time of the export (UTC).

The ``pdf`` writer writes a ZIP of one ``<subject code>.pdf`` per subject in scope, one subject
at a time: rendered, written to the archive, dropped.
"""

from __future__ import annotations

import functools
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from flask import current_app, render_template
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import joinedload, selectinload

from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import REASON_CODES
from ecrf.casebook import services
from ecrf.casebook.models import FORM_STATUS_LABELS, FormInstance, ItemValue
from ecrf.database import utcnow
from ecrf.exports.jobs import Progress, Scope, writer
from ecrf.extensions import db
from ecrf.forms.definition import CRF, Item
from ecrf.forms.items import NULL_FLAVORS, DateTime, MultiChoice
from ecrf.i18n import tr, visit_title
from ecrf.review.models import QUERY_STATE_LABELS, ItemVerification, Query, QueryMessage
from ecrf.study import settings
from ecrf.study.models import Subject, status_label

TEMPLATE = "exports/casebook_pdf.html"
STYLESHEET = Path(__file__).resolve().parent.parent / "templates" / "exports" / "casebook_pdf.css"

#: the text the audit trail records for a null flavor: "[NI]" or "[NI] comment"
NULL_TEXT = re.compile(r"\[(NI|UNK|NA|ASKU)\](?: (.*))?", re.DOTALL)

QUERY_ACTION_LABELS = {
    "raise": _l("raised"),
    "answer": _l("answered"),
    "close": _l("closed"),
    "cancel": _l("cancelled"),
    "reopen": _l("re-opened"),
    "auto_close": _l("closed by the system"),
}
SIGNATURE_STATE_LABELS = {
    "valid": _l("valid: the data are unchanged since the signing"),
    "broken": _l("broken: the data changed after the signing"),
    "superseded": _l("superseded by a later signature"),
}


# --- what the template shows ---------------------------------------------------------------------


@dataclass
class Change:
    """One audit record of an item's value."""

    when: str
    who: str
    old: str
    new: str
    reason: str


@dataclass
class ItemRow:
    key: str
    label: str
    value: str = ""
    #: (code, label, comment) when a null flavor stands for the value
    null_flavor: tuple[str, str, str] | None = None
    derived: bool = False
    #: "Full Name (username), when" once verified against the source
    verified: str | None = None
    history: list[Change] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)


@dataclass
class GroupBlock:
    title: str
    items: list[ItemRow]


@dataclass
class QueryBlock:
    id: int
    on: str
    state: str
    origin: str
    messages: list[tuple[str, str, str, str]]  # (action, author, when, text)


@dataclass
class FormBlock:
    visit_label: str
    visit_title: str
    form_label: str
    title: str
    crf_key: str
    version: int
    status: str
    not_done_reason: str | None
    groups: list[GroupBlock]
    queries: list[QueryBlock]


@dataclass
class SignatureRow:
    scope: str
    signer_name: str
    signed_at: str
    meaning: str
    meaning_text: str
    state: str
    state_label: str
    changed_at: str | None = None


# --- formatting ------------------------------------------------------------------------------------


def when(value: datetime | None, tz: str) -> str:
    """A moment in UTC and in the site's local time with its offset."""
    if value is None:
        return ""
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({services.local_time(value, tz)})"


def person(user) -> str:
    if user is None:
        return ""
    return f"{user.full_name} ({user.username})" if user.full_name else user.username


def display(item: Item, value: Any, tz: str) -> str:
    """A stored value as the form reads: codelist labels with their codes, local date-times with
    their offset, the unit."""
    if value is None:
        return ""
    kind = item.type
    if isinstance(kind, MultiChoice):
        text = "; ".join(f"{tr(kind.label(code))} ({code})" for code in value)
    elif hasattr(kind, "label"):  # a codelist, yes/no, a CTCAE term
        text = f"{tr(kind.label(value))} ({value})"
    elif isinstance(kind, DateTime):
        text = services.local_time(value, tz)
    else:
        text = kind.text(value)
    return f"{text} {item.unit}" if item.unit and text else text


def null_flavor_text(code: str, comment: str | None) -> str:
    label = NULL_FLAVORS.get(code)
    text = f"[{code}] {label}" if label is not None else f"[{code}]"
    return f"{text}: {comment}" if comment else text


def audit_value_text(item: Item | None, text: str | None, tz: str) -> str:
    """A value as the audit trail recorded it (canonical text), shown like the form's value."""
    if text is None:
        return ""
    null = NULL_TEXT.fullmatch(text)
    if null:
        return null_flavor_text(null[1], null[2])
    if item is None:
        return text
    try:
        value = item.type.from_text(text)
    except (ValueError, TypeError):  # a code no longer listed, a value of another version
        return text
    return display(item, value, tz)


def reason_text(record: AuditRecord) -> str:
    code, text = record.reason_code, (record.reason_text or "").strip()
    if not code:
        return text
    label = str(REASON_CODES[code]) if code in REASON_CODES else _("system") if code == "system" else code
    return f"{label}: {text}" if text else label


def _side(record: AuditRecord, side: str, item: Item | None, tz: str) -> str:
    kept = record.value
    if kept is None:
        return ""
    value = getattr(kept, f"{side}_value")
    if value is None and kept.redacted_seq is not None and getattr(record, f"{side}_digest"):
        return _("(redacted)")
    return audit_value_text(item, value, tz)


def _change(record: AuditRecord, item: Item | None, tz: str) -> Change:
    who = record.username
    if record.role:
        who += f" ({record.role}" + (f", {record.actor_site}" if record.actor_site else "") + ")"
    return Change(when(record.recorded_at, tz), who, _side(record, "old", item, tz),
                  _side(record, "new", item, tz), reason_text(record))


# --- one casebook ----------------------------------------------------------------------------------


def _registry():
    return current_app.extensions["ecrf.registry"]


def _ordered(instances: list[FormInstance]) -> list[FormInstance]:
    """Visit order (the schedule's), visit repeat, then the visit's form order, form repeat."""
    visits = _registry().schedule.visits
    visit_order = {v.key: n for n, v in enumerate(visits)}
    form_order = {v.key: {k: n for n, k in enumerate((*v.forms, *v.repeating_forms))} for v in visits}

    def key(i: FormInstance):
        forms = form_order.get(i.visit_key, {})
        return (visit_order.get(i.visit_key, len(visit_order)), i.visit_key, i.visit_repeat,
                forms.get(i.crf_key, len(forms)), i.crf_key, i.form_repeat)

    return sorted(instances, key=key)


def _visit_title(visit_key: str) -> str:
    try:
        return visit_title(_registry().schedule.visit(visit_key).title)
    except KeyError:
        return visit_key


def _definition(instance: FormInstance) -> CRF | None:
    try:
        return services.definition_for(instance.crf_key, instance)
    except KeyError:
        return None


def _queries_by_form(subject: Subject) -> dict[int, list[Query]]:
    found: dict[int, list[Query]] = defaultdict(list)
    for query in db.session.scalars(
            sa.select(Query).where(Query.subject_id == subject.id).order_by(Query.id)
            .options(selectinload(Query.messages).joinedload(QueryMessage.author))):
        found[query.form_instance_id].append(query)
    return found


def _verifications(subject: Subject) -> dict[int, ItemVerification]:
    rows = db.session.scalars(
        sa.select(ItemVerification).join(ItemValue, ItemVerification.item_value_id == ItemValue.id)
        .join(FormInstance, ItemValue.form_instance_id == FormInstance.id)
        .where(FormInstance.subject_id == subject.id, ItemVerification.verified.is_(True))
        .options(joinedload(ItemVerification.verified_by)))
    return {v.item_value_id: v for v in rows}


def _histories(subject: Subject) -> dict[str, list[AuditRecord]]:
    """The audit records of the subject's item values, by item value id, oldest first."""
    found: dict[str, list[AuditRecord]] = defaultdict(list)
    for record in db.session.scalars(sa.select(AuditRecord).where(
            AuditRecord.subject == subject.code, AuditRecord.entity_type == "item",
            AuditRecord.field == "value").order_by(AuditRecord.seq)):
        found[record.entity_id].append(record)
    return found


def _form_block(instance: FormInstance, crf: CRF | None, tz: str, queries: list[Query],
                verifications: dict[int, ItemVerification],
                histories: dict[str, list[AuditRecord]]) -> FormBlock:
    stored = {v.item_key: v for v in instance.values}
    queried: dict[str | None, list[str]] = defaultdict(list)
    for q in queries:
        queried[q.item_key].append(f"#{q.id} ({QUERY_STATE_LABELS.get(q.state, q.state)})")
    groups: list[GroupBlock] = []
    known: set[str] = set()
    listed = crf.groups if crf is not None and (stored or instance.status != "not_done") else ()
    for group in listed:
        rows = []
        for item in group.items:
            known.add(item.key)
            rows.append(_item_row(item, item.key, stored.get(item.key), tz, verifications,
                                  histories, queried))
        groups.append(GroupBlock(tr(group.title), rows))
    unknown = [k for k in stored if k not in known]  # values the definition does not declare
    if unknown:
        groups.append(GroupBlock(_("Other stored values"), [
            _item_row(None, k, stored[k], tz, verifications, histories, queried) for k in unknown]))
    labels = {i.key: tr(i.label) for i in crf.items} if crf is not None else {}
    query_blocks = [QueryBlock(
        q.id, labels.get(q.item_key, q.item_key) if q.item_key else _("the whole form"),
        str(QUERY_STATE_LABELS.get(q.state, q.state)),
        _("edit check %(check)s", check=q.check_id) if q.origin == "system" else _("manual"),
        [(str(QUERY_ACTION_LABELS.get(m.action, m.action)), person(m.author), when(m.created_at, tz),
          m.text) for m in q.messages]) for q in queries]
    return FormBlock(
        instance.visit_label, _visit_title(instance.visit_key), instance.form_label,
        tr(crf.title) if crf is not None else instance.crf_key, instance.crf_key, instance.crf_version,
        str(FORM_STATUS_LABELS.get(instance.status, instance.status)), instance.not_done_reason,
        groups, query_blocks)


def _item_row(item: Item | None, key: str, row: ItemValue | None, tz: str,
              verifications: dict[int, ItemVerification], histories: dict[str, list[AuditRecord]],
              queried: dict[str | None, list[str]]) -> ItemRow:
    result = ItemRow(key, tr(item.label) if item is not None else key,
                     derived=item is not None and item.derived, queries=queried.get(key, []))
    if row is None:
        return result
    if row.redacted_seq:
        result.value = _("(redacted)")
    elif row.null_flavor:
        result.null_flavor = (row.null_flavor, str(NULL_FLAVORS.get(row.null_flavor, "")),
                              row.null_comment or "")
    elif item is not None:
        result.value = display(item, services.stored(row, item), tz)
    else:
        from ecrf.review.signatures import item_text

        result.value = item_text(row) or ""
    verification = verifications.get(row.id)
    if verification is not None:
        result.verified = f"{person(verification.verified_by)}, {when(verification.verified_at, tz)}"
    result.history = [_change(r, item, tz) for r in histories.get(str(row.id), ())]
    return result


def _signature_rows(subject: Subject, instances: list[FormInstance], tz: str) -> list[SignatureRow]:
    from ecrf.review.signatures import signature_status

    rows = []
    for status in signature_status(subject, instances):
        for n, signature in enumerate(status.history):
            state = status.state if n == 0 else "superseded"
            rows.append(SignatureRow(
                tr(status.scope.describe()), signature.signer_name, when(signature.signed_at, tz),
                signature.meaning, signature.meaning_text, state,
                str(SIGNATURE_STATE_LABELS.get(state, state)),
                when(status.changed_at, tz) if n == 0 and status.changed_at else None))
    return rows


def casebook_context(subject: Subject, exported_at: datetime | None = None) -> dict[str, Any]:
    """What the template shows for one subject."""
    from ecrf.review.signatures import subject_instances

    exported_at = exported_at or utcnow()
    tz = subject.site.timezone
    instances = subject_instances(subject)
    queries = _queries_by_form(subject)
    verifications = _verifications(subject)
    histories = _histories(subject)
    forms = []
    for instance in _ordered(instances):
        forms.append(_form_block(instance, _definition(instance), tz, queries.get(instance.id, []),
                                 verifications, histories))
    return {
        "lang": str(get_locale() or "en"),
        "study": settings.STUDY["name"], "registry_id": settings.STUDY.get("registry_id"),
        "subject": subject, "site": subject.site, "tz": tz,
        "subject_status": status_label(subject.status),
        "exported_at": f"{exported_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC",
        "forms": forms, "signatures": _signature_rows(subject, instances, tz),
    }


def _refuse_urls(url: str, *args, **kwargs):
    """The casebook fetches nothing: no web font, no image, no stylesheet by URL."""
    raise ValueError(f"casebook PDFs fetch no resource ({url[:80]})")


@functools.cache
def _stylesheet():
    import weasyprint  # heavy: imported when a PDF is made, not when the app starts

    return weasyprint.CSS(filename=str(STYLESHEET), url_fetcher=_refuse_urls)


def font_configuration():
    """One per export, shared by its PDFs: a new one per document leaks native memory (about
    0.3 MB a PDF with WeasyPrint 70). Not shared between threads."""
    from weasyprint.text.fonts import FontConfiguration

    return FontConfiguration()


def render(html: str, font_config=None) -> bytes:
    """HTML -> PDF bytes, with the casebook's stylesheet (parsed once per process)."""
    import weasyprint

    return weasyprint.HTML(string=html, url_fetcher=_refuse_urls).write_pdf(
        stylesheets=[_stylesheet()], font_config=font_config or font_configuration())


def casebook_html(subject: Subject, exported_at: datetime | None = None) -> str:
    return render_template(TEMPLATE, **casebook_context(subject, exported_at))


def casebook_pdf(subject: Subject, exported_at: datetime | None = None, *, font_config=None) -> bytes:
    """The PDF casebook of one subject (``exported_at``: the time in its footer, default now)."""
    return render(casebook_html(subject, exported_at), font_config)


# --- the export ------------------------------------------------------------------------------------


def file_name(subject: Subject) -> str:
    return f"{subject.code}.pdf"


@writer("pdf")
def write(scope: Scope, out: IO[bytes], progress: Progress, options: dict[str, Any]) -> None:
    """A ZIP of one PDF casebook per subject in scope, in code order, one subject at a time."""
    exported_at = utcnow()
    ids = list(db.session.scalars(scope.subjects().with_only_columns(Subject.id)))
    total = len(ids)
    progress(0, total)
    stamp = exported_at.timetuple()[:6]
    fonts = font_configuration()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for done, subject_id in enumerate(ids, 1):
            subject = db.session.get(Subject, subject_id)
            pdf = casebook_pdf(subject, exported_at, font_config=fonts)
            info = zipfile.ZipInfo(file_name(subject), date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, pdf)
            del pdf, subject  # the identity map holds clean rows weakly: they go with the subject
            progress(done, total)
