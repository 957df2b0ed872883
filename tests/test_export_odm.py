"""CDISC ODM 1.3.2 export (issue item 1): a Snapshot of the current data and a Transactional file
of their history, valid against the CDISC schema, loadable by odmlib, every OID defined.

The small study: subject 01-001 is included (D0 forms filled) and has the toy CRF at D1 with a
null flavor, corrected values (with reasons), a null flavor replaced by a value and a value
emptied; its visit D1 is signed by the site's principal investigator, then an unscheduled visit
is entered (the signature of D1 stays valid). Subject 02-001 has the toy CRF at D1 at site 02.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from lxml import etree

from ecrf.access.grants import Access
from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, mark_not_done, save_form
from ecrf.exports import jobs, odm
from ecrf.forms import registry as registry_module
from ecrf.forms.items import Choice, CtcaeTerm, DecimalNumber, Text
from ecrf.review import signatures as sig
from ecrf.review.delegation import add_entry, site_today
from tests.factories import PASSWORD

NS = {"o": odm.NS}
XSD_DIR = odm.SCHEMA_DIR
REASON = Reason("entry_error", "typo in the weight")


def save_toy(subject, values, *, slot=None, reason=None, null_flavors=None):
    result = save_form(system_actor(), subject, "toy_vitals", slot or Slot("D1"),
                       Submitted(values, null_flavors or {}), reason=reason,
                       confirmed={"TOY_VITALS-weight-RANGE"})
    assert result.ok, result.errors
    return result.instance


@dataclass
class Study:
    included: object  # 01-001
    other: object  # 02-001
    pi: object
    signature: object
    exporter: object

    def export(self, kind: str, scope: jobs.Scope | None = None):
        actor = Access.for_user(self.exporter, "export.run").actor(None)
        job = jobs.export_now(actor, kind, scope or jobs.Scope())
        return jobs.file_path(job)


@pytest.fixture
def study(make):
    site = make.site("01")
    make.site("02")
    subject = make.included("01")
    measured = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    save_toy(subject, {"weight": "70", "fever": "Y", "temperature": "38.5", "onset": "2024-03",
                       "measured_at": measured, "devices": ["ECG", "SPO2"], "comment": "first"},
             null_flavors={"height": ("UNK", "scale broken"), "position": ("NA", "")})
    save_toy(subject, {"weight": "72", "fever": "Y", "temperature": "38.5", "onset": "2024-03",
                       "measured_at": measured, "devices": ["ECG", "SPO2"], "position": "SUP"},
             null_flavors={"height": ("UNK", "scale broken")}, reason=REASON)
    mark_not_done(system_actor(), subject, "sofa_daily", Slot("D1"), "not measured that day")
    pi = make.user("pi01", role="investigator", site=site, full_name="Pia Investigator")
    add_entry(system_actor(), site, pi, "pi", site_today(site) - timedelta(days=30))
    signature = sig.sign(pi, subject, sig.SignScope.visit("D1"), username="pi01", password=PASSWORD)
    save_toy(subject, {"weight": "71", "fever": "N"}, slot=Slot("UNS", 1))
    other = make.subject("02")
    save_toy(other, {"weight": "80", "fever": "N"})
    exporter = make.user("dm", role="data_manager")
    return Study(subject, other, pi, signature, exporter)


def parse(path):
    return etree.parse(str(path)).getroot()


def item_data(root, item_oid: str, subject_key: str = "01-001"):
    return root.findall(f".//o:SubjectData[@SubjectKey='{subject_key}']//o:ItemData[@ItemOID='{item_oid}']",
                        NS)


def load_with_odmlib(path):
    import odmlib.loader as loader
    import odmlib.odm_loader as odm_loader
    from odmlib.oid_generator import create_oid_checker

    reader = loader.ODMLoader(odm_loader.XMLODMLoader(model_package="odm_1_3_2", ns_uri=odm.NS))
    reader.open_odm_document(str(path))
    document = reader.root()
    return document, document.validate(collect_errors=True, oid_checker=create_oid_checker("odm_1_3_2"))


# --- both files: valid, loadable, every reference resolved ----------------------------------------


@pytest.mark.requirement("P11-10b", "A11-17", "EMA-11", "ALCOA-enduring")
@pytest.mark.parametrize("kind, file_type", [("odm_snapshot", "Snapshot"),
                                             ("odm_transactional", "Transactional")])
def test_the_export_is_valid_odm_132_loads_in_odmlib_and_every_reference_resolves(study, kind, file_type):
    path = study.export(kind)
    root = parse(path)
    assert root.get("FileType") == file_type and root.get("ODMVersion") == "1.3.2"
    assert odm.validate(path) == []
    assert odm.check_references(path) == []
    assert odm.check_transactions(path) == []
    document, errors = load_with_odmlib(path)
    assert errors == []
    keys = [s.SubjectKey for s in document.ClinicalData[0].SubjectData]
    assert {"01-001", "02-001"} <= set(keys)
    # the metadata, the administrative data and the clinical data are in the one file
    assert document.Study[0].MetaDataVersion[0].OID == "MDV.1"
    assert {loc.OID for loc in document.AdminData[0].Location} >= {"LOC.01", "LOC.02"}
    assert [d.OID for d in document.AdminData[0].SignatureDef] == ["SD.APPROVAL"]


@pytest.mark.requirement("EMA-11", "ALCOA-enduring")
def test_the_schema_shipped_with_the_package_is_cdiscs_own_and_rejects_a_broken_file(study, tmp_path):
    import hashlib

    expected = {"ODM1-3-2.xsd": "ebc22b9eceb41db5e2af500182e3a5dfa20c8ec4aea711ddf22c978a62643fc5",
                "ODM1-3-2-foundation.xsd": "3f94ee334d63757430054d160990e3ad4588400a35c5b06f8dba6302b317764c",
                "xml.xsd": "258ac9c0f078fc9692735140f2d21541e8bf16941bed42833c1a5f965b52c6dc",
                "xmldsig-core-schema.xsd": "111a972ccb9916cb95df9af4b6c1775307292463639de69d6fe63516bb2d850e"}
    for name, digest in expected.items():
        assert hashlib.sha256((XSD_DIR / name).read_bytes()).hexdigest() == digest
    root = parse(study.export("odm_transactional"))
    record = root.find(".//o:ItemData/o:AuditRecord", NS)
    record.remove(record.find("o:LocationRef", NS))
    broken = tmp_path / "broken.xml"
    etree.ElementTree(root).write(str(broken), xml_declaration=True, encoding="UTF-8")
    errors = odm.validate(broken)
    assert errors and "LocationRef" in errors[0]


def test_a_dangling_or_misplaced_reference_is_reported(study, tmp_path):
    path = study.export("odm_snapshot")
    assert odm.check_references(path) == []
    text = path.read_text(encoding="utf-8")
    dangling = tmp_path / "dangling.xml"
    dangling.write_text(text.replace('FormOID="F.TOY_VITALS" FormRepeatKey', 'FormOID="F.NOPE" FormRepeatKey')
                        .replace('<FormData FormOID="F.TOY_VITALS">', '<FormData FormOID="F.NOPE">', 1),
                        encoding="utf-8")
    assert odm.validate(dangling) == []  # the schema does not see it
    problems = odm.check_references(dangling)
    assert any("FormData/@FormOID 'F.NOPE' has no FormDef" in p for p in problems), problems
    # an item filed in a group whose definition does not list it
    misplaced = tmp_path / "misplaced.xml"
    misplaced.write_text(text.replace('ItemOID="I.TOY_VITALS.WEIGHT" Value',
                                      'ItemOID="I.TOY_VITALS.FEVER" Value', 1), encoding="utf-8")
    problems = odm.check_references(misplaced)
    assert any("ItemData 'I.TOY_VITALS.FEVER' is not referenced (ItemRef) by ItemGroupDef "
               "'IG.TOY_VITALS.BODY'" in p for p in problems), problems
    # a repeating visit without its repeat key
    no_key = tmp_path / "no_key.xml"
    no_key.write_text(re.sub(r' StudyEventRepeatKey="\d+"', "", text), encoding="utf-8")
    assert any("has no StudyEventRepeatKey but its StudyEventDef repeats" in p
               for p in odm.check_references(no_key))
    # a user referred to and not defined
    no_user = tmp_path / "no_user.xml"
    no_user.write_text(re.sub(r"<User OID=.*?</User>", "", text, flags=re.DOTALL), encoding="utf-8")
    assert any("UserRef/@UserOID" in p for p in odm.check_references(no_user))


# --- snapshot ------------------------------------------------------------------------------------


@pytest.mark.requirement("P11-10b")
def test_the_snapshot_holds_the_current_values_in_odm_formats(study):
    root = parse(study.export("odm_snapshot"))
    assert root.find(".//o:ItemData", NS).get("TransactionType") is None
    assert root.find(".//o:AuditRecord", NS) is None
    d1 = root.find(".//o:SubjectData[@SubjectKey='01-001']/o:StudyEventData[@StudyEventOID='SE.D1']", NS)
    values = {i.get("ItemOID"): i.get("Value") for i in d1.iter(f"{{{odm.NS}}}ItemData")}
    assert values["I.TOY_VITALS.WEIGHT"] == "72"  # the corrected value
    assert values["I.TOY_VITALS.TEMPERATURE"] == "38.5"
    assert "I.TOY_VITALS.BMI" not in values  # no height (a null flavor): no BMI
    assert values["I.TOY_VITALS.ONSET"] == "2024-03"  # partialDate
    assert values["I.TOY_VITALS.DEVICES"] == '["ECG", "SPO2"]'
    assert values["I.TOY_VITALS.POSITION"] == "SUP"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", values["I.TOY_VITALS.MEASURED_AT"])
    assert "I.TOY_VITALS.COMMENT" not in values  # emptied: left out
    # the unscheduled visit repeats; the toy CRF does not
    uns = root.find(".//o:SubjectData[@SubjectKey='01-001']/o:StudyEventData[@StudyEventOID='SE.UNS']", NS)
    assert uns.get("StudyEventRepeatKey") == "1"
    assert uns.find("o:FormData", NS).get("FormRepeatKey") is None
    # a form marked not done says so, with its reason
    sofa = d1.find("o:FormData[@FormOID='F.SOFA_DAILY']", NS)
    assert sofa.find("o:Annotation/o:Flag/o:FlagValue", NS).text == "not_done"
    assert sofa.find("o:Annotation/o:Comment", NS).text == "not measured that day"


@pytest.mark.requirement("ALCOA-complete")
def test_a_null_flavor_is_isnull_with_its_code_and_comment(study):
    root = parse(study.export("odm_snapshot"))
    [height] = item_data(root, "I.TOY_VITALS.HEIGHT")
    assert height.get("IsNull") == "Yes" and height.get("Value") is None
    flag = height.find("o:Annotation/o:Flag", NS)
    assert flag.find("o:FlagValue", NS).text == "UNK"
    assert flag.find("o:FlagValue", NS).get("CodeListOID") == "CL.NULL_FLAVOR"
    assert flag.find("o:FlagType", NS).text == "NULL_FLAVOR"
    assert height.find("o:Annotation/o:Comment", NS).text == "scale broken"
    codes = root.findall(".//o:CodeList[@OID='CL.NULL_FLAVOR']/o:CodeListItem", NS)
    assert [c.get("CodedValue") for c in codes] == ["NI", "UNK", "NA", "ASKU"]
    # negative control: a value is no null flavor
    weight = item_data(root, "I.TOY_VITALS.WEIGHT")[0]
    assert weight.get("IsNull") is None and weight.find("o:Annotation", NS) is None


@pytest.mark.requirement("P11-10b")
def test_the_snapshot_carries_the_valid_signature_of_the_visit(study):
    root = parse(study.export("odm_snapshot"))
    d1 = root.find(".//o:SubjectData[@SubjectKey='01-001']/o:StudyEventData[@StudyEventOID='SE.D1']", NS)
    signature = d1.find("o:Signature", NS)
    assert signature.get("ID") == f"SIG.{study.signature.id}"
    assert signature.find("o:UserRef", NS).get("UserOID") == f"USR.{study.pi.id}"
    assert signature.find("o:SignatureRef", NS).get("SignatureOID") == "SD.APPROVAL"
    assert signature.find("o:LocationRef", NS).get("LocationOID") == "LOC.01"
    user = root.find(f".//o:AdminData/o:User[@OID='USR.{study.pi.id}']", NS)
    assert user.find("o:LoginName", NS).text == "pi01"
    assert user.find("o:FullName", NS).text == "Pia Investigator"
    # a change to D1 breaks the signature: the next snapshot no longer shows it
    save_toy(study.included, {"weight": "73", "fever": "Y", "temperature": "38.5", "onset": "2024-03",
                              "position": "SUP"}, null_flavors={"height": ("UNK", "scale broken")},
             reason=REASON)
    root = parse(study.export("odm_snapshot"))
    assert root.find(".//o:SubjectData[@SubjectKey='01-001']//o:Signature", NS) is None


# --- transactional ---------------------------------------------------------------------------------


def value_changes(subject_code: str) -> list[AuditRecord]:
    from ecrf.extensions import db

    return list(db.session.scalars(sa.select(AuditRecord).where(
        AuditRecord.subject == subject_code, AuditRecord.entity_type == "item",
        AuditRecord.field == "value", AuditRecord.action.in_(("item.create", "item.update")))
        .order_by(AuditRecord.seq)))


@pytest.mark.requirement("P11-10b", "EMA-1", "EMA-11", "ALCOA-original", "ALCOA-traceable")
def test_the_transactional_file_has_one_itemdata_per_change_with_its_audit_record(study):
    root = parse(study.export("odm_transactional"))
    for code in ("01-001", "02-001"):
        changes = value_changes(code)
        exported = root.findall(f".//o:SubjectData[@SubjectKey='{code}']//o:ItemData", NS)
        assert len(exported) == len(changes) > 0
        sources = [int(i.find("o:AuditRecord/o:SourceID", NS).text) for i in exported]
        assert sorted(sources) == [c.seq for c in changes]
        for element in exported:
            record = element.find("o:AuditRecord", NS)
            assert record.find("o:UserRef", NS) is not None and record.find("o:LocationRef", NS) is not None
            assert record.find("o:DateTimeStamp", NS).text.endswith("Z")
    weight = item_data(root, "I.TOY_VITALS.WEIGHT")
    assert [(w.get("TransactionType"), w.get("Value")) for w in weight] == [
        ("Insert", "70"), ("Update", "72"), ("Insert", "71")]  # the last one: at the unscheduled visit
    assert weight[0].find("o:AuditRecord/o:ReasonForChange", NS) is None  # a first entry needs none
    assert weight[1].find("o:AuditRecord/o:ReasonForChange", NS).text == "entry_error: typo in the weight"
    [row] = [c for c in value_changes("01-001") if c.item == "weight" and c.value.new_value == "72"]
    assert weight[1].find("o:AuditRecord/o:SourceID", NS).text == str(row.seq)
    # each item's changes in the order they were made
    for item in {i.get("ItemOID") for i in root.iter(f"{{{odm.NS}}}ItemData")}:
        seqs = [int(i.find("o:AuditRecord/o:SourceID", NS).text) for i in item_data(root, item)]
        assert seqs == sorted(seqs)


@pytest.mark.requirement("EMA-1")
def test_the_history_of_null_flavors_and_emptied_values(study):
    root = parse(study.export("odm_transactional"))
    [height] = item_data(root, "I.TOY_VITALS.HEIGHT")
    assert height.get("IsNull") == "Yes"
    assert height.find("o:Annotation", NS).get("TransactionType") == "Insert"
    assert height.find("o:Annotation/o:Flag/o:FlagValue", NS).text == "UNK"
    position = item_data(root, "I.TOY_VITALS.POSITION")
    assert [(p.get("TransactionType"), p.get("Value"), p.get("IsNull")) for p in position] == [
        ("Insert", None, "Yes"), ("Update", "SUP", None)]
    assert position[0].find("o:Annotation/o:Flag/o:FlagValue", NS).text == "NA"
    removed = position[1].find("o:Annotation", NS)  # the value replaces the null flavor
    assert removed.get("TransactionType") == "Remove" and len(removed) == 0
    comment = item_data(root, "I.TOY_VITALS.COMMENT")
    assert [(c.get("TransactionType"), c.get("Value"), c.get("IsNull")) for c in comment] == [
        ("Insert", "first", None), ("Update", None, "Yes")]  # emptied: set to null, no null flavor
    assert comment[1].find("o:Annotation", NS) is None


@pytest.mark.requirement("EMA-11")
def test_signings_take_their_place_in_the_history(study):
    root = parse(study.export("odm_transactional"))
    subjects = root.findall(".//o:SubjectData[@SubjectKey='01-001']", NS)
    assert [s.get("TransactionType") for s in subjects] == ["Insert", "Update", "Update", "Update"]
    first, before, signing, after = subjects
    assert first.find("o:SiteRef", NS).get("LocationOID") == "LOC.01"
    assert first.find("o:AuditRecord", NS) is not None and first.find("o:StudyEventData", NS) is None
    signed = signing.find("o:StudyEventData", NS)
    assert signed.get("StudyEventOID") == "SE.D1" and signed.get("TransactionType") == "Update"
    assert signed.find("o:Signature", NS).get("ID") == f"SIG.{study.signature.id}"
    signed_seq = int(signing.find("o:AuditRecord/o:SourceID", NS).text)
    seqs = lambda s: [int(x.text) for x in s.iterfind(".//o:ItemData/o:AuditRecord/o:SourceID", NS)]  # noqa: E731
    assert max(seqs(before)) < signed_seq < min(seqs(after))
    assert [e.get("StudyEventOID") for e in after.findall("o:StudyEventData", NS)] == ["SE.UNS"]
    assert after.find("o:StudyEventData", NS).get("TransactionType") == "Insert"
    # a form's first appearance is its insertion, with the form's creation as its audit record
    toy = before.find("o:StudyEventData[@StudyEventOID='SE.D1']/o:FormData[@FormOID='F.TOY_VITALS']", NS)
    assert toy.get("TransactionType") == "Insert" and toy.find("o:AuditRecord", NS) is not None


def test_check_transactions_reports_a_change_without_audit_record(study, tmp_path):
    path = study.export("odm_transactional")
    assert odm.check_transactions(path) == []
    bare = tmp_path / "bare.xml"
    bare.write_text(re.sub(r"<AuditRecord>.*?</AuditRecord>", "", path.read_text(encoding="utf-8"),
                           flags=re.DOTALL), encoding="utf-8")
    problems = odm.check_transactions(bare)
    assert any("ItemData has TransactionType Insert but no AuditRecord" in p for p in problems)


# --- the text of the file -----------------------------------------------------------------------

AWKWARD = 'a < b & "c" > d\ttab\r\nline \'é\' ✓'


@pytest.mark.parametrize("kind", ["odm_snapshot", "odm_transactional"])
def test_the_clinical_data_are_written_byte_for_byte_as_lxml_writes_them(study, kind):
    """The clinical data are written as text, not lxml trees (speed): the same bytes lxml writes
    of the same elements, escapes included, and the values read back as they were saved."""
    save_toy(study.other, {"weight": "81", "fever": "N", "comment": AWKWARD},
             reason=Reason("entry_error", 'the "weight" <was> & is'))
    data = study.export(kind).read_bytes()
    root = etree.fromstring(data, etree.XMLParser(remove_blank_text=True))
    clinical = root.find("o:ClinicalData", NS)
    assert len(clinical) >= 2
    written = data[data.index(b"<SubjectData"):data.rindex(b"</ClinicalData>")]
    assert written == b"".join(etree.tostring(s, encoding="UTF-8", pretty_print=True) for s in clinical)
    assert data.endswith(b"</SubjectData>\n</ClinicalData>\n</ODM>")
    assert item_data(root, "I.TOY_VITALS.COMMENT", "02-001")[-1].get("Value") == AWKWARD
    if kind == "odm_transactional":
        reasons = root.findall(".//o:SubjectData[@SubjectKey='02-001']//o:ReasonForChange", NS)
        assert 'entry_error: the "weight" <was> & is' in {r.text for r in reasons}


def test_text_is_escaped_and_refused_as_lxml_does():
    samples = [chr(c) for c in range(0x250)] + ["\u2028", "\ud800", "\udfff", "\ufffd", "\ufffe", "\uffff",
                                                 "\U0001f600", "\U0010ffff"]
    for c in samples:
        text = f"a{c}b"
        try:
            element = etree.Element("x", v=text)
            element.text = text
        except ValueError:
            with pytest.raises(ValueError):
                odm.xml_attr(text)
            with pytest.raises(ValueError):
                odm.xml_text(text)
            continue
        assert etree.tostring(element, encoding="UTF-8") == (
            f'<x v="{odm.xml_attr(text)}">{odm.xml_text(text)}</x>'.encode()), repr(c)


# --- scope ---------------------------------------------------------------------------------------


def test_a_site_or_subject_export_holds_only_its_subjects(study, make):
    make.subject("02")
    for kind in ("odm_snapshot", "odm_transactional"):
        path = study.export(kind, jobs.Scope.from_codes("02"))
        root = parse(path)
        assert {s.get("SubjectKey") for s in root.iter(f"{{{odm.NS}}}SubjectData")} == {"02-001", "02-002"}
        assert root.get("Granularity") == "SingleSite"
        assert odm.check_references(path) == [] and odm.validate(path) == []
        # only the users the file refers to: not the investigator of site 01
        assert root.find(f".//o:User[@OID='USR.{study.pi.id}']", NS) is None
    path = study.export("odm_snapshot", jobs.Scope.from_codes(subject_code="01-001"))
    root = parse(path)
    assert [s.get("SubjectKey") for s in root.iter(f"{{{odm.NS}}}SubjectData")] == ["01-001"]
    assert root.get("Granularity") == "SingleSubject"


# --- definitions ---------------------------------------------------------------------------------


def definitions_in(path) -> dict[tuple[str, int], list[dict]]:
    """The item definitions of every CRF version, read back from the exported metadata."""
    mdv = parse(path).find(".//o:MetaDataVersion", NS)
    by_oid = {kind: {e.get("OID"): e for e in mdv.findall(f"o:{kind}", NS)}
              for kind in ("ItemGroupDef", "ItemDef", "CodeList")}
    units = {u.get("OID"): u.find("o:Symbol/o:TranslatedText", NS).text
             for u in parse(path).iterfind(".//o:MeasurementUnit", NS)}

    def alias(element, context):
        found = element.find(f"o:Alias[@Context='{context}']", NS)
        return found.get("Name") if found is not None else None

    result = {}
    for form in mdv.findall("o:FormDef", NS):
        items = []
        for gref in form.findall("o:ItemGroupRef", NS):
            group = by_oid["ItemGroupDef"][gref.get("ItemGroupOID")]
            for iref in group.findall("o:ItemRef", NS):
                item = by_oid["ItemDef"][iref.get("ItemOID")]
                codelist = None
                if (ref := item.find("o:CodeListRef", NS)) is not None:
                    cl = by_oid["CodeList"][ref.get("CodeListOID")]
                    external = cl.find("o:ExternalCodeList", NS)
                    codelist = (("external", external.get("Dictionary"), external.get("Version"))
                                if external is not None else
                                tuple((c.get("CodedValue"), c.find("o:Decode/o:TranslatedText", NS).text)
                                      for c in cl.findall("o:CodeListItem", NS)))
                unit = item.find("o:MeasurementUnitRef", NS)
                items.append({
                    "group": alias(group, "ecrf:group"), "oid": re.sub(r"\.V\d+$", "", item.get("OID")),
                    "key": item.get("Name"), "type": alias(item, "ecrf:type"),
                    "datatype": item.get("DataType"),
                    "label": item.find("o:Question/o:TranslatedText", NS).text,
                    "unit": units[unit.get("MeasurementUnitOID")] if unit is not None else None,
                    "codelist": codelist, "sas": item.get("SASFieldName"),
                    "precision": item.get("SignificantDigits"),
                    "max_length": item.get("Length") if alias(item, "ecrf:type") == "text" else None,
                    "required": iref.get("Mandatory") == "Yes", "derived": item.get("Origin") == "Derived",
                    "ranges": sorted((r.get("SoftHard"), r.get("Comparator"), r.find("o:CheckValue", NS).text)
                                     for r in item.findall("o:RangeCheck", NS))})
        result[(alias(form, "ecrf:crf"), int(alias(form, "ecrf:version")))] = items
    return result


def definitions_of(registry) -> dict[tuple[str, int], list[dict]]:
    """The same description, from the registry's definitions."""
    def ranges(item):
        found = []
        for severity, bounds in (("Hard", item.hard), ("Soft", item.soft)):
            for comparator, value in (("GE", bounds and bounds.low), ("LE", bounds and bounds.high)):
                if value is not None:
                    found.append((severity, comparator, format(Decimal(value).normalize(), "f")))
        return sorted(found)

    def describe(group, item, key):
        t = item.type
        return {"group": group.key, "oid": item.oid(key), "key": item.key, "type": t.name,
                "datatype": t.odm, "label": item.label, "unit": item.unit,
                "codelist": (("external", "CTCAE", "5.0") if isinstance(t, CtcaeTerm) else
                             tuple(t.codelist) if isinstance(t, Choice) else None),
                "sas": item.short_name,
                "precision": str(t.precision) if isinstance(t, DecimalNumber) else None,
                "max_length": str(t.max_length) if isinstance(t, Text) else None,
                "required": item.required, "derived": item.derived, "ranges": ranges(item)}

    return {(key, version): [describe(group, item, key) for group in crf.groups for item in group.items]
            for key, versions in registry.crfs.items() for version, crf in versions.items()}


