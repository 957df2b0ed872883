"""CDISC ODM 1.3.2 export: a Snapshot file (the current data) or a Transactional file (their history).

One file holds the study metadata, the administrative data and the clinical data of the scope (the
study, a site or a subject), so that every OID it uses is defined in it (``check_references``).
The metadata and the administrative data are lxml trees; the clinical data, nearly all of the
file, are written as text, the same bytes lxml would write, a batch of subjects at a time, each
batch read with a few plain queries: memory does not grow with the number of subjects. It
validates against the CDISC ODM 1.3.2 schema shipped in ``odm_schema/`` (``validate``).

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
  AuditRecord. Items never entered, or emptied, are left out (the spec's advice). A value a data
  manager redacted is an ItemData with neither Value nor IsNull (as in the Transactional file)
  and an Annotation whose Comment (SponsorOrSite="Sponsor") names the audit record of the
  redaction.
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
from collections import namedtuple
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
from sqlalchemy.dialects import postgresql

from ecrf.audit.models import AuditRecord, AuditValue
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


@functools.lru_cache(maxsize=4096)
def _stamp(when: datetime) -> str:
    """An ISO 8601 UTC time stamp (xs:dateTime); one transaction's rows share theirs."""
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


# --- XML text ----------------------------------------------------------------------------------
#
# The clinical data are nearly the whole file: they are written as text, byte for byte as lxml
# serialises the same elements (pretty printed, two spaces a level, a namespace declaration on
# each SubjectData), because building an lxml tree per subject cost more than everything else.
# The metadata and the administrative data, written once, stay lxml trees.

_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                               "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
#: what XML 1.0 cannot hold (lxml refuses it as well)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ATTR_PLAIN = re.compile('[^&<>"\x00-\x1f\ud800-\udfff\ufffe\uffff]*\\Z')
_TEXT_PLAIN = re.compile("[^&<>\x00-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]*\\Z")


def _checked(value: str) -> str:
    if _NOT_XML.search(value):
        raise ValueError(f"not an XML 1.0 character in {value!r}")
    return value


def xml_attr(value: str) -> str:
    """An attribute value escaped as lxml writes it."""
    return value if _ATTR_PLAIN.match(value) else _checked(value).translate(_ATTR_ESCAPES)


def xml_text(value: str) -> str:
    """Element text escaped as lxml writes it."""
    return value if _TEXT_PLAIN.match(value) else _checked(value).translate(_TEXT_ESCAPES)


def _attrs(attrs: dict[str, str]) -> str:
    return "".join(f' {name}="{xml_attr(value)}"' for name, value in attrs.items())


def _annotation(flag_type: str, codelist: str, code: str, comment: str | None, pad: str,
                transaction: str | None = None) -> str:
    inner, flag = pad + "  ", pad + "    "
    text = f'{pad}<Annotation SeqNum="1" TransactionType="{transaction}">\n' if transaction else \
        f'{pad}<Annotation SeqNum="1">\n'
    if comment:
        text += f'{inner}<Comment SponsorOrSite="Site">{xml_text(comment)}</Comment>\n'
    return (f'{text}{inner}<Flag>\n'
            f'{flag}<FlagValue CodeListOID="{codelist}">{xml_text(code)}</FlagValue>\n'
            f'{flag}<FlagType CodeListOID="{FLAG_TYPE_CODELIST}">{flag_type}</FlagType>\n'
            f'{inner}</Flag>\n{pad}</Annotation>\n')


def _null_annotation(flavor: NullFlavor, pad: str, transaction: str | None = None) -> str:
    return _annotation("NULL_FLAVOR", NULL_FLAVOR_CODELIST, flavor.code, flavor.comment, pad, transaction)


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


def _signature(sig, site_code: str, pad: str) -> str:
    inner = pad + "  "
    return (f'{pad}<Signature ID="SIG.{sig.id}">\n'
            f'{inner}<UserRef UserOID="USR.{sig.signer_id}"/>\n'
            f'{inner}<LocationRef LocationOID="{xml_attr("LOC." + site_code)}"/>\n'
            f'{inner}<SignatureRef SignatureOID="{xml_attr("SD." + sig.meaning.upper())}"/>\n'
            f"{inner}<DateTimeStamp>{_stamp(sig.signed_at)}</DateTimeStamp>\n"
            f"{pad}</Signature>\n")


