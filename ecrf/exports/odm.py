"""CDISC ODM 1.3.2 export: a Snapshot file (the current data) or a Transactional file (their history).

One file holds the study metadata, the administrative data and the clinical data of the scope (the
study, a site or a subject), so that every OID it uses is defined in it (``check_references``).
It is written with lxml's incremental writer, one subject at a time: memory does not grow with
the number of subjects. It validates against the CDISC ODM 1.3.2 schema shipped in
``odm_schema/`` (``validate``).

Design decisions (where ODM 1.3.2 leaves a choice):

* **Metadata versions.** One ``MetaDataVersion`` "MDV.1" holds the current definitions (its
  Description carries the study definition's fingerprint, see change control). A CRF version
  older than the current one has its own ``FormDef`` with the version in its OID
  (``F.TOY_VITALS.V1``), so every ``FormData/@FormOID`` names the definition version its data were
  entered against. Item groups, items and code lists of an older version reuse the current
  definition when it is the same, and get a ``.V<n>`` suffix when it differs. Every version the
  registry knows is written, used or not. ``Alias`` elements keep the application's own names:
  ``ecrf:crf`` and ``ecrf:version`` on a FormDef, ``ecrf:group`` on an ItemGroupDef, ``ecrf:type``
  on an ItemDef (the item type: integer, decimal, partial_date, choice...).
* **Item types.** DataType is the type's ODM type (``ecrf.forms.items``); Length is given for
  text (its maximum length, or the longest code), integers with a bounded hard range and decimals
  (digits before the point from the hard range, else 12, plus the precision, which is
  SignificantDigits). Hard and soft ranges are ``RangeCheck`` elements; a derived item has
  ``Origin="Derived"``. Choices have a ``CodeList`` (Yes/No share ``CL.YN``); a multiple choice
  is a text item whose Value is the JSON array of its codes as stored (ODM 1.3.2 has no
  multiple-choice item), each a member of its CodeList; CTCAE terms are an
  ``ExternalCodeList`` (CTCAE 5.0, MedDRA codes). Values are ISO 8601: date-times in UTC with
  seconds (``2024-01-15T09:30:00Z``), times with seconds.
* **Visits.** One ``StudyEventDef`` per visit of the schedule: Scheduled when it has a target
  day, Unscheduled otherwise; the unscheduled visit repeats (``StudyEventRepeatKey`` = its
  number). FormRefs: the forms the visit expects (Mandatory), its repeating forms, the older
  versions of both, and any other form found at that visit in the data. A repeating CRF has
  ``Repeating="Yes"`` and its FormData a ``FormRepeatKey``.
* **Null flavors.** ``ItemData IsNull="Yes"`` with an ``Annotation`` (allowed inside ItemData
  by the 1.3.2 schema, after AuditRecord/Signature/MeasurementUnitRef): a ``Flag`` whose
  FlagValue is the code (NI, UNK, NA, ASKU; code list ``CL.NULL_FLAVOR``) and whose FlagType is
  NULL_FLAVOR (``CL.FLAG_TYPE``), plus a ``Comment`` (SponsorOrSite="Site") with the comment
  when there is one. A form marked not done carries, in the Snapshot, an Annotation on its
  FormData: Flag ``not_done`` (``CL.FORM_STATUS``) and the reason as Comment.
* **AdminData.** Users (``USR.<id>``: LoginName, DisplayName and FullName) are only those the
  file refers to: the signers (Snapshot), and the authors of the exported audit records
  (Transactional). One Location per site (``LOC.<site code>``, with a MetaDataVersionRef from
  the site's activation), plus ``LOC.SPONSOR`` for actions of study-wide roles and of the
  system. One SignatureDef per meaning of ``SIGNATURE_MEANINGS`` (``SD.<MEANING>``).
* **Signatures.** A casebook signature goes on SubjectData, a visit signature on its
  StudyEventData; ``Signature/@ID`` is ``SIG.<id>``. The Snapshot carries the latest signature
  of each scope only while it still covers the current data (not broken); the Transactional file
  carries every signing, at its place in time.
* **Snapshot** (``FileType="Snapshot"``): the current values, no TransactionType, no
  AuditRecord. Items never entered, or emptied, are left out (the spec's advice).
* **Transactional** (``FileType="Transactional"``): the history of the item values, read from
  the audit trail (``item.create``/``item.update`` of the field "value", with the old and new
  values), streamed per subject in ``seq`` order. Each change is one ItemData with its own
  AuditRecord (UserRef, LocationRef: the actor's site or LOC.SPONSOR, DateTimeStamp in UTC,
  ReasonForChange "<reason code>: <text>", SourceID = the audit record's seq): TransactionType
  Insert for the first value of an item, Update afterwards. A value emptied is an Update with
  ``IsNull="Yes"`` and no Annotation (the spec's "replace a value with NULL"; the item row stays,
  so not Remove); a null flavor is ``IsNull="Yes"`` with its Annotation (Insert, or Update when
  the previous value was a null flavor too); a value replacing a null flavor removes the
  annotation (``Annotation TransactionType="Remove"``). A value redacted from the audit trail
  is an ItemData with neither Value nor IsNull. Per subject: a first SubjectData
  ``TransactionType="Insert"`` with the subject's enrolment AuditRecord and its SiteRef; then the
  changes, cut at each signing into SubjectData ``TransactionType="Update"`` elements (their
  AuditRecord: the first change they hold), each signing being one SubjectData "Update" with the
  signing's AuditRecord and the Signature (on the StudyEventData "Update" of the visit signed).
  StudyEventData, FormData and ItemGroupData are "Insert" where they first appear, "Update"
  after; a FormData "Insert" carries the form's creation AuditRecord; the others inherit their
  parent's. Every element with a TransactionType thus has an AuditRecord, its own or inherited
  (``check_transactions``). Form statuses and subject statuses are not part of ODM's clinical
  data: the audit trail export has them.

An item text value that looks exactly like a null flavor as the audit trail writes it
(``[NA] comment``) is read as that null flavor in the Transactional file: the audit trail's
own text does not tell them apart.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from flask import current_app
from flask_babel import force_locale
from lxml import etree
from lxml.builder import ElementMaker
from sqlalchemy.orm import selectinload

from ecrf.audit.models import AuditRecord
from ecrf.auth.models import User
from ecrf.casebook.models import FORM_STATUS_LABELS, FormInstance, FormStatus, ItemValue
from ecrf.casebook.services import NullFlavor, stored
from ecrf.exports.jobs import Progress, Scope, writer
from ecrf.extensions import db
from ecrf.forms.definition import CRF, Item
from ecrf.forms.items import (
    NULL_FLAVORS,
    YES_NO,
    Choice,
    CtcaeTerm,
    Date,
    DateTime,
    DecimalNumber,
    Integer,
    Text,
    Time,
    ctcae_terms,
)
from ecrf.review.models import SIGNATURE_MEANINGS, Signature
from ecrf.study import settings
from ecrf.study.models import Site, Subject

NS = "http://www.cdisc.org/ns/odm/v1.3"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
SCHEMA_DIR = Path(__file__).resolve().parent / "odm_schema"
MDV_OID = "MDV.1"
SPONSOR_LOCATION = "LOC.SPONSOR"
NULL_FLAVOR_CODELIST = "CL.NULL_FLAVOR"
FLAG_TYPE_CODELIST = "CL.FLAG_TYPE"
FORM_STATUS_CODELIST = "CL.FORM_STATUS"
#: the integer digits a decimal item accepts (``DecimalNumber.parse``)
DECIMAL_DIGITS = 12

E = ElementMaker(namespace=NS, nsmap={None: NS})

#: the audit records the Transactional file is built from
HISTORY_ACTIONS = ("subject.create", "form.create", "item.create", "item.update", "signature.create")
_NULL_TEXT = re.compile(r"\[(" + "|".join(NULL_FLAVORS) + r")\](?: (.*))?\Z", re.DOTALL)


def _registry():
    return current_app.extensions["ecrf.registry"]


def _tt(text: str) -> etree._Element:
    return E.TranslatedText(str(text), {XML_LANG: "en"})


def _stamp(when: datetime) -> str:
    """An ISO 8601 UTC time stamp (xs:dateTime)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _number(value) -> str:
    return format(Decimal(str(value)).normalize(), "f") if isinstance(value, Decimal | float) else str(value)