@pytest.mark.requirement("A11-4.8")
def test_the_exported_metadata_rebuild_every_version_of_every_crf(study, app, monkeypatch):
    """Round trip: the item definitions read back from the file equal the registry's, for every
    CRF version; data entered against version 1 of the toy CRF keep its FormDef."""
    amended = registry_module.load(None, app.extensions["ecrf.registry"].schedule, ["tests.toy_crf_v2"])
    monkeypatch.setitem(app.extensions, "ecrf.registry", amended)
    older = save_toy(study.other, {"weight": "81", "fever": "N"}, reason=REASON)
    assert older.crf_version == 1  # the form exists: it keeps its version
    newer = save_toy(study.other, {"weight": "82", "fever": "N", "spo2": "96"}, slot=Slot("UNS", 1))
    assert newer.crf_version == 2
    for kind in ("odm_snapshot", "odm_transactional"):
        path = study.export(kind)
        assert odm.validate(path) == [] and odm.check_references(path) == []
        assert definitions_in(path) == definitions_of(amended)
        root = parse(path)
        other = root.findall(".//o:SubjectData[@SubjectKey='02-001']//o:FormData", NS)
        assert {(f.getparent().get("StudyEventOID"), f.get("FormOID")) for f in other} == {
            ("SE.D1", "F.TOY_VITALS.V1"), ("SE.UNS", "F.TOY_VITALS")}
        # version 1 shares the unchanged groups and items; version 2 adds its own
        v1 = root.find(".//o:FormDef[@OID='F.TOY_VITALS.V1']", NS)
        assert [g.get("ItemGroupOID") for g in v1.findall("o:ItemGroupRef", NS)] == [
            "IG.TOY_VITALS.BODY", "IG.TOY_VITALS.FEVER", "IG.TOY_VITALS.OTHER"]
        assert root.find(".//o:ItemDef[@OID='I.TOY_VITALS.SPO2']", NS) is not None
        assert [i.get("Value") for i in item_data(root, "I.TOY_VITALS.SPO2", "02-001")] == ["96"]