def _reason(row) -> str | None:
    code, text = row.reason_code, (row.reason_text or "").strip()
    if not code:
        return text or None
    return f"{code}: {text}" if text else code


@functools.lru_cache(maxsize=4096)
def _audit_head(user_id: int, location: str, when: datetime, reason: str | None, pad: str) -> str:
    """An AuditRecord up to its SourceID: the same for every row of one change's transaction."""
    inner = pad + "  "
    because = f"{inner}<ReasonForChange>{xml_text(reason)}</ReasonForChange>\n" if reason else ""
    return (f"{pad}<AuditRecord>\n"
            f'{inner}<UserRef UserOID="USR.{user_id}"/>\n'
            f'{inner}<LocationRef LocationOID="{xml_attr(location)}"/>\n'
            f"{inner}<DateTimeStamp>{_stamp(when)}</DateTimeStamp>\n{because}")


def _audit_record(row, site_codes: set[str], pad: str, *, reason: bool = True) -> str:
    head = _audit_head(row.user_id, _site_location(row.actor_site, site_codes), row.recorded_at,
                       _reason(row) if reason else None, pad)
    return f"{head}{pad}  <SourceID>{row.seq}</SourceID>\n{pad}</AuditRecord>\n"


# --- clinical data: reading ----------------------------------------------------------------------
#
# Subjects are read in batches, a few queries a batch returning plain rows (loading ORM objects
# cost more than writing the file); a batch is read whole before its first subject is written,
# since the progress reports commit between subjects.

#: subjects per batch: few round trips, and the memory held stays that of one batch
BATCH = 100


@dataclass(slots=True)
class _Subject:
    id: int
    code: str
    site_code: str


@dataclass(slots=True)
class _Form:
    """A form instance as the export reads it, with its values (``item_value`` rows); also what
    ``signed_content`` reads of an instance."""

    id: int
    subject_id: int
    visit_key: str
    visit_repeat: int
    crf_key: str
    form_repeat: int
    crf_version: int
    status: str
    not_done_reason: str | None
    values: list = field(default_factory=list)


_FORM_COLUMNS = (FormInstance.id, FormInstance.subject_id, FormInstance.visit_key, FormInstance.visit_repeat,
                 FormInstance.crf_key, FormInstance.form_repeat, FormInstance.crf_version,
                 FormInstance.status, FormInstance.not_done_reason)
_VALUE_COLUMNS = (ItemValue.form_instance_id, ItemValue.item_key, ItemValue.value_text, ItemValue.value_int,
                  ItemValue.value_dec, ItemValue.value_date, ItemValue.value_dt, ItemValue.null_flavor,
                  ItemValue.null_comment, ItemValue.redacted_seq)
_SIGNATURE_COLUMNS = (Signature.id, Signature.subject_id, Signature.visit_key, Signature.visit_repeat,
                      Signature.signer_id, Signature.meaning, Signature.signed_at, Signature.content_hash)
_AUDIT_COLUMNS = (AuditRecord.seq, AuditRecord.subject, AuditRecord.recorded_at, AuditRecord.user_id,
                  AuditRecord.actor_site, AuditRecord.action, AuditRecord.entity_id, AuditRecord.field,
                  AuditRecord.item, AuditRecord.reason_code, AuditRecord.reason_text,
                  AuditRecord.new_digest, AuditValue.old_value, AuditValue.new_value)


#: rows as named tuples: their fields read many times faster than a Row's
_Value = namedtuple("_Value", [c.key for c in _VALUE_COLUMNS])
_Audit = namedtuple("_Audit", [c.key for c in _AUDIT_COLUMNS])


def _as_read(column):
    """A time stamp column read as the driver returns it: on PostgreSQL an aware datetime already,
    which ``_stamp`` turns to UTC once per distinct value; ``UTCDateTime``'s conversion of every
    row cost a third of reading the audit trail."""
    if db.session.get_bind().dialect.name != "postgresql":
        return column
    return sa.type_coerce(column, sa.DateTime(timezone=True)).label(column.key)


def _among(column, values: list):
    """``column IN values``; on PostgreSQL one array parameter, which has no limit on the number of
    values (a batch's form ids) and costs less to compile and send than a thousand parameters."""
    if db.session.get_bind().dialect.name != "postgresql":
        return column.in_(values)
    return column == sa.any_(sa.literal(values, postgresql.ARRAY(column.type)))


