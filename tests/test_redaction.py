"""Redaction (E6(R3) 4.2.2b, GDPR-3): a data manager masks a value entered by mistake, with a
reason; views and exports show it as redacted and never the value; the redaction is itself an
audit record, and ``ecrf audit verify`` still passes.

The story: at site 01, an investigator describes an adverse event and types the patient's name
into its free text ("Description as reported"). A monitor verifies the item against the source and
raises a query on it; the principal investigator signs the visit. The data manager finds the value
in the audit trail, opens the confirmation page, and redacts it with a reason.
"""

from __future__ import annotations

import io
import zipfile
from datetime import date, timedelta
from types import SimpleNamespace

import pypdf
import pytest
import sqlalchemy as sa

from ecrf.access.grants import Access
from ecrf.audit import capture, redaction
from ecrf.audit.models import AuditRecord, AuditValue
from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook.models import FormInstance, ItemValue
from ecrf.casebook.services import Slot, Submitted, mark_not_done, save_form
from ecrf.exports import datasets, jobs
from ecrf.extensions import db as _db
from ecrf.review import closure, queries, sdv
from ecrf.review import signatures as sig
from ecrf.review.delegation import add_entry, site_today
from ecrf.review.models import ItemVerification, Signature
from tests.factories import PASSWORD, audit_rows

pytestmark = pytest.mark.requirement("E6-4.2.2b", "GDPR-3")

NAME = "Jeanne Dupuis-Marchand"
TYPED = f"Rash on both forearms, told by the patient {NAME} at the morning round"
CORRECT = "Rash on both forearms, noticed at the morning round"
WHY = "The name of the patient typed into the description"
ITEM = "verbatim"


def _actor(user, permission: str, site_id: int | None = None):
    return Access.for_user(user, permission).actor(site_id)


def _ae(actor, subject, verbatim: str, *, form_repeat=None, reason=None, row_version=None):
    values = {"term": "10002272", "verbatim": verbatim, "grade": "3",
              "onset": date.today().isoformat(), "serious": "N", "causality": "POSSIBLE",
              "action": "DOSE NOT CHANGED", "outcome": "RECOVERING/RESOLVING"}
    result = save_form(actor, subject, "adverse_event", Slot("D1", form_repeat=form_repeat),
                       Submitted(values), reason=reason, row_version=row_version)
    assert result.ok, (result.outcome, result.errors)
    return result.instance


def _browser(app, user):
    """A client of its own, logged in as ``user`` through the login form."""
    browser = app.test_client()
    response = browser.post("/auth/login", data={"username": user.username, "password": PASSWORD})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    return browser


def _form_url(s, instance=None) -> str:
    instance = instance or s.form
    return (f"/subjects/{s.subject.code}/visits/D1/1/forms/adverse_event/{instance.form_repeat}")


def _typed_seq(s) -> int:
    """The audit row that recorded the name as the new value of the item."""
    return next(r.seq for r in audit_rows(action="item.create", subject=s.subject.code, item=ITEM))


def _fresh(model, key):
    """A row as stored now (requests write through sessions of their own)."""
    _db.session.expire_all()
    return _db.session.get(model, key)


def _kept_anywhere() -> list[str]:
    """Where the name is still stored: audit values and current item values."""
    _db.session.expire_all()
    found = [f"audit_value {r.seq}" for r in _db.session.scalars(sa.select(AuditValue).where(
        sa.or_(AuditValue.old_value.contains(NAME), AuditValue.new_value.contains(NAME))))]
    found += [f"item_value {r.id}" for r in _db.session.scalars(sa.select(ItemValue).where(
        ItemValue.value_text.contains(NAME)))]
    return found