def test_every_item_type_has_its_odm_datatype_and_sizes(study):
    root = parse(study.export("odm_snapshot"))
    item = {i.get("OID"): i for i in root.iterfind(".//o:ItemDef", NS)}
    assert item["I.TOY_VITALS.WEIGHT"].attrib == {
        "OID": "I.TOY_VITALS.WEIGHT", "Name": "weight", "DataType": "float", "Length": "4",
        "SignificantDigits": "1", "SASFieldName": "WEIGHT"}
    assert item["I.TOY_VITALS.HEIGHT"].get("DataType") == "integer"
    assert item["I.TOY_VITALS.HEIGHT"].get("Length") == "3"
    assert item["I.TOY_VITALS.ONSET"].get("DataType") == "partialDate"
    assert item["I.TOY_VITALS.MEASURED_AT"].get("DataType") == "datetime"
    assert item["I.TOY_VITALS.COMMENT"].get("Length") == "200"
    assert item["I.TOY_VITALS.FEVER"].find("o:CodeListRef", NS).get("CodeListOID") == "CL.YN"
    assert item["I.TOY_VITALS.BMI"].get("Origin") == "Derived"
    unit = item["I.TOY_VITALS.WEIGHT"].find("o:MeasurementUnitRef", NS).get("MeasurementUnitOID")
    assert root.find(f".//o:BasicDefinitions/o:MeasurementUnit[@OID='{unit}']", NS).get("Name") == "kg"
    repeating = {e.get("OID"): e.get("Repeating") for e in root.iterfind(".//o:StudyEventDef", NS)}
    assert repeating["SE.UNS"] == "Yes" and repeating["SE.D1"] == "No"
    assert root.find(".//o:FormDef[@OID='F.ADVERSE_EVENT']", NS).get("Repeating") == "Yes"