def _rows(stmt: sa.Select) -> list[sa.Row]:
    """All the rows of a query (fetched at once: row by row cost more than the rows' memory),
    executed as plain SQL, without ORM loading, in the session's transaction."""
    return db.session.connection().execute(stmt).all()


def _forms(subject_ids: list[int], *, values: bool) -> tuple[dict[int, list[_Form]], dict[int, _Form]]:
    """The form instances of the subjects (per subject, and by id), with their values if asked.
    Values are asked by form id: joined to the subjects instead, PostgreSQL read the whole
    ``item_value`` table for every batch."""
    per_subject: dict[int, list[_Form]] = {}
    by_id: dict[int, _Form] = {}
    for row in _rows(sa.select(*_FORM_COLUMNS).where(_among(FormInstance.subject_id, subject_ids))):
        form = _Form(*row)
        by_id[form.id] = form
        per_subject.setdefault(form.subject_id, []).append(form)
    if values and by_id:
        for row in _rows(sa.select(*_VALUE_COLUMNS).where(_among(ItemValue.form_instance_id, list(by_id)))):
            value = _Value._make(row)
            by_id[value.form_instance_id].values.append(value)
    return per_subject, by_id


def _signatures(subject_ids: list[int]) -> dict[int, list]:
    per_subject: dict[int, list] = {}
    for row in _rows(sa.select(*_SIGNATURE_COLUMNS).where(_among(Signature.subject_id, subject_ids))):
        per_subject.setdefault(row.subject_id, []).append(row)
    return per_subject


# --- clinical data: snapshot -------------------------------------------------------------------


def _instance_order(md: Metadata, instance: _Form) -> tuple:
    return (md.visit_order.get(instance.visit_key, len(md.visit_order)), instance.visit_key,
            instance.visit_repeat, instance.crf_key, instance.form_repeat)


def _valid_signatures(subject: _Subject, forms: list[_Form], signatures: list) -> dict[tuple, Any]:
    """The latest signature of each scope while it still covers the current data (the rule of
    ``signature_status``), the casebook's first, then the visits' in schedule order."""
    from ecrf.review.signatures import SignScope, content_hash

    latest: dict[tuple, Any] = {}
    for sig in signatures:
        key = (sig.visit_key, sig.visit_repeat)
        if key not in latest or sig.id > latest[key].id:
            latest[key] = sig
    order = {v.key: n for n, v in enumerate(_registry().schedule.visits)}
    valid = {}
    for key in sorted(latest, key=lambda k: (-1, "", 0) if k[0] is None else
                      (order.get(k[0], len(order)), k[0], k[1])):
        if content_hash(subject, SignScope(*key), forms) == latest[key].content_hash:
            valid[key] = latest[key]
    return valid


class _Layout:
    """Per CRF version, the text the clinical data repeat: OIDs as attributes, the group of
    each item."""

    def __init__(self, md: Metadata):
        self.md = md
        self.registry = _registry()
        self.plans: dict[tuple[str, int], list[tuple[str, list[tuple[Item, str]]]]] = {}
        self.items: dict[tuple[str, int, str], tuple[str, Item, str]] = {}
        self.visits: dict[tuple[str, int], str] = {}
        self.forms: dict[tuple[str, int, int], str] = {}
        self.values: dict[tuple[str, str], str] = {}

    def plan(self, crf_key: str, version: int) -> list[tuple[str, list[tuple[Item, str]]]]:
        """The groups of a CRF version (their ItemGroupOID) with their items (their ItemOID)."""
        plan = self.plans.get((crf_key, version))
        if plan is None:
            crf = self.registry.version(crf_key, version)
            plan = self.plans[(crf_key, version)] = [
                (xml_attr(self.md.group_oids[(crf_key, version, group.key)]),
                 [(item, xml_attr(self.md.item_oids[(crf_key, version, item.key)])) for item in group.items])
                for group in crf.groups]
        return plan

    def item(self, crf_key: str, version: int, item_key: str, seq: int) -> tuple[str, Item, str]:
        """The group key, the item and its ItemOID of an item of a CRF version."""
        found = self.items.get((crf_key, version, item_key))
        if found is None:
            crf = self.registry.version(crf_key, version)
            group = next((g for g in crf.groups if any(i.key == item_key for i in g.items)), None)
            if group is None:
                raise LookupError(f"audit record {seq}: no item {item_key!r} in CRF "
                                  f"{crf.key} version {crf.version}")
            item = next(i for i in group.items if i.key == item_key)
            found = self.items[(crf_key, version, item_key)] = (
                group.key, item, xml_attr(self.md.item_oids[(crf_key, version, item_key)]))
        return found

    #: how many audit texts ``value`` keeps converted (a few codes and numbers make most of them)
    VALUES_KEPT = 20_000

    def value(self, item: Item, oid: str, text: str) -> str:
        """An audit trail text as the Value attribute of its item (one OID, one data type)."""
        found = self.values.get((oid, text))
        if found is None:
            if len(self.values) >= self.VALUES_KEPT:
                self.values.clear()
            found = self.values[(oid, text)] = xml_attr(odm_value(item, _from_audit(item, text)))
        return found

    def visit(self, visit_key: str, repeat: int) -> str:
        text = self.visits.get((visit_key, repeat))
        if text is None:
            text = self.visits[(visit_key, repeat)] = _attrs(self.md.visit_attrs(visit_key, repeat))
        return text

    def form(self, form: _Form) -> str:
        key = (form.crf_key, form.crf_version, form.form_repeat)
        text = self.forms.get(key)
        if text is None:
            text = self.forms[key] = _attrs(self.md.form_attrs(form))
        return text