@pytest.fixture
def story(app, make, client):
    """Site 01: the investigator's adverse event with the name in it, verified by the monitor,
    queried, its visit D1 signed by the PI; a data manager and an auditor; site 02 elsewhere."""
    site = make.site("01")
    make.site("02")
    s = SimpleNamespace(site=site)
    s.investigator = make.user("inv01", role="investigator", site=site)
    s.monitor = make.user("mon01", role="monitor", site=site)
    s.pi = make.user("pi01", role="investigator", site=site, full_name="Paula Principal")
    s.manager = make.user("dm", role="data_manager")
    s.auditor = make.user("aud", role="auditor")
    add_entry(system_actor(), site, s.pi, "pi", site_today(site) - timedelta(days=30), None)
    s.subject = make.subject(site)
    s.enter = _actor(s.investigator, "crf.enter", site.id)
    save = save_form(s.enter, s.subject, "toy_vitals", Slot("D1"),
                     Submitted({"weight": "70", "fever": "N"}))
    assert save.ok, save.errors
    mark_not_done(s.enter, s.subject, "sofa_daily", Slot("D1"), "not measured that day")
    s.form = _ae(s.enter, s.subject, TYPED)
    assert sdv.verify_items(_actor(s.monitor, "sdv.verify", site.id), s.subject, s.form, [ITEM])
    s.query = queries.raise_query(_actor(s.monitor, "query.manage", site.id), s.form, ITEM,
                                  "Is this description complete?")
    queries.answer(_actor(s.investigator, "query.answer", site.id), s.query, "Yes, it is.")
    queries.close(_actor(s.monitor, "query.manage", site.id), s.query, "Thank you.")
    s.signature = sig.sign(s.pi, s.subject, sig.SignScope.visit("D1"), username="pi01",
                           password=PASSWORD)
    s.seq = _typed_seq(s)
    s.value_row = _db.session.scalar(sa.select(ItemValue).where(
        ItemValue.form_instance_id == s.form.id, ItemValue.item_key == ITEM))
    return s


@pytest.fixture
def redacted(story, app):
    """The data manager redacts the name through the web: trail, confirmation page, POST."""
    dm = _browser(app, story.manager)
    trail = dm.get(f"/audit/?subject={story.subject.code}&item={ITEM}").get_data(as_text=True)
    link = f"/audit/redact/{story.seq}/new"
    assert NAME in trail and f'href="{link}"' in trail
    page = dm.get(link)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert NAME in body and 'id="current-too"' in body  # what will be masked, before it is
    done = dm.post(link, data={"reason_code": "entry_error", "reason_text": WHY})
    assert done.status_code == 302 and done.headers["Location"].startswith("/audit/")
    _db.session.expire_all()  # the request wrote through a session of its own
    story.dm = dm
    return story


# --- the story ---------------------------------------------------------------------------------


def test_the_redaction_is_an_audit_record_with_actor_time_and_reason(redacted, db):
    s = redacted
    first, masking_rows, second = (audit_rows(action="audit.redact")[0],
                                   audit_rows(action="item.update", item=ITEM),
                                   audit_rows(action="audit.redact")[1])
    assert (first.entity_type, first.entity_id, first.field) == ("audit", str(s.seq), "new")
    assert (first.username, first.role, first.actor_site) == ("dm", "data_manager", None)
    assert (first.reason_code, first.reason_text) == ("entry_error", WHY)
    assert first.recorded_at.utcoffset() == timedelta(0)
    assert abs(first.recorded_at - _db.session.scalar(sa.select(sa.func.max(
        AuditRecord.recorded_at)))) < timedelta(seconds=1)
    assert (first.subject, first.visit, first.form, first.item) == (
        s.subject.code, "D1", s.form.form_label, ITEM)
    # the current value masked: an audited change of the item, by the same person, same reason
    [masking] = masking_rows
    assert (masking.username, masking.reason_text, masking.entity_id) == ("dm", WHY, str(s.value_row.id))
    assert masking.old_digest is not None and masking.new_digest is None
    # ... whose old value (the name again) is masked by a redaction of its own
    assert (second.entity_id, second.field, second.reason_text) == (str(masking.seq), "old", WHY)
    values = {v.seq: v for v in _db.session.scalars(sa.select(AuditValue).where(
        AuditValue.seq.in_([s.seq, masking.seq])))}
    assert (values[s.seq].new_value, values[s.seq].new_salt, values[s.seq].redacted_seq) == (
        None, None, first.seq)
    assert (values[masking.seq].old_value, values[masking.seq].redacted_seq) == (None, second.seq)
    row = _fresh(ItemValue, s.value_row.id)
    assert (row.value_text, row.null_flavor, row.redacted_seq) == (None, None, first.seq)
    assert _kept_anywhere() == []


def test_ecrf_audit_verify_still_passes_and_counts_the_redacted_values(redacted, runner):
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "Redacted values (masked by a recorded redaction): 2" in result.output
    assert "Chain OK" in result.output