# --- values ------------------------------------------------------------------------------------


def odm_value(item: Item, value: Any) -> str:
    """A stored value (not None, not a null flavor) as ODM writes it for the item's DataType."""
    t = item.type
    if isinstance(t, DateTime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(t, Time):
        text = str(value)
        return f"{text}:00" if len(text) == 5 else text
    return t.text(value)


def _from_audit(item: Item, text: str) -> Any:
    """The value behind an audit trail text (``audit_text``), without re-checking it."""
    t = item.type
    if isinstance(t, DateTime):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    if isinstance(t, Integer):
        return int(text)
    if isinstance(t, DecimalNumber):
        return Decimal(text)
    if isinstance(t, Date):
        return date.fromisoformat(text)
    if t.multiple:
        return json.loads(text)
    return text


def _null_flavor(text: str | None) -> NullFlavor | None:
    m = _NULL_TEXT.match(text) if text else None
    return NullFlavor(m.group(1), m.group(2) or "") if m else None


def _annotation(flag_type: str, codelist: str, code: str, comment: str | None,
                transaction: str | None = None) -> etree._Element:
    annotation = E.Annotation(SeqNum="1")
    if transaction:
        annotation.set("TransactionType", transaction)
    if comment:
        annotation.append(E.Comment(comment, SponsorOrSite="Site"))
    annotation.append(E.Flag(E.FlagValue(code, CodeListOID=codelist),
                             E.FlagType(flag_type, CodeListOID=FLAG_TYPE_CODELIST)))
    return annotation


def _null_annotation(flavor: NullFlavor, transaction: str | None = None) -> etree._Element:
    return _annotation("NULL_FLAVOR", NULL_FLAVOR_CODELIST, flavor.code, flavor.comment, transaction)


# --- metadata ----------------------------------------------------------------------------------


class _Claims:
    """OIDs of definitions shared between CRF versions: the same content keeps one OID; a
    different content under the same base OID gets the version as suffix."""

    def __init__(self):
        self.by_base: dict[str, list[tuple[bytes, str]]] = {}
        self.elements: list[etree._Element] = []

    def claim(self, base: str, element: etree._Element, version: int) -> str:
        content = etree.tostring(element)  # the OID attribute is not set yet
        taken = self.by_base.setdefault(base, [])
        for known, oid in taken:
            if known == content:
                return oid
        oid = base if not taken else f"{base}.V{version}"
        taken.append((content, oid))
        element.set("OID", oid)
        self.elements.append(_with_oid_first(element))
        return oid


def _with_oid_first(element: etree._Element) -> etree._Element:
    """The OID attribute written first (readability)."""
    attrs = dict(element.attrib)
    element.attrib.clear()
    element.set("OID", attrs.pop("OID"))
    for k, v in attrs.items():
        element.set(k, v)
    return element


def _unit_slug(unit: str) -> str:
    text = unit.replace("°", "DEG").replace("%", "PCT").replace("/", "_PER_").replace("µ", "U")
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper() or "UNIT"


def _text_length(item: Item) -> int:
    """The longest text the item can hold (ODM requires Length for text)."""
    t = item.type
    if isinstance(t, CtcaeTerm):
        return max(len(code) for code in ctcae_terms())
    if isinstance(t, Choice):
        codes = [code for code, _label in t.codelist]
        return len(json.dumps(codes)) if t.multiple else max((len(code) for code in codes), default=1)
    if isinstance(t, Text):
        return t.max_length
    return Text.max_length  # another text type: the default of free text


def _digits(bound) -> int:
    return len(str(abs(int(bound))))


def _length_attrs(item: Item) -> dict[str, str]:
    t, hard = item.type, item.hard
    bounded = hard is not None and hard.low is not None and hard.high is not None
    if isinstance(t, Integer):
        return {"Length": str(max(_digits(hard.low), _digits(hard.high)))} if bounded else {}
    if isinstance(t, DecimalNumber):
        before = max(_digits(hard.low), _digits(hard.high)) if bounded else DECIMAL_DIGITS
        return {"Length": str(before + t.precision), "SignificantDigits": str(t.precision)}
    if t.odm in ("text", "string"):
        return {"Length": str(_text_length(item))}
    return {}


def _range_checks(item: Item) -> list[etree._Element]:
    checks = []
    for severity, bounds in (("Hard", item.hard), ("Soft", item.soft)):
        if bounds is None:
            continue
        for comparator, value in (("GE", bounds.low), ("LE", bounds.high)):
            if value is not None:
                checks.append(E.RangeCheck(E.CheckValue(_number(value)), Comparator=comparator,
                                           SoftHard=severity))
    return checks


@dataclass
class Metadata:
    """The Study element of the export and the OIDs the clinical data use."""

    study_oid: str
    study: etree._Element
    form_oids: dict[tuple[str, int], str]
    group_oids: dict[tuple[str, int, str], str]
    item_oids: dict[tuple[str, int, str], str]
    visit_oids: dict[str, str]
    repeating_visits: set[str]
    repeating_forms: set[tuple[str, int]]
    visit_order: dict[str, int]

    def visit_attrs(self, visit_key: str, repeat: int) -> dict[str, str]:
        attrs = {"StudyEventOID": self.visit_oids[visit_key]}
        if visit_key in self.repeating_visits:
            attrs["StudyEventRepeatKey"] = str(repeat)
        return attrs

    def form_attrs(self, instance: FormInstance) -> dict[str, str]:
        key = (instance.crf_key, instance.crf_version)
        attrs = {"FormOID": self.form_oids[key]}
        if key in self.repeating_forms:
            attrs["FormRepeatKey"] = str(instance.form_repeat)
        return attrs


def _survey(scope: Scope) -> tuple[dict[str, int], dict[str, set[tuple[str, int]]]]:
    """Which visits (with their highest repeat) and which CRF versions the data of the scope use."""
    in_scope = scope.subjects().with_only_columns(Subject.id).order_by(None)
    rows = db.session.execute(
        sa.select(FormInstance.visit_key, FormInstance.crf_key, FormInstance.crf_version,
                  sa.func.max(FormInstance.visit_repeat))
        .where(FormInstance.subject_id.in_(in_scope))
        .group_by(FormInstance.visit_key, FormInstance.crf_key, FormInstance.crf_version)).all()
    repeats: dict[str, int] = {}
    forms: dict[str, set[tuple[str, int]]] = {}
    for visit_key, crf_key, version, repeat in rows:
        repeats[visit_key] = max(repeats.get(visit_key, 1), repeat or 1)
        forms.setdefault(visit_key, set()).add((crf_key, version))
    return repeats, forms


def _codelist(crf: CRF, item: Item) -> tuple[str, etree._Element] | None:
    """The base OID and the element (without OID) of the item's code list, if it has one."""
    t = item.type
    if isinstance(t, CtcaeTerm):
        return "CL.CTCAE_V5", E.CodeList(E.ExternalCodeList(Dictionary="CTCAE", Version="5.0"),
                                         Name="CTCAE v5.0 terms (MedDRA codes)", DataType="text")
    if not isinstance(t, Choice):
        return None
    base = "CL.YN" if t.codelist == YES_NO else "CL." + item.oid(crf.key)[2:]
    name = "Yes/No" if t.codelist == YES_NO else f"{crf.key}.{item.key}"
    items = [E.CodeListItem(E.Decode(_tt(label)), CodedValue=code, OrderNumber=str(n))
             for n, (code, label) in enumerate(t.codelist, 1)]
    return base, E.CodeList(*items, Name=name, DataType="text")


def _fixed_codelists() -> list[etree._Element]:
    with force_locale("en"):
        flavors = [(code, str(label)) for code, label in NULL_FLAVORS.items()]
        statuses = [(s.value, str(FORM_STATUS_LABELS[s])) for s in FormStatus]
    lists = [(NULL_FLAVOR_CODELIST, "Null flavors", flavors),
             (FLAG_TYPE_CODELIST, "Annotation flag types",
              [("NULL_FLAVOR", "Why a value is missing"), ("FORM_STATUS", "Status of a form")]),
             (FORM_STATUS_CODELIST, "Form statuses", statuses)]
    return [E.CodeList(*[E.CodeListItem(E.Decode(_tt(label)), CodedValue=code, OrderNumber=str(n))
                         for n, (code, label) in enumerate(pairs, 1)],
                       OID=oid, Name=name, DataType="text") for oid, name, pairs in lists]


def build_metadata(scope: Scope) -> Metadata:
    """The Study element (GlobalVariables, BasicDefinitions, MetaDataVersion) from the CRF
    registry and the schedule, plus the visits and CRF versions the scope's data use."""
    from ecrf.study.change_control import current_fingerprint

    registry = _registry()
    schedule = registry.schedule
    repeats, used_forms = _survey(scope)
    study_oid = f"ST.{settings.STUDY['name']}"

    units: dict[str, str] = {}

    def unit_oid(unit: str) -> str:
        if unit not in units:
            slug, n = f"MU.{_unit_slug(unit)}", 2
            oid = slug
            while oid in units.values():
                oid, n = f"{slug}_{n}", n + 1
            units[unit] = oid
        return units[unit]

    codelists, items, groups = _Claims(), _Claims(), _Claims()
    form_defs: list[etree._Element] = []
    form_oids: dict[tuple[str, int], str] = {}
    group_oids: dict[tuple[str, int, str], str] = {}
    item_oids: dict[tuple[str, int, str], str] = {}
    repeating_forms: set[tuple[str, int]] = set()
    for crf_key in sorted(registry.crfs):
        versions = registry.crfs[crf_key]
        current = max(versions)
        for version in sorted(versions, reverse=True):  # the current version claims the plain OIDs
            crf = versions[version]
            group_refs = []
            for group in crf.groups:
                item_refs = []
                for order, item in enumerate(group.items, 1):
                    children = [E.Question(_tt(item.label))]
                    if item.unit:
                        children.append(E.MeasurementUnitRef(MeasurementUnitOID=unit_oid(item.unit)))
                    children += _range_checks(item)
                    codelist = _codelist(crf, item)
                    if codelist is not None:
                        children.append(E.CodeListRef(CodeListOID=codelists.claim(*codelist, version)))
                    children.append(E.Alias(Context="ecrf:type", Name=item.type.name))
                    attrs = {"Name": item.key, "DataType": item.type.odm, **_length_attrs(item),
                             "SASFieldName": item.short_name}
                    if item.derived:
                        attrs["Origin"] = "Derived"
                    oid = items.claim(item.oid(crf_key), E.ItemDef(*children, **attrs), version)
                    item_oids[(crf_key, version, item.key)] = oid
                    item_refs.append(E.ItemRef(ItemOID=oid, OrderNumber=str(order),
                                               Mandatory="Yes" if item.required else "No"))
                base = f"IG.{crf_key.upper()}.{group.key.upper()}"
                element = E.ItemGroupDef(*item_refs, E.Alias(Context="ecrf:group", Name=group.key),
                                         Name=group.title, Repeating="No")
                oid = groups.claim(base, element, version)
                group_oids[(crf_key, version, group.key)] = oid
                group_refs.append(E.ItemGroupRef(
                    ItemGroupOID=oid, OrderNumber=str(len(group_refs) + 1),
                    Mandatory="Yes" if any(i.required for i in group.items) else "No"))
            form_oid = crf.oid if version == current else f"{crf.oid}.V{version}"
            form_oids[(crf_key, version)] = form_oid
            if crf.repeating:
                repeating_forms.add((crf_key, version))
            children = [E.Description(_tt(crf.description))] if crf.description else []
            children += [*group_refs, E.Alias(Context="ecrf:crf", Name=crf_key),
                         E.Alias(Context="ecrf:version", Name=str(version))]
            form_defs.append(E.FormDef(*children, OID=form_oid, Name=crf.title,
                                       Repeating="Yes" if crf.repeating else "No"))

    visits = list(schedule.visits)
    known = {v.key for v in visits}
    visit_oids = {v.key: f"SE.{v.key.upper()}" for v in visits}
    for key in sorted(set(repeats) - known):  # data at a visit the schedule no longer has
        visit_oids[key] = f"SE.{key.upper()}"
    repeating_visits = {v.key for v in visits if v.unscheduled}
    repeating_visits |= {k for k, n in repeats.items() if n > 1}
    event_defs, event_refs = [], []
    for order, key in enumerate(visit_oids, 1):
        visit = schedule.visit(key) if key in known else None
        refs: dict[str, str] = {}
        if visit is not None:
            for crf_key in visit.forms:
                refs.setdefault(form_oids[(crf_key, max(registry.crfs[crf_key]))], "Yes")
            for crf_key in (*visit.forms, *visit.repeating_forms):
                for version in sorted(registry.crfs[crf_key], reverse=True):
                    refs.setdefault(form_oids[(crf_key, version)], "No")
        for crf_key, version in sorted(used_forms.get(key, ())):
            if (crf_key, version) in form_oids:
                refs.setdefault(form_oids[(crf_key, version)], "No")
        scheduled = visit is not None and visit.day is not None
        event_defs.append(E.StudyEventDef(
            *[E.FormRef(FormOID=oid, OrderNumber=str(n), Mandatory=mandatory)
              for n, (oid, mandatory) in enumerate(refs.items(), 1)],
            OID=visit_oids[key], Name=visit.title if visit else key,
            Repeating="Yes" if key in repeating_visits else "No",
            Type="Scheduled" if scheduled else "Unscheduled"))
        event_refs.append(E.StudyEventRef(StudyEventOID=visit_oids[key], OrderNumber=str(order),
                                          Mandatory="Yes" if scheduled else "No"))

    fingerprint, _versions = current_fingerprint()
    mdv = E.MetaDataVersion(
        E.Protocol(*event_refs), *event_defs, *form_defs,
        *groups.elements, *items.elements, *codelists.elements, *_fixed_codelists(),
        OID=MDV_OID, Name=f"{settings.STUDY['name']} CRF definitions",
        Description=f"Study definition fingerprint {fingerprint}")
    study = E.Study(
        E.GlobalVariables(E.StudyName(settings.STUDY["name"]),
                          E.StudyDescription(f"{settings.STUDY['name']} ({settings.STUDY['registry_id']})"),
                          E.ProtocolName(settings.STUDY["name"])),
        E.BasicDefinitions(*[E.MeasurementUnit(E.Symbol(_tt(unit)), OID=oid, Name=unit)
                             for unit, oid in units.items()]),
        mdv, OID=study_oid)
    return Metadata(study_oid, study, form_oids, group_oids, item_oids, visit_oids, repeating_visits,
                    repeating_forms, {k: n for n, k in enumerate(visit_oids)})


# --- administrative data -----------------------------------------------------------------------


def _site_location(code: str | None, site_codes: set[str]) -> str:
    return f"LOC.{code}" if code in site_codes else SPONSOR_LOCATION


def build_admin(md: Metadata, user_ids: set[int], sites: list[Site]) -> etree._Element:
    admin = E.AdminData(StudyOID=md.study_oid)
    for user in db.session.scalars(sa.select(User).where(User.id.in_(user_ids)).order_by(User.id)):
        admin.append(E.User(E.LoginName(user.username), E.DisplayName(user.full_name or user.username),
                            E.FullName(user.full_name or user.username), OID=f"USR.{user.id}"))
    starts = []
    for site in sites:
        start = (site.activated_at or site.created_at).date()
        starts.append(start)
        admin.append(E.Location(E.MetaDataVersionRef(StudyOID=md.study_oid, MetaDataVersionOID=MDV_OID,
                                                     EffectiveDate=start.isoformat()),
                                OID=f"LOC.{site.code}", Name=site.name, LocationType="Site"))
    admin.append(E.Location(E.MetaDataVersionRef(
        StudyOID=md.study_oid, MetaDataVersionOID=MDV_OID,
        EffectiveDate=min(starts, default=date.today()).isoformat()),
        OID=SPONSOR_LOCATION, Name="Sponsor: study-wide roles and the system", LocationType="Sponsor"))
    for meaning, text in SIGNATURE_MEANINGS.items():
        admin.append(E.SignatureDef(E.Meaning(str(meaning)), E.LegalReason(text),
                                    OID=f"SD.{str(meaning).upper()}", Methodology="Electronic"))
    return admin


def _signature(sig: Signature, site_code: str) -> etree._Element:
    return E.Signature(E.UserRef(UserOID=f"USR.{sig.signer_id}"),
                       E.LocationRef(LocationOID=f"LOC.{site_code}"),
                       E.SignatureRef(SignatureOID=f"SD.{sig.meaning.upper()}"),
                       E.DateTimeStamp(_stamp(sig.signed_at)), ID=f"SIG.{sig.id}")


def _reason(row: AuditRecord) -> str | None:
    code, text = row.reason_code, (row.reason_text or "").strip()
    if not code:
        return text or None
    return f"{code}: {text}" if text else code


def _audit_record(row: AuditRecord, site_codes: set[str], *, reason: bool = True) -> etree._Element:
    record = E.AuditRecord(E.UserRef(UserOID=f"USR.{row.user_id}"),
                           E.LocationRef(LocationOID=_site_location(row.actor_site, site_codes)),
                           E.DateTimeStamp(_stamp(row.recorded_at)))
    text = _reason(row) if reason else None
    if text:
        record.append(E.ReasonForChange(text))
    record.append(E.SourceID(str(row.seq)))
    return record


# --- clinical data: snapshot -------------------------------------------------------------------


def _instance_order(md: Metadata, instance: FormInstance) -> tuple:
    return (md.visit_order.get(instance.visit_key, len(md.visit_order)), instance.visit_key,
            instance.visit_repeat, instance.crf_key, instance.form_repeat)


def _snapshot_subject(subject: Subject, md: Metadata) -> etree._Element:
    from ecrf.review.signatures import signature_status

    registry = _registry()
    instances = list(db.session.scalars(
        sa.select(FormInstance).where(FormInstance.subject_id == subject.id)
        .options(selectinload(FormInstance.values))))
    instances.sort(key=lambda i: _instance_order(md, i))
    signed = {(s.scope.visit_key, s.scope.visit_repeat): s.signature
              for s in signature_status(subject, instances) if s.valid}
    site_code = subject.site.code
    element = E.SubjectData(SubjectKey=subject.code)
    if (None, None) in signed:
        element.append(_signature(signed[(None, None)], site_code))
    element.append(E.SiteRef(LocationOID=f"LOC.{site_code}"))
    events: dict[tuple[str, int], etree._Element] = {}
    for instance in instances:
        visit = (instance.visit_key, instance.visit_repeat)
        if visit not in events:
            events[visit] = E.StudyEventData(**md.visit_attrs(*visit))
            if visit in signed:
                events[visit].append(_signature(signed[visit], site_code))
            element.append(events[visit])
        form = E.FormData(**md.form_attrs(instance))
        if instance.status == FormStatus.NOT_DONE.value:
            form.append(_annotation("FORM_STATUS", FORM_STATUS_CODELIST, instance.status,
                                    instance.not_done_reason))
        crf = registry.version(instance.crf_key, instance.crf_version)
        rows = {v.item_key: v for v in instance.values}
        for group in crf.groups:
            data = []
            for item in group.items:
                value = stored(rows.get(item.key), item)
                oid = md.item_oids[(crf.key, crf.version, item.key)]
                if isinstance(value, NullFlavor):
                    data.append(E.ItemData(_null_annotation(value), ItemOID=oid, IsNull="Yes"))
                elif value is not None:
                    data.append(E.ItemData(ItemOID=oid, Value=odm_value(item, value)))
            if data:
                form.append(E.ItemGroupData(
                    *data, ItemGroupOID=md.group_oids[(crf.key, crf.version, group.key)]))
        events[visit].append(form)
    for visit, sig in signed.items():  # a signed visit whose forms are gone (not expected)
        if visit != (None, None) and visit not in events:
            element.append(E.StudyEventData(_signature(sig, site_code), **md.visit_attrs(*visit)))
    return element


# --- clinical data: history --------------------------------------------------------------------


@dataclass
class _FormChanges:
    instance: FormInstance
    created: AuditRecord | None = None
    groups: dict[str, list[AuditRecord]] = field(default_factory=dict)


def _item_change(row: AuditRecord, item: Item, oid: str, site_codes: set[str]) -> etree._Element:
    kept = row.value
    old = kept.old_value if kept is not None else None
    new = kept.new_value if kept is not None else None
    element = E.ItemData(ItemOID=oid, TransactionType="Insert" if row.action == "item.create" else "Update")
    element.append(_audit_record(row, site_codes))
    old_flavor, new_flavor = _null_flavor(old), _null_flavor(new)
    redacted = new is None and row.new_digest is not None
    if new_flavor is not None or (new is None and not redacted):
        element.set("IsNull", "Yes")
    elif not redacted:
        element.set("Value", odm_value(item, _from_audit(item, new)))
    if new_flavor is not None:
        element.append(_null_annotation(new_flavor, "Update" if old_flavor else "Insert"))
    elif old_flavor is not None:
        element.append(E.Annotation(SeqNum="1", TransactionType="Remove"))
    return element


def _history_subject(subject: Subject, md: Metadata, site_codes: set[str]) -> Iterator[etree._Element]:
    """The SubjectData elements of one subject's history (see the module docstring)."""
    registry = _registry()
    instances = {i.id: i for i in db.session.scalars(
        sa.select(FormInstance).where(FormInstance.subject_id == subject.id))}
    value_forms = dict(db.session.execute(
        sa.select(ItemValue.id, ItemValue.form_instance_id).join(FormInstance)
        .where(FormInstance.subject_id == subject.id)).all())
    signatures = {s.id: s for s in db.session.scalars(
        sa.select(Signature).where(Signature.subject_id == subject.id))}
    rows = db.session.scalars(
        sa.select(AuditRecord).where(AuditRecord.subject == subject.code,
                                     AuditRecord.action.in_(HISTORY_ACTIONS))
        .order_by(AuditRecord.seq)).all()
    created: AuditRecord | None = None
    seen: set[tuple[str, str]] = set()  # (action, entity id): a creation is one row per column
    segments: list[tuple[str, list[AuditRecord]]] = []
    for row in rows:
        if row.action in ("subject.create", "form.create", "signature.create"):
            if (row.action, row.entity_id) in seen:
                continue
            seen.add((row.action, row.entity_id))
        elif row.field != "value":
            continue
        if row.action == "subject.create":
            if row.entity_id == str(subject.id):
                created = row
        elif row.action == "signature.create":
            segments.append(("signature", [row]))
        elif segments and segments[-1][0] == "data":
            segments[-1][1].append(row)
        else:
            segments.append(("data", [row]))

    site_code = subject.site.code
    first = E.SubjectData(SubjectKey=subject.code, TransactionType="Insert")
    if created is not None:
        first.append(_audit_record(created, site_codes))
    first.append(E.SiteRef(LocationOID=f"LOC.{site_code}"))
    yield first

    visits_seen: set[tuple[str, int]] = set()
    forms_seen: set[int] = set()
    groups_seen: set[tuple[int, str]] = set()
    for kind, segment in segments:
        element = E.SubjectData(SubjectKey=subject.code, TransactionType="Update")
        if kind == "signature":
            row = segment[0]
            sig = signatures.get(int(row.entity_id))
            if sig is None:
                continue
            element.append(_audit_record(row, site_codes))
            if sig.visit_key is None:
                element.append(_signature(sig, site_code))
            else:
                element.append(E.StudyEventData(_signature(sig, site_code),
                                                **md.visit_attrs(sig.visit_key, sig.visit_repeat),
                                                TransactionType="Update"))
            yield element
            continue
        element.append(_audit_record(segment[0], site_codes, reason=False))
        visits: dict[tuple[str, int], dict[int, _FormChanges]] = {}
        for row in segment:
            if row.action == "form.create":
                instance = instances[int(row.entity_id)]
            else:
                instance = instances[value_forms[int(row.entity_id)]]
            forms = visits.setdefault((instance.visit_key, instance.visit_repeat), {})
            changes = forms.setdefault(instance.id, _FormChanges(instance))
            if row.action == "form.create":
                changes.created = row
                continue
            crf = registry.version(instance.crf_key, instance.crf_version)
            group = next((g.key for g in crf.groups if any(i.key == row.item for i in g.items)), None)
            if group is None:
                raise LookupError(f"audit record {row.seq}: no item {row.item!r} in CRF "
                                  f"{crf.key} version {crf.version}")
            changes.groups.setdefault(group, []).append(row)
        for visit, forms in visits.items():
            event = E.StudyEventData(**md.visit_attrs(*visit),
                                     TransactionType="Update" if visit in visits_seen else "Insert")
            visits_seen.add(visit)
            for changes in forms.values():
                instance = changes.instance
                form = E.FormData(**md.form_attrs(instance),
                                  TransactionType="Update" if instance.id in forms_seen else "Insert")
                forms_seen.add(instance.id)
                if changes.created is not None:
                    form.append(_audit_record(changes.created, site_codes))
                crf = registry.version(instance.crf_key, instance.crf_version)
                for group_key, changed in changes.groups.items():
                    key = (instance.id, group_key)
                    group = E.ItemGroupData(ItemGroupOID=md.group_oids[(crf.key, crf.version, group_key)],
                                            TransactionType="Update" if key in groups_seen else "Insert")
                    groups_seen.add(key)
                    for row in changed:
                        group.append(_item_change(row, crf.item(row.item),
                                                  md.item_oids[(crf.key, crf.version, row.item)],
                                                  site_codes))
                    form.append(group)
                event.append(form)
            element.append(event)
        yield element


# --- the file ----------------------------------------------------------------------------------


def _user_ids(scope: Scope, transactional: bool) -> set[int]:
    in_scope = scope.subjects().with_only_columns(Subject.id).order_by(None)
    ids = set(db.session.scalars(sa.select(Signature.signer_id).distinct()
                                 .where(Signature.subject_id.in_(in_scope))))
    if transactional:
        codes = scope.subjects().with_only_columns(Subject.code).order_by(None)
        ids |= set(db.session.scalars(sa.select(AuditRecord.user_id).distinct().where(
            AuditRecord.subject.in_(codes), AuditRecord.action.in_(HISTORY_ACTIONS))))
    return ids


def _release(keep: set) -> None:
    """Forget the rows the export loaded (the caller's own objects, ``keep``, stay in the session)."""
    for key, obj in list(db.session.identity_map.items()):
        if key not in keep:
            db.session.expunge(obj)


def write_odm(scope: Scope, out: IO[bytes], progress: Progress, *, transactional: bool) -> None:
    """Stream the ODM file of the scope into ``out``, one subject at a time."""
    from ecrf import __version__

    keep = set(db.session.identity_map.keys())
    subject_ids = list(db.session.scalars(scope.subjects().with_only_columns(Subject.id)))
    total = len(subject_ids)
    progress(0, total)
    md = build_metadata(scope)
    sites = list(db.session.scalars(sa.select(Site).order_by(Site.code)))
    site_codes = {s.code for s in sites}
    admin = build_admin(md, _user_ids(scope, transactional), sites)
    granularity = "SingleSubject" if scope.subject is not None else (
        "SingleSite" if scope.site is not None else "All")
    now = datetime.now(UTC)
    kind = "Transactional" if transactional else "Snapshot"
    attrs = {"FileType": kind, "FileOID": f"ECRF.{settings.STUDY['name']}.{kind.upper()}.{uuid.uuid4().hex}",
             "CreationDateTime": _stamp(now), "AsOfDateTime": _stamp(now), "ODMVersion": "1.3.2",
             "Granularity": granularity,
             "Description": f"{settings.STUDY['name']}: {kind.lower()} of the {scope.label}",
             "Originator": "ecrf", "SourceSystem": "ecrf", "SourceSystemVersion": __version__}
    with etree.xmlfile(out, encoding="UTF-8") as xf:
        xf.write_declaration()
        with xf.element(f"{{{NS}}}ODM", attrs, nsmap={None: NS}):
            xf.write("\n")
            xf.write(md.study, pretty_print=True)
            xf.write(admin, pretty_print=True)
            with xf.element(f"{{{NS}}}ClinicalData", StudyOID=md.study_oid, MetaDataVersionOID=MDV_OID):
                xf.write("\n")
                for done, subject_id in enumerate(subject_ids, 1):
                    subject = db.session.get(Subject, subject_id)
                    if transactional:
                        for element in _history_subject(subject, md, site_codes):
                            xf.write(element, pretty_print=True)
                    else:
                        xf.write(_snapshot_subject(subject, md), pretty_print=True)
                    xf.flush()
                    _release(keep)  # memory stays flat: one subject at a time
                    progress(done, total)
            xf.write("\n")


@writer("odm_snapshot")
def write_snapshot(scope: Scope, out: IO[bytes], progress: Progress, options: dict) -> None:
    write_odm(scope, out, progress, transactional=False)


@writer("odm_transactional")
def write_transactional(scope: Scope, out: IO[bytes], progress: Progress, options: dict) -> None:
    write_odm(scope, out, progress, transactional=True)


# --- checks --------------------------------------------------------------------------------------


@functools.cache
def schema() -> etree.XMLSchema:
    """The CDISC ODM 1.3.2 schema (with the xml and xmldsig schemas it imports), loaded once."""
    return etree.XMLSchema(etree.parse(str(SCHEMA_DIR / "ODM1-3-2.xsd")))


def validate(path) -> list[str]:
    """The schema errors of an ODM file (an empty list: valid)."""
    xsd = schema()
    try:
        for _event, element in etree.iterparse(str(path), events=("end",), schema=xsd, huge_tree=True):
            if _local(element.tag) in ("SubjectData", "Study", "AdminData"):
                element.clear(keep_tail=True)
    except etree.XMLSyntaxError as e:
        return [f"line {e.lineno}: {e.msg}"]
    return []


#: reference attributes (``...OID``) and the definitions they name
REFERENCES = {
    "StudyOID": "Study", "MetaDataVersionOID": "MetaDataVersion", "StudyEventOID": "StudyEventDef",
    "FormOID": "FormDef", "ItemGroupOID": "ItemGroupDef", "ItemOID": "ItemDef", "CodeListOID": "CodeList",
    "RoleCodeListOID": "CodeList", "MeasurementUnitOID": "MeasurementUnit", "LocationOID": "Location",
    "UserOID": "User", "SignatureOID": "SignatureDef", "MethodOID": "MethodDef",
    "CollectionExceptionConditionOID": "ConditionDef", "ImputationMethodOID": "ImputationMethod",
    "ArchiveLayoutOID": "ArchiveLayout", "PresentationOID": "Presentation",
}
#: OID attributes that name no definition of the file
NOT_REFERENCES = {"FileOID", "PriorFileOID"}
#: clinical data element -> (its definition, the element that refers to it in its parent's
#: definition, the reference attribute, the repeat key it has when its definition repeats)
_NESTING = {
    "StudyEventData": ("StudyEventDef", "StudyEventRef", "StudyEventOID", "StudyEventRepeatKey"),
    "FormData": ("FormDef", "FormRef", "FormOID", "FormRepeatKey"),
    "ItemGroupData": ("ItemGroupDef", "ItemGroupRef", "ItemGroupOID", None),
    "ItemData": ("ItemDef", "ItemRef", "ItemOID", None),
}
#: the definition that lists what a clinical data element may hold
_HOLDER = {"SubjectData": "Protocol", "StudyEventData": "StudyEventDef", "FormData": "FormDef",
           "ItemGroupData": "ItemGroupDef"}
_REF_ATTRIBUTE = {ref: attribute for ref, _def, attribute, _key in
                  ((v[1], v[0], v[2], v[3]) for v in _NESTING.values())}


def _local(tag) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def check_references(path) -> list[str]:
    """Every OID reference of an ODM file resolves to its definition in the file, and the clinical
    data follow their definitions: a StudyEventData's visit is in the Protocol, a FormData's form
    among its visit's FormRefs, an ItemGroupData's group among its form's ItemGroupRefs, an
    ItemData's item among its group's ItemRefs; a repeat key is there exactly when the definition
    repeats. Returns the problems found (an empty list: none). The schema checks none of this.
    OIDs are taken as unique in the file (one MetaDataVersion, as this module writes)."""
    defined: dict[str, set[str]] = {}
    repeating: dict[tuple[str, str], bool] = {}
    allowed: set[tuple[str, str, str]] = set()  # (holder definition, its OID, OID referred to)
    refs: dict[tuple[str, str, str], int] = {}  # (element, attribute, OID) -> first line
    uses: dict[tuple[str, str, str, str, bool], int] = {}  # clinical nesting -> first line
    problems: list[str] = []
    stack: list[tuple[str, str]] = []  # (element, its OID or the OID it refers to)
    for event, element in etree.iterparse(str(path), events=("start", "end"), huge_tree=True):
        tag = _local(element.tag)
        if event == "end":
            stack.pop()
            if tag in ("SubjectData", "MetaDataVersion"):
                element.clear(keep_tail=True)
            continue
        own = ""
        for name, value in element.attrib.items():
            if name == "OID":
                own = value
                defined.setdefault(tag, set()).add(value)
                if "Repeating" in element.attrib:
                    repeating[(tag, value)] = element.get("Repeating") == "Yes"
            elif name.endswith("OID") and name not in NOT_REFERENCES:
                if name not in REFERENCES:
                    problems.append(f"line {element.sourceline}: {tag}/@{name} is a reference this "
                                    f"check does not know")
                refs.setdefault((tag, name, value), element.sourceline)
        holder, holder_oid = stack[-1] if stack else ("", "")
        if tag in _REF_ATTRIBUTE:
            allowed.add((holder, holder_oid, element.get(_REF_ATTRIBUTE[tag], "")))
        if tag in _NESTING and holder in _HOLDER:
            _definition, _ref, attribute, repeat_key = _NESTING[tag]
            own = element.get(attribute, "")
            has_key = repeat_key is not None and element.get(repeat_key) is not None
            holder_oid = "" if holder == "SubjectData" else holder_oid
            uses.setdefault((tag, _HOLDER[holder], holder_oid, own, has_key), element.sourceline)
        stack.append((tag, own))
    for (tag, name, value), line in refs.items():
        target = REFERENCES.get(name)
        if target is not None and value not in defined.get(target, set()):
            problems.append(f"line {line}: {tag}/@{name} {value!r} has no {target}")
    for (tag, holder, holder_oid, oid, has_key), line in uses.items():
        definition, ref, _attribute, repeat_key = _NESTING[tag]
        if oid not in defined.get(definition, set()):
            continue  # reported above
        if (holder, holder_oid, oid) not in allowed:
            where = "the Protocol" if holder == "Protocol" else f"{holder} {holder_oid!r}"
            problems.append(f"line {line}: {tag} {oid!r} is not referenced ({ref}) by {where}")
        if repeat_key is not None and has_key != repeating.get((definition, oid), False):
            problems.append(f"line {line}: {tag} {oid!r} " + (
                f"has a {repeat_key} but its {definition} does not repeat" if has_key else
                f"has no {repeat_key} but its {definition} repeats"))
    return problems


_DATA_ELEMENTS = {"SubjectData", "StudyEventData", "FormData", "ItemGroupData", "ItemData", "Annotation"}


def check_transactions(path) -> list[str]:
    """The transaction rules the schema leaves out (spec sections 2.9 and 3.1.4.1.2): in a
    Transactional file every SubjectData states its TransactionType, and every data element with
    a TransactionType (its own or inherited) has an AuditRecord (its own or inherited); a
    Snapshot has no TransactionType other than Insert. Returns the problems found."""
    problems: list[str] = []
    file_type = None
    stack: list[dict] = []
    for event, element in etree.iterparse(str(path), events=("start", "end"), huge_tree=True):
        tag = _local(element.tag)
        if tag == "ODM" and event == "start":
            file_type = element.get("FileType")
        if tag not in _DATA_ELEMENTS and tag != "AuditRecord":
            continue
        if event == "start":
            if tag == "AuditRecord":
                if stack:
                    stack[-1]["audit"] = True
                continue
            own = element.get("TransactionType")
            inherited = next((s["tt"] for s in reversed(stack) if s["tt"]), None)
            stack.append({"tag": tag, "tt": own or inherited, "audit": False,
                          "line": element.sourceline, "own": own})
            if file_type == "Snapshot" and own not in (None, "Insert"):
                problems.append(f"line {element.sourceline}: {tag} TransactionType={own} in a Snapshot")
            if file_type == "Transactional" and tag == "SubjectData" and not own:
                problems.append(f"line {element.sourceline}: SubjectData without TransactionType")
            continue
        if tag == "AuditRecord":
            continue
        entry = stack.pop()
        if (file_type == "Transactional" and entry["tt"]
                and not entry["audit"] and not any(s["audit"] for s in stack)):
            problems.append(f"line {entry['line']}: {tag} has TransactionType {entry['tt']} "
                            f"but no AuditRecord, its own or inherited")
        if tag == "SubjectData":
            element.clear(keep_tail=True)
    return problems