def _redacted_item(oid: str, redaction_seq: int) -> str:
    """A current value a data manager redacted: no Value, no IsNull, a Comment saying so."""
    return (f'        <ItemData ItemOID="{oid}">\n'
            f'          <Annotation SeqNum="1">\n'
            f'            <Comment SponsorOrSite="Sponsor">Value redacted (audit record '
            f'{redaction_seq})</Comment>\n'
            f'          </Annotation>\n'
            f'        </ItemData>\n')


def _snapshot_subject(subject: _Subject, forms: list[_Form], signatures: list, layout: _Layout) -> str:
    forms.sort(key=lambda i: _instance_order(layout.md, i))
    signed = _valid_signatures(subject, forms, signatures) if signatures else {}
    site_code = subject.site_code
    parts = [f'<SubjectData xmlns="{NS}" SubjectKey="{xml_attr(subject.code)}">\n']
    if (None, None) in signed:
        parts.append(_signature(signed[(None, None)], site_code, "  "))
    parts.append(f'  <SiteRef LocationOID="{xml_attr("LOC." + site_code)}"/>\n')
    events: set[tuple[str, int]] = set()
    for instance in forms:  # in visit order: the forms of a visit follow each other
        visit = (instance.visit_key, instance.visit_repeat)
        if visit not in events:
            if events:
                parts.append("  </StudyEventData>\n")
            events.add(visit)
            parts.append(f"  <StudyEventData{layout.visit(*visit)}>\n")
            if visit in signed:
                parts.append(_signature(signed[visit], site_code, "    "))
        body = []
        if instance.status == FormStatus.NOT_DONE.value:
            body.append(_annotation("FORM_STATUS", FORM_STATUS_CODELIST, instance.status,
                                    instance.not_done_reason, "      "))
        rows = {v.item_key: v for v in instance.values}
        for group_oid, items in layout.plan(instance.crf_key, instance.crf_version):
            data = []
            for item, oid in items:
                row = rows.get(item.key)
                if row is not None and row.redacted_seq:
                    data.append(_redacted_item(oid, row.redacted_seq))
                    continue
                value = stored(row, item)
                if value is None:
                    continue
                if isinstance(value, NullFlavor):
                    data.append(f'        <ItemData ItemOID="{oid}" IsNull="Yes">\n'
                                f'{_null_annotation(value, "          ")}        </ItemData>\n')
                else:
                    text = xml_attr(odm_value(item, value))
                    data.append(f'        <ItemData ItemOID="{oid}" Value="{text}"/>\n')
            if data:
                body.append(f'      <ItemGroupData ItemGroupOID="{group_oid}">\n')
                body += data
                body.append("      </ItemGroupData>\n")
        if body:
            parts.append(f"    <FormData{layout.form(instance)}>\n")
            parts += body
            parts.append("    </FormData>\n")
        else:
            parts.append(f"    <FormData{layout.form(instance)}/>\n")
    if events:
        parts.append("  </StudyEventData>\n")
    for visit, sig in signed.items():  # a signed visit whose forms are gone (not expected)
        if visit != (None, None) and visit not in events:
            parts.append(f"  <StudyEventData{layout.visit(*visit)}>\n{_signature(sig, site_code, '    ')}"
                         f"  </StudyEventData>\n")
    parts.append("</SubjectData>\n")
    return "".join(parts)