def test_the_pages_show_the_item_as_redacted_and_never_the_name(redacted, app):
    s = redacted
    history = (f"/subjects/{s.subject.code}/visits/D1/1/forms/adverse_event/"
               f"{s.form.form_repeat}/items/{ITEM}/history")
    pages = {
        "investigator": (_browser(app, s.pi), [_form_url(s), history, f"/subjects/{s.subject.code}",
                                               f"/subjects/{s.subject.code}/casebook",
                                               f"/subjects/{s.subject.code}/visits/D1/1/sign"]),
        "monitor": (_browser(app, s.monitor), [_form_url(s), history, f"/queries/{s.query.id}",
                                               "/sdv/", "/queries/"]),
        "data manager": (s.dm, [_form_url(s), history, f"/audit/?subject={s.subject.code}",
                                "/audit/review", "/"]),
        "auditor": (_browser(app, s.auditor), [_form_url(s), history, "/audit/",
                                               "/audit/export.csv", "/audit/export.jsonl"]),
    }
    for who, (browser, urls) in pages.items():
        for url in urls:
            response = browser.get(url)
            assert response.status_code == 200, (who, url)
            assert NAME.encode() not in response.get_data(), (who, url)
    form = s.dm.get(_form_url(s)).get_data(as_text=True)
    assert f'id="{ITEM}-redacted"' in form and f"audit record #{s.value_row.redacted_seq}" in form
    assert "Redacted: no value to verify" in pages["monitor"][0].get(_form_url(s)).get_data(as_text=True)
    shown = s.dm.get(history).get_data(as_text=True)
    assert shown.count("[redacted]") == 2  # as entered, and as the old value of the mask
    assert f"Redaction of the new value of audit record #{s.seq}" in shown and WHY in shown


def test_the_exports_show_the_value_as_redacted_and_never_the_name(redacted, db):
    s = redacted
    exporter = _actor(s.manager, "export.run")
    files = {kind: jobs.file_path(jobs.export_now(exporter, kind, jobs.Scope()))
             for kind in ("odm_snapshot", "odm_transactional", "datasets", "pdf", "audit_jsonl")}
    for kind, path in files.items():
        assert NAME.encode() not in path.read_bytes(), kind
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    data = archive.read(member)
                    assert NAME.encode() not in data, (kind, member)
                    if member.endswith(".pdf"):
                        text = " ".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(data)).pages)
                        assert NAME not in " ".join(text.split()), member
    # ODM: an ItemData without Value or IsNull, naming the redaction
    snapshot = files["odm_snapshot"].read_text(encoding="utf-8")
    oid_part = 'ItemOID="I.ADVERSE_EVENT.VERBATIM">'
    assert oid_part in snapshot
    assert f"Value redacted (audit record {s.value_row.redacted_seq})" in snapshot
    from ecrf.exports import odm

    assert odm.validate(files["odm_snapshot"]) == [] and odm.check_references(files["odm_snapshot"]) == []
    # the Transactional file: the entry without Value or IsNull, then the mask as a null value
    from lxml import etree

    root = etree.parse(str(files["odm_transactional"])).getroot()
    changes = root.findall(".//o:ItemData[@ItemOID='I.ADVERSE_EVENT.VERBATIM']", {"o": odm.NS})
    assert [(c.get("TransactionType"), c.get("Value"), c.get("IsNull")) for c in changes] == [
        ("Insert", None, None), ("Update", None, "Yes")]
    # datasets: no value, and the null flavor MSK (masked)
    table = next(t for t in datasets.layout() if t.crf_key == "adverse_event")
    nf = next(c.name for c in table.columns if c.item == ITEM and c.role == "null_flavor")
    with zipfile.ZipFile(files["datasets"]) as archive:
        import csv

        rows = list(csv.DictReader(io.StringIO(archive.read(f"csv/{table.name.lower()}.csv").decode())))
    assert [(r["VERBATIM"], r[nf]) for r in rows] == [("", "MSK")]
    # the PDF casebook
    with zipfile.ZipFile(files["pdf"]) as archive:
        [member] = archive.namelist()
        text = " ".join(" ".join(p.extract_text() for p in pypdf.PdfReader(
            io.BytesIO(archive.read(member))).pages).split())
    assert "Description as reported (redacted)" in text