# --- the writers and the command -----------------------------------------------------------------


def test_the_writers_are_registered():
    assert jobs.WRITERS["odm_snapshot"] is odm.write_snapshot
    assert jobs.WRITERS["odm_transactional"] is odm.write_transactional


@pytest.mark.requirement("EMA-8")
def test_the_command_exports_and_refuses_a_user_without_export_run_on_the_site(study, runner, make, tmp_path):
    out = tmp_path / "study.xml"
    result = runner.invoke(args=["export", "odm", "--transactional", "--as", "dm", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert parse(out).get("FileType") == "Transactional"
    assert odm.validate(out) == [] and odm.check_references(out) == []
    site_out = tmp_path / "site.xml"
    result = runner.invoke(args=["export", "odm", "--site", "01", "--as", "pi01", "-o", str(site_out)])
    assert result.exit_code == 0, result.output
    assert parse(site_out).get("FileType") == "Snapshot"
    make.user("inv02", role="investigator", site="02")
    refused_out = tmp_path / "refused.xml"
    result = runner.invoke(args=["export", "odm", "--site", "01", "--as", "inv02", "-o", str(refused_out)])
    assert result.exit_code != 0
    assert "does not hold export.run on site 01" in result.output
    assert not refused_out.exists()
    result = runner.invoke(args=["export", "odm", "--subject", "01-001", "--as", "inv02", "-o",
                                 str(refused_out)])
    assert result.exit_code != 0 and not refused_out.exists()