def _snapshot_batch(batch: list[_Subject], layout: _Layout) -> Iterator[str]:
    ids = [s.id for s in batch]
    forms, _by_id = _forms(ids, values=True)
    signatures = _signatures(ids)
    for subject in batch:
        yield _snapshot_subject(subject, forms.get(subject.id, []), signatures.get(subject.id, []), layout)


# --- clinical data: history --------------------------------------------------------------------


@dataclass
class _FormChanges:
    instance: _Form
    created: Any = None
    #: per item group, the ItemData of its changes
    groups: dict[str, list[str]] = field(default_factory=dict)


_PAD_ITEM = " " * 10


def _item_change(row, item: Item, oid: str, layout: _Layout, site_codes: set[str]) -> str:
    old, new = row.old_value, row.new_value
    transaction = "Insert" if row.action == "item.create" else "Update"
    old_flavor, new_flavor = _null_flavor(old), _null_flavor(new)
    redacted = new is None and row.new_digest is not None
    if new_flavor is not None or (new is None and not redacted):
        value = ' IsNull="Yes"'
    elif not redacted:
        value = f' Value="{layout.value(item, oid, new)}"'
    else:
        value = ""
    text = (f'        <ItemData ItemOID="{oid}" TransactionType="{transaction}"{value}>\n'
            f"{_audit_record(row, site_codes, _PAD_ITEM)}")
    if new_flavor is not None:
        text += _null_annotation(new_flavor, _PAD_ITEM, "Update" if old_flavor else "Insert")
    elif old_flavor is not None:
        text += f'{_PAD_ITEM}<Annotation SeqNum="1" TransactionType="Remove"/>\n'
    return text + "        </ItemData>\n"


def _history_subject(subject: _Subject, instances: dict[int, _Form], value_forms: dict[int, int],
                     signatures: dict[int, Any], rows: list, layout: _Layout, site_codes: set[str]) -> str:
    """The SubjectData elements of one subject's history (see the module docstring)."""
    created = None
    seen: set[tuple[str, str]] = set()  # (action, entity id): a creation is one row per column
    segments: list[tuple[str, list]] = []
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

    site_code = subject.site_code
    key = xml_attr(subject.code)
    parts = [f'<SubjectData xmlns="{NS}" SubjectKey="{key}" TransactionType="Insert">\n']
    if created is not None:
        parts.append(_audit_record(created, site_codes, "  "))
    parts.append(f'  <SiteRef LocationOID="{xml_attr("LOC." + site_code)}"/>\n</SubjectData>\n')

    update = f'<SubjectData xmlns="{NS}" SubjectKey="{key}" TransactionType="Update">\n'
    visits_seen: set[tuple[str, int]] = set()
    forms_seen: set[int] = set()
    groups_seen: set[tuple[int, str]] = set()
    for kind, segment in segments:
        if kind == "signature":
            row = segment[0]
            sig = signatures.get(int(row.entity_id))
            if sig is None:
                continue
            parts += [update, _audit_record(row, site_codes, "  ")]
            if sig.visit_key is None:
                parts.append(_signature(sig, site_code, "  "))
            else:
                parts.append(f'  <StudyEventData{layout.visit(sig.visit_key, sig.visit_repeat)} '
                             f'TransactionType="Update">\n{_signature(sig, site_code, "    ")}'
                             f"  </StudyEventData>\n")
            parts.append("</SubjectData>\n")
            continue
        parts += [update, _audit_record(segment[0], site_codes, "  ", reason=False)]
        visits: dict[tuple[str, int], dict[int, _FormChanges]] = {}
        for row in segment:
            if row.action == "form.create":
                instance = instances[int(row.entity_id)]
            else:
                instance = instances[value_forms[int(row.entity_id)]]
            forms = visits.setdefault((instance.visit_key, instance.visit_repeat), {})
            changes = forms.get(instance.id)
            if changes is None:
                changes = forms[instance.id] = _FormChanges(instance)
            if row.action == "form.create":
                changes.created = row
                continue
            group_key, item, oid = layout.item(instance.crf_key, instance.crf_version, row.item, row.seq)
            changes.groups.setdefault(group_key, []).append(_item_change(row, item, oid, layout, site_codes))
        for visit, forms in visits.items():
            parts.append(f"  <StudyEventData{layout.visit(*visit)} "
                         f'TransactionType="{"Update" if visit in visits_seen else "Insert"}">\n')
            visits_seen.add(visit)
            for changes in forms.values():
                instance = changes.instance
                parts.append(f"    <FormData{layout.form(instance)} "
                             f'TransactionType="{"Update" if instance.id in forms_seen else "Insert"}">\n')
                forms_seen.add(instance.id)
                if changes.created is not None:
                    parts.append(_audit_record(changes.created, site_codes, "      "))
                crf_key, version = instance.crf_key, instance.crf_version
                for group_key, changed in changes.groups.items():
                    seen_key = (instance.id, group_key)
                    parts.append(f'      <ItemGroupData ItemGroupOID="'
                                 f'{xml_attr(layout.md.group_oids[(crf_key, version, group_key)])}" '
                                 f'TransactionType="{"Update" if seen_key in groups_seen else "Insert"}">\n')
                    groups_seen.add(seen_key)
                    parts += changed
                    parts.append("      </ItemGroupData>\n")
                parts.append("    </FormData>\n")
            parts.append("  </StudyEventData>\n")
        parts.append("</SubjectData>\n")
    return "".join(parts)