def test_the_api_shows_the_value_as_masked_and_never_the_name(redacted, client):
    from ecrf.api.tokens import create_token

    s = redacted
    token = create_token(s.manager, "redaction")[1]
    headers = {"Authorization": f"Bearer {token}"}
    forms = client.get(f"/api/v1/subjects/{s.subject.code}/forms", headers=headers)
    trail = client.get("/api/v1/audit", headers=headers,
                       query_string={"subject": s.subject.code, "limit": 200})
    assert forms.status_code == trail.status_code == 200
    assert NAME.encode() not in forms.get_data() and NAME.encode() not in trail.get_data()
    ae = next(f for f in forms.get_json()["items"] if f["crf"] == "adverse_event")
    assert {i["item"]: i for i in ae["items"]}[ITEM] == {
        "item": ITEM, "value": None, "null_flavor": "MSK", "null_comment": None}
    typed = next(r for r in trail.get_json()["items"] if r["seq"] == s.seq)
    assert typed["new_value"] is None and typed["new_redacted"] is True


# --- who may, and with what ---------------------------------------------------------------------


@pytest.mark.requirement("P11-10g")
@pytest.mark.parametrize("role", ["investigator", "monitor", "auditor"])
def test_an_investigator_a_monitor_or_an_auditor_cannot_redact(role, story, app, db):
    user = {"investigator": story.investigator, "monitor": story.monitor,
            "auditor": story.auditor}[role]
    browser = _browser(app, user)
    url = f"/audit/redact/{story.seq}/new"
    assert browser.get(url).status_code == 403
    assert browser.post(url, data={"reason_code": "entry_error", "reason_text": WHY}).status_code == 403
    assert audit_rows(action="audit.redact") == []
    assert NAME in _fresh(AuditValue, story.seq).new_value
    assert [r.field for r in audit_rows(action="access.denied")] == ["audit.redact_value"] * 2
    trail = browser.get("/audit/").get_data(as_text=True) if role == "auditor" else ""
    assert 'href="/audit/redact/' not in trail  # no link offered either


def test_a_redaction_without_a_reason_is_refused_and_changes_nothing(story, app, db):
    dm = _browser(app, story.manager)
    url = f"/audit/redact/{story.seq}/new"
    before = len(audit_rows())
    for data in ({}, {"reason_code": "entry_error", "reason_text": "   "}):
        response = dm.post(url, data=data)
        assert response.status_code == 400
        assert "Give the reason for the redaction." in response.get_data(as_text=True)
    assert len(audit_rows()) == before
    assert NAME in _fresh(AuditValue, story.seq).new_value
    assert _fresh(ItemValue, story.value_row.id).value_text == TYPED
    # the service refuses it as well, whatever the caller
    with pytest.raises(redaction.RedactionError):
        redaction.redact_value(_actor(story.manager, "audit.redact"), story.seq, "new",
                               Reason("entry_error", ""))
    assert len(audit_rows()) == before
    # the same request with a reason does redact (the control)
    assert dm.post(url, data={"reason_code": "entry_error", "reason_text": WHY}).status_code == 302
    assert _kept_anywhere() == []


def test_a_redaction_post_without_the_csrf_token_is_refused(story, app, monkeypatch, db):
    from tests.test_security_headers import csrf_token

    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    dm = app.test_client()
    token = csrf_token(dm.get("/auth/login"))
    assert dm.post("/auth/login", data={"username": "dm", "password": PASSWORD,
                                        "csrf_token": token}).status_code == 302
    url = f"/audit/redact/{story.seq}/new"
    data = {"reason_code": "entry_error", "reason_text": WHY}
    assert dm.post(url, data=data).status_code == 400
    assert audit_rows(action="audit.redact") == []
    assert dm.post(url, data={**data, "csrf_token": csrf_token(dm.get(url))}).status_code == 302
    assert len(audit_rows(action="audit.redact")) == 2


def test_a_value_that_is_not_there_cannot_be_redacted(story, app, db):
    dm = _browser(app, story.manager)
    assert dm.get(f"/audit/redact/{story.seq}/old").status_code == 404  # created: no old value
    assert dm.get(f"/audit/redact/{story.seq}/middle").status_code == 404
    assert dm.get("/audit/redact/999999/new").status_code == 404
    assert dm.post(f"/audit/redact/{story.seq}/new",
                   data={"reason_code": "entry_error", "reason_text": WHY}).status_code == 302
    assert dm.get(f"/audit/redact/{story.seq}/new").status_code == 404  # already masked


def test_a_locked_subject_refuses_the_redaction_of_its_current_value_and_nothing_changes(
        story, app, db):
    closure.change(system_actor(), closure.Scope.of_subject(story.subject), "lock")
    dm = _browser(app, story.manager)
    url = f"/audit/redact/{story.seq}/new"
    assert 'id="redact-closed"' in dm.get(url).get_data(as_text=True)  # told beforehand
    before = len(audit_rows())
    response = dm.post(url, data={"reason_code": "entry_error", "reason_text": WHY})
    assert response.status_code == 409 and "is locked" in response.get_data(as_text=True)
    assert len(audit_rows()) == before and NAME in _fresh(AuditValue, story.seq).new_value
    # unlocked, the same redaction goes through (the control)
    closure.change(system_actor(), closure.Scope.of_subject(story.subject), "unlock",
                   Reason("other", "a name to redact"))
    assert dm.post(url, data={"reason_code": "entry_error", "reason_text": WHY}).status_code == 302
    assert _kept_anywhere() == []


def test_a_value_no_longer_current_is_masked_in_the_trail_even_when_the_subject_is_locked(
        story, db):
    """Masking the trail alone changes no clinical data: a lock does not stand in its way."""
    s = story
    _ae(s.enter, s.subject, CORRECT, form_repeat=s.form.form_repeat,
        reason=Reason("entry_error", "description corrected"))
    closure.change(system_actor(), closure.Scope.of_subject(s.subject), "lock")
    found = redaction.redact_value(_actor(s.manager, "audit.redact"), s.seq, "new",
                                   Reason("entry_error", WHY))
    assert found.current is None and _fresh(AuditValue, s.seq).new_value is None


# --- the current value: masked with the trail -------------------------------------------------


def test_without_masking_the_current_value_the_name_would_still_show(story, app, monkeypatch, db):
    """Negative control of the current value's masking: with it switched off, the trail is
    masked but the form, the API and the exports still show the name."""
    monkeypatch.setattr(redaction, "_current_value", lambda record, value: None)
    redaction.redact_value(_actor(story.manager, "audit.redact"), story.seq, "new",
                           Reason("entry_error", WHY))
    assert _fresh(AuditValue, story.seq).new_value is None
    assert _kept_anywhere() == [f"item_value {story.value_row.id}"]
    page = _browser(app, story.investigator).get(_form_url(story))
    assert NAME.encode() in page.get_data()


def test_without_its_second_redaction_the_mask_would_keep_the_name_in_the_trail(
        story, monkeypatch, db):
    """Negative control of the second redaction: the audit row recording the mask holds the
    name as its old value unless that side is masked too."""
    real = redaction._mask
    calls = []

    def first_only(session, seq, side, redaction_seq):
        calls.append((seq, side))
        if len(calls) == 1:
            real(session, seq, side, redaction_seq)

    monkeypatch.setattr(redaction, "_mask", first_only)
    redaction.redact_value(_actor(story.manager, "audit.redact"), story.seq, "new",
                           Reason("entry_error", WHY))
    masking = audit_rows(action="item.update", item=ITEM)[-1]
    assert calls == [(story.seq, "new"), (masking.seq, "old")]
    assert _kept_anywhere() == [f"audit_value {masking.seq}"]


def test_rows_that_would_not_name_each_other_are_refused_and_nothing_changes(story, monkeypatch,
                                                                            db):
    """The three rows name each other's seqs, known in advance under the chain lock; if the
    rows appended did not get those seqs (here: a head read one behind), the whole redaction
    is rolled back."""
    from ecrf.audit.unit_of_work import AuditError

    real = redaction._head_seq
    monkeypatch.setattr(redaction, "_head_seq", lambda session: real(session) - 1)
    before = len(audit_rows())
    with pytest.raises(AuditError, match="did not get the seqs they name"):
        redaction.redact_value(_actor(story.manager, "audit.redact"), story.seq, "new",
                               Reason("entry_error", WHY))
    assert len(audit_rows()) == before
    assert _fresh(ItemValue, story.value_row.id).value_text == TYPED