def _history_batch(batch: list[_Subject], layout: _Layout, site_codes: set[str]) -> Iterator[str]:
    ids = [s.id for s in batch]
    _forms_per_subject, instances = _forms(ids, values=False)
    value_forms = {value_id: form_id for value_id, form_id in _rows(
        sa.select(ItemValue.id, ItemValue.form_instance_id)
        .where(_among(ItemValue.form_instance_id, list(instances))))} if instances else {}
    signatures = _signatures(ids)
    rows: dict[str, list] = {}
    for row in _rows(
            sa.select(*[_as_read(c) if c.key == "recorded_at" else c for c in _AUDIT_COLUMNS])
            .outerjoin(AuditValue, AuditValue.seq == AuditRecord.seq)
            .where(_among(AuditRecord.subject, [s.code for s in batch]),
                   AuditRecord.action.in_(HISTORY_ACTIONS))
            .order_by(AuditRecord.seq)):
        row = _Audit._make(row)
        rows.setdefault(row.subject, []).append(row)
    for subject in batch:
        mine = {f.id: f for f in _forms_per_subject.get(subject.id, [])}
        yield _history_subject(subject, mine, value_forms, {s.id: s for s in signatures.get(subject.id, [])},
                               rows.get(subject.code, []), layout, site_codes)


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


def _tree(element: etree._Element) -> bytes:
    return etree.tostring(element, encoding="UTF-8", xml_declaration=False, pretty_print=True)


def write_odm(scope: Scope, out: IO[bytes], progress: Progress, *, transactional: bool) -> None:
    """Stream the ODM file of the scope into ``out``, a batch of subjects at a time."""
    from ecrf import __version__

    sites = list(db.session.scalars(sa.select(Site).order_by(Site.code)))
    site_codes = {s.code for s in sites}
    site_of = {s.id: s.code for s in sites}
    subjects = [_Subject(id_, code, site_of[site_id]) for id_, code, site_id in db.session.execute(
        scope.subjects().with_only_columns(Subject.id, Subject.code, Subject.site_id))]
    total = len(subjects)
    progress(0, total)
    md = build_metadata(scope)
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
    out.write(b"<?xml version='1.0' encoding='UTF-8'?>\n")
    out.write(f'<ODM xmlns="{NS}"{_attrs(attrs)}>\n'.encode())
    out.write(_tree(md.study))
    out.write(_tree(admin))
    out.write(f'<ClinicalData StudyOID="{xml_attr(md.study_oid)}" MetaDataVersionOID="{MDV_OID}">\n'.encode())
    layout = _Layout(md)
    done = 0
    for start in range(0, total, BATCH):
        batch = subjects[start:start + BATCH]
        texts = _history_batch(batch, layout, site_codes) if transactional else _snapshot_batch(batch, layout)
        for text in texts:
            out.write(text.encode())
            done += 1
            progress(done, total)
    out.write(b"</ClinicalData>\n</ODM>")


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