def test_a_value_corrected_between_the_page_and_the_redaction_is_not_masked(story, monkeypatch,
                                                                           db):
    """The current value is checked again under the chain lock: a correction saved after the
    data manager looked at it is not masked as if it were the name."""
    s = story
    stale = redaction.plan(s.seq, "new")
    assert stale.current is not None
    _ae(s.enter, s.subject, CORRECT, form_repeat=s.form.form_repeat,
        reason=Reason("entry_error", "description corrected"))
    monkeypatch.setattr(redaction, "plan", lambda seq, side: stale)
    before = len(audit_rows())
    with pytest.raises(redaction.RedactionError, match="changed meanwhile"):
        redaction.redact_value(_actor(s.manager, "audit.redact"), s.seq, "new",
                               Reason("entry_error", WHY))
    assert len(audit_rows()) == before
    assert _fresh(ItemValue, s.value_row.id).value_text == CORRECT
    monkeypatch.undo()  # looked at again: the entry is masked in the trail only
    assert redaction.redact_value(_actor(s.manager, "audit.redact"), s.seq, "new",
                                  Reason("entry_error", WHY)).current is None


def test_a_value_no_longer_current_is_masked_in_the_trail_only(story, db):
    s = story
    corrected = _ae(s.enter, s.subject, CORRECT, form_repeat=s.form.form_repeat,
                    reason=Reason("entry_error", "description corrected"))
    assert corrected.id == s.form.id
    manager = _actor(s.manager, "audit.redact")
    found = redaction.redact_value(manager, s.seq, "new", Reason("entry_error", WHY))
    assert found.current is None
    row = _fresh(ItemValue, s.value_row.id)
    assert (row.value_text, row.redacted_seq) == (CORRECT, None)
    correction = audit_rows(action="item.update", item=ITEM)[-1]
    assert _kept_anywhere() == [f"audit_value {correction.seq}"]  # its old value: one more to do
    redaction.redact_value(manager, correction.seq, "old", Reason("entry_error", WHY))
    assert _kept_anywhere() == []
    assert len(audit_rows(action="audit.redact")) == 2
    assert len(audit_rows(action="item.update", item=ITEM)) == 1


# --- what follows a redaction: a new value, SDV, a stale page, signatures --------------------------


def test_a_value_entered_after_the_redaction_is_shown_again(redacted, app, db):
    s = redacted
    _ae(s.enter, s.subject, CORRECT, form_repeat=s.form.form_repeat)
    row = _fresh(ItemValue, s.value_row.id)
    assert (row.value_text, row.redacted_seq) == (CORRECT, None)
    page = _browser(app, s.investigator).get(_form_url(s)).get_data(as_text=True)
    assert CORRECT in page and f'id="{ITEM}-redacted"' not in page
    history = audit_rows(entity_type="item", item=ITEM)
    assert [(r.action, r.old_digest is not None, r.new_digest is not None) for r in history] == [
        ("item.create", False, True), ("item.update", True, False), ("item.update", False, True)]


def test_without_the_rule_a_new_value_would_still_be_shown_as_redacted(redacted, monkeypatch, db):
    """Negative control of ``redaction.clear_on_new_value``."""
    monkeypatch.setattr(capture, "FLUSH_RULES", [r for r in capture.FLUSH_RULES
                                                 if r[1] != "redaction.clear_on_new_value"])
    s = redacted
    _ae(s.enter, s.subject, CORRECT, form_repeat=s.form.form_repeat)
    row = _fresh(ItemValue, s.value_row.id)
    assert (row.value_text, row.redacted_seq is not None) == (CORRECT, True)


def test_the_redaction_withdraws_the_items_verification(story, db):
    verification = _db.session.scalar(sa.select(ItemVerification).where(
        ItemVerification.item_value_id == story.value_row.id))
    assert verification.verified  # before: verified by the monitor
    redaction.redact_value(_actor(story.manager, "audit.redact"), story.seq, "new",
                           Reason("entry_error", WHY))
    _db.session.refresh(verification)
    assert not verification.verified
    assert [r.reason_code for r in audit_rows(entity_type="sdv", field="verified")][-1] == "system"


def test_a_form_page_opened_before_the_redaction_cannot_save_the_name_back(story, app, db):
    page = _browser(app, story.investigator)
    form = _fresh(FormInstance, story.form.id)
    version = form.row_version
    redaction.redact_value(_actor(story.manager, "audit.redact"), story.seq, "new",
                           Reason("entry_error", WHY))
    response = page.post(_form_url(story), data={
        "term": "10002272", "verbatim": TYPED, "grade": "3", "onset": date.today().isoformat(),
        "serious": "N", "causality": "POSSIBLE", "action": "DOSE NOT CHANGED",
        "outcome": "RECOVERING/RESOLVING", "row_version": str(version),
        "submission_token": "stale-page"})
    assert response.status_code == 409  # a conflict: nothing saved
    assert _kept_anywhere() == []


def test_without_the_row_version_moving_the_stale_page_would_save_the_name_back(
        story, app, monkeypatch, db):
    """Negative control: the redaction moves the form's row version (by changing the form's
    update time); with the time left as it was, the stale page saves the name again."""
    form = _fresh(FormInstance, story.form.id)
    version, stamp = form.row_version, form.updated_at
    monkeypatch.setattr(redaction, "utcnow", lambda: stamp)
    page = _browser(app, story.investigator)
    redaction.redact_value(_actor(story.manager, "audit.redact"), story.seq, "new",
                           Reason("entry_error", WHY))
    response = page.post(_form_url(story), data={
        "term": "10002272", "verbatim": TYPED, "grade": "3", "onset": date.today().isoformat(),
        "serious": "N", "causality": "POSSIBLE", "action": "DOSE NOT CHANGED",
        "outcome": "RECOVERING/RESOLVING", "row_version": str(version),
        "submission_token": "stale-page"})
    assert response.status_code == 302
    assert f"item_value {story.value_row.id}" in _kept_anywhere()


def test_a_signature_over_the_redacted_value_shows_as_changed_and_is_kept(story, db):
    """The signed content covers each value's text (``ecrf.review.signatures``): once the value
    is masked, the content no longer matches what was signed. The signature is kept, shown as
    changed since signing, and the PI signs the corrected visit again."""
    s = story
    states = {st.scope.visit_key: st.state for st in sig.signature_status(s.subject)}
    assert states["D1"] == sig.VALID
    redaction.redact_value(_actor(s.manager, "audit.redact"), s.seq, "new",
                           Reason("entry_error", WHY))
    status = next(st for st in sig.signature_status(s.subject) if st.scope.visit_key == "D1")
    assert status.state == sig.BROKEN and status.signature.id == s.signature.id
    assert status.changed_at is not None
    assert _db.session.scalar(sa.select(sa.func.count(Signature.id))) == 1
    again = sig.sign(s.pi, s.subject, sig.SignScope.visit("D1"), username="pi01", password=PASSWORD)
    assert again.content_hash != s.signature.content_hash
    status = next(st for st in sig.signature_status(s.subject) if st.scope.visit_key == "D1")
    assert status.state == sig.VALID


def test_before_the_redaction_the_same_pages_and_exports_show_the_name(story, app, db):
    """The control of the two tests above: the same searches find the name before it is
    redacted (the PDF is searched in its text, not its compressed bytes)."""
    s = story
    pi = _browser(app, s.pi)
    for url in (_form_url(s), f"/subjects/{s.subject.code}/visits/D1/1/forms/adverse_event/"
                f"{s.form.form_repeat}/items/{ITEM}/history"):
        assert NAME.encode() in pi.get(url).get_data(), url
    exporter = _actor(s.manager, "export.run")
    for kind in ("odm_snapshot", "odm_transactional", "audit_jsonl"):
        path = jobs.file_path(jobs.export_now(exporter, kind, jobs.Scope()))
        assert NAME.encode() in path.read_bytes(), kind
    with zipfile.ZipFile(jobs.file_path(jobs.export_now(exporter, "datasets", jobs.Scope()))) as z:
        assert any(NAME.encode() in z.read(m) for m in z.namelist())
    with zipfile.ZipFile(jobs.file_path(jobs.export_now(exporter, "pdf", jobs.Scope()))) as z:
        [member] = z.namelist()
        text = " ".join(" ".join(p.extract_text() for p in pypdf.PdfReader(
            io.BytesIO(z.read(member))).pages).split())
    assert NAME in text
