"""Source data verification: monitors verify saved values item by item or in bulk, each item with
its own audited verification; critical items are verified for every subject, the others as the
data manager's plan says; any change to a verified value clears its verification, whatever the
path; the backlog says what is left per site and subject."""

from __future__ import annotations

import hashlib
import re

import pytest
import sqlalchemy as sa

from ecrf.access.grants import Access
from ecrf.audit import capture
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.auth.services import system_actor
from ecrf.casebook.models import ItemValue
from ecrf.casebook.services import Slot, Submitted, definition_for, save_form
from ecrf.extensions import db
from ecrf.review import closure, sdv
from ecrf.review.closure import Scope
from ecrf.review.models import ItemVerification, SdvCount, SdvPlan
from tests.factories import audit_rows

TOY = "toy_vitals"
FORM = "/subjects/{code}/visits/D1/1/forms/toy_vitals/1"
VALUES = {"weight": "70", "height": "170", "fever": "N", "comment": "seen at rounds"}


def _save(subject, values=None, reason=None, **kwargs):
    result = save_form(system_actor(), subject, TOY, Slot("D1"), Submitted(values or VALUES),
                       reason=reason, **kwargs)
    assert result.ok, (result.outcome, result.errors)
    return result.instance


def _verification(subject, item_key: str) -> ItemVerification | None:
    db.session.expire_all()
    return next((i.verification for i in sdv.items_of(subject) if i.item.key == item_key), None)


def _verified(subject) -> set[str]:
    db.session.expire_all()
    return {i.item.key for i in sdv.items_of(subject) if i.verified}


def _monitor_actor(user, subject):
    return Access.for_user(user, "sdv.verify").actor(subject.site_id)


def _dm_actor(make):
    return Access.for_user(make.user("dm-plan", role="data_manager"), "sdv.plan").actor()


def _verify_all(make, subject):
    monitor = make.user("cra-helper", role="monitor", site=subject.site)
    return sdv.verify_scope(_monitor_actor(monitor, subject), subject,
                            instance=sdv.items_of(subject)[0].instance)


def _bucket(code: str) -> int:
    """The protocol's rule, written out again: SHA-256 of the subject code, modulo 100."""
    return int.from_bytes(hashlib.sha256(code.encode()).digest(), "big") % 100


# --- verifying ---------------------------------------------------------------------------------


@pytest.mark.requirement("A11-6", "A11-12.4", "E6-4.2.2a-iii")
def test_a_monitor_verifies_one_item_and_the_trail_says_who_and_when(make, login_as, client, db):
    subject = make.subject("01")
    _save(subject)
    monitor = login_as("monitor", site="01")
    response = client.post(FORM.format(code=subject.code) + "/sdv/verify", data={"item": "weight"})
    assert response.status_code == 302
    verification = _verification(subject, "weight")
    assert verification.verified and verification.verified_by_id == monitor.id
    assert verification.verified_at is not None
    assert _verified(subject) == {"weight"}
    rows = audit_rows(action="sdv.create", field="verified")
    assert [(r.username, r.role, r.subject, r.item, r.reason_code) for r in rows] == [
        (monitor.username, "monitor", subject.code, "weight", "administrative")]
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    assert f"Verified by {monitor.full_name} on" in page
    assert "1 item verified." in page


@pytest.mark.requirement("P11-10g")
@pytest.mark.parametrize("role", ["investigator", "data_manager", "auditor"])
def test_only_a_monitor_verifies(role, make, login_as, client, db):
    subject = make.subject("01")
    _save(subject)
    login_as(role, site="01" if role == "investigator" else None)
    response = client.post(FORM.format(code=subject.code) + "/sdv/verify", data={"all": "1"})
    assert response.status_code == 403
    assert _verified(subject) == set()
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    assert "Not verified" in page  # everyone reading the casebook sees the state
    assert "Verify all items of this form" not in page and 'form="sdv-verify"' not in page


def test_the_monitor_sees_a_verify_box_per_item_and_a_button_for_the_whole_form(make, login_as,
                                                                                 client, db):
    subject = make.subject("01")
    _save(subject)
    login_as("monitor", site="01")
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    for key in ("weight", "height", "fever", "comment"):
        assert f'name="item" value="{key}" form="sdv-verify"' in page
    assert 'value="bmi" form="sdv-verify"' not in page  # computed: not subject to SDV
    assert 'value="temperature" form="sdv-verify"' not in page  # no value saved
    assert "Not subject to SDV (computed by the system)." in page
    assert "Verify all items of this form" in page


def test_a_monitor_of_another_site_gets_404_and_verifies_nothing(make, login_as, client, db):
    subject = make.subject("02")
    _save(subject)
    monitor = login_as("monitor", site="01")
    for url in (FORM.format(code=subject.code) + "/sdv/verify",
                f"/subjects/{subject.code}/visits/D1/sdv/verify",
                f"/subjects/{subject.code}/sdv/verify"):
        assert client.post(url, data={"all": "1", "item": "weight"}).status_code == 404
    assert _verified(subject) == set()
    assert [r.username for r in audit_rows(action="access.denied")] == [monitor.username] * 3


def test_only_a_saved_value_or_null_flavor_can_be_verified_never_a_computed_one(make, db):
    subject = make.subject("01")
    _save(subject)
    result = save_form(system_actor(), subject, TOY, Slot("D1"),
                       Submitted({**VALUES, "height": "", "comment": ""}, {"comment": ("UNK", "")}),
                       reason=Reason("entry_error"))
    assert result.outcome == "saved", result.errors
    instance = result.instance
    actor = _monitor_actor(make.user("cra", role="monitor", site="01"), subject)
    for key in ("temperature", "bmi", "height"):  # never entered; computed; entered, then cleared
        with pytest.raises(sdv.SdvError, match="cannot be verified"):
            sdv.verify_items(actor, subject, instance, [key])
    assert sdv.verify_items(actor, subject, instance, ["comment"]) == 1  # a null flavor: yes
    assert _verified(subject) == {"comment"}
    assert audit_rows(action="sdv.create", field="verified", item="height") == []


def test_verifying_a_whole_form_writes_one_verification_per_item_in_one_unit_of_work(
        make, login_as, client, db):
    subject = make.subject("01")
    _save(subject)
    login_as("monitor", site="01")
    client.post(FORM.format(code=subject.code) + "/sdv/verify", data={"all": "1"})
    assert _verified(subject) == {"weight", "height", "fever", "comment"}
    rows = audit_rows(action="sdv.create", field="verified")
    assert sorted(r.item for r in rows) == ["comment", "fever", "height", "weight"]
    assert len({r.request_id for r in rows}) == 1  # one bulk action, one transaction
    assert db.session.scalar(sa.select(sa.func.count(ItemVerification.id))) == 4
    before = len(audit_rows())
    again = client.post(FORM.format(code=subject.code) + "/sdv/verify", data={"all": "1"},
                        follow_redirects=True)
    assert "Nothing left to verify here." in again.get_data(as_text=True)
    assert len(audit_rows()) == before  # verifying twice records nothing new


def test_bulk_per_visit_and_per_subject_verify_what_the_plan_requires(make, login_as, client, db):
    first, second = make.subject("01"), make.subject("01")
    _save(first), _save(second)
    sdv.set_plan(_dm_actor(make), "none")
    login_as("monitor", site="01")
    client.post(f"/subjects/{first.code}/visits/D1/sdv/verify")
    client.post(f"/subjects/{second.code}/sdv/verify")
    assert _verified(first) == _verified(second) == {"weight"}  # critical only, by the plan
    page = client.get(f"/subjects/{second.code}/casebook").get_data(as_text=True)
    assert "SDV 1/1" in page and "Only critical items are required." in page


def test_un_verifying_needs_a_reason_and_the_reason_is_on_the_audit_record(make, login_as, client,
                                                                           db):
    subject = make.subject("01")
    _save(subject)
    login_as("monitor", site="01")
    url = FORM.format(code=subject.code) + "/sdv"
    client.post(url + "/verify", data={"item": "weight"})
    refused = client.post(url + "/unverify", data={"item": "weight", "reason_text": " "},
                          follow_redirects=True)
    assert "a reason is required" in refused.get_data(as_text=True)
    assert _verified(subject) == {"weight"}
    client.post(url + "/unverify", data={"item": "weight",
                                         "reason_text": "source page 3 was for another patient"})
    verification = _verification(subject, "weight")
    assert not verification.verified and verification.verified_by_id is None
    [row] = audit_rows(action="sdv.update", field="verified")
    assert (row.reason_code, row.reason_text) == ("other", "source page 3 was for another patient")
    assert (row.value.old_value, row.value.new_value) == ("true", "false")
    # verified again later: a new audited step on the same verification
    client.post(url + "/verify", data={"item": "weight"})
    assert _verified(subject) == {"weight"}


def test_verification_goes_on_while_frozen_and_stops_when_locked(make, db):
    subject = make.subject("01")
    instance = _save(subject)
    dm = Access.for_user(make.user("dm", role="data_manager"), "closure.freeze").actor()
    actor = _monitor_actor(make.user("cra", role="monitor", site="01"), subject)
    closure.change(dm, Scope.of_subject(subject), "freeze")
    assert sdv.verify_items(actor, subject, instance, ["weight"]) == 1
    closure.change(dm, Scope.of_subject(subject), "lock")
    with pytest.raises(sdv.SdvError, match="is locked"):
        sdv.verify_items(actor, subject, instance, ["height"])
    assert _verified(subject) == {"weight"}


# --- the plan ----------------------------------------------------------------------------------


@pytest.mark.requirement("A11-6", "E6-4.2.1")
def test_critical_items_are_required_for_every_subject_whatever_the_plan(make, db):
    subjects = [make.subject("01") for _ in range(3)]  # buckets 86, 2, 73
    crf = definition_for(TOY, None)
    dm = _dm_actor(make)
    assert sdv.current_plan() == sdv.Plan("all")  # no plan set: every item
    for mode, percentage in (("all", None), ("percentage", 50), ("none", None)):
        sdv.set_plan(dm, mode, percentage, "monitoring plan v2")
        for subject in subjects:
            assert sdv.is_required(subject, crf, "weight")  # critical
            assert not sdv.is_required(subject, crf, "bmi")  # computed: never
            expected = mode == "all" or (mode == "percentage" and _bucket(subject.code) < 50)
            assert sdv.is_required(subject, crf, "height") == expected, (mode, subject.code)


@pytest.mark.requirement("E6-4.2.1")
def test_the_percentage_selects_subjects_by_a_stable_hash_of_their_code(make, login_as, client,
                                                                        db):
    subjects = [make.subject("01") for _ in range(12)]
    for subject in subjects:
        _save(subject)
    sample = {}
    for percentage in (10, 30, 50, 90):
        plan = sdv.Plan("percentage", percentage)
        sample[percentage] = {s.code for s in subjects if plan.selects(s.code)}
        assert sample[percentage] == {s.code for s in subjects if _bucket(s.code) < percentage}
    assert sample[10] <= sample[30] <= sample[50] <= sample[90]  # a larger share only adds
    assert set() < sample[50] < {s.code for s in subjects}
    sdv.set_plan(_dm_actor(make), "percentage", 50)
    for subject in subjects:  # all saved values if in the sample, the critical one otherwise
        assert {i.item.key for i in sdv.required_items(subject)} == (
            {"weight", "height", "fever", "comment"} if subject.code in sample[50] else {"weight"})
    login_as("monitor", site="01")
    inside = next(s for s in subjects if s.code in sample[50])
    outside = next(s for s in subjects if s.code not in sample[50])
    page = client.get(f"/subjects/{inside.code}").get_data(as_text=True)
    assert f"This subject is in the sample (its hash number {_bucket(inside.code)} is below 50)" in page
    page = client.get(f"/subjects/{outside.code}/casebook").get_data(as_text=True)
    assert "This subject is not in the sample" in page and "SDV 0/1" in page


def test_the_data_manager_sets_the_plan_and_changing_it_needs_a_reason(make, login_as, client,
                                                                       db):
    dm = login_as("data_manager")
    assert client.post("/sdv/plan", data={"mode": "percentage", "percentage": "20"}).status_code == 302
    assert db.session.get(SdvPlan, 1).percentage == 20
    refused = client.post("/sdv/plan", data={"mode": "none"}, follow_redirects=True)
    assert "a reason is required" in refused.get_data(as_text=True)
    assert sdv.current_plan() == sdv.Plan("percentage", 20)
    for bad in ("0", "100", "ten"):
        client.post("/sdv/plan", data={"mode": "percentage", "percentage": bad,
                                       "reason_text": "typo"})
        assert sdv.current_plan() == sdv.Plan("percentage", 20)
    client.post("/sdv/plan", data={"mode": "none", "reason_text": "risk review: low error rate"})
    assert sdv.current_plan() == sdv.Plan("none")
    rows = audit_rows(action="sdv_plan.update")
    assert {r.field for r in rows} == {"mode", "percentage"}
    assert {(r.username, r.reason_code, r.reason_text) for r in rows} == {
        (dm.username, "other", "risk review: low error rate")}
    page = client.get("/sdv/plan").get_data(as_text=True)
    assert "Now: critical items only." in page


def test_a_monitor_cannot_set_the_plan(make, login_as, client, db):
    login_as("monitor", site="01")
    assert client.post("/sdv/plan", data={"mode": "none"}).status_code == 403
    assert db.session.get(SdvPlan, 1) is None


# --- a changed value loses its verification -----------------------------------------------------

CLEARED = ("system", "value changed after verification")


def _cleared_rows(item: str):
    return [(r.item, r.reason_code, r.reason_text, r.value.old_value, r.value.new_value)
            for r in audit_rows(action="sdv.update", field="verified", item=item)]


@pytest.mark.requirement("ALCOA-accurate")
def test_a_value_changed_on_the_form_loses_its_verification(make, login_as, client, db):
    subject = make.subject("01")
    _save(subject)
    _verify_all(make, subject)
    investigator = login_as("investigator", site="01")
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    token = re.search(r'name="submission_token" type="hidden" value="([^"]+)"', page).group(1)
    version = re.search(r'name="row_version" type="hidden" value="([^"]*)"', page).group(1)
    response = client.post(FORM.format(code=subject.code), data={
        **VALUES, "weight": "72.5", "submission_token": token, "row_version": version,
        "reason_code": "entry_error"})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    assert _verified(subject) == {"height", "fever", "comment"}
    assert _cleared_rows("weight") == [("weight", *CLEARED, "true", "false")]
    [row] = audit_rows(action="sdv.update", field="verified", item="weight")
    assert row.username == investigator.username  # attributed to whoever changed the value
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    assert '<p class="note sdv-mark" id="sdv-weight">Not verified' in page


def test_a_value_changed_from_the_cli_loses_its_verification(runner, make, db):
    subject = make.subject("01")
    _save(subject)
    _verify_all(make, subject)
    make.user("inv", role="investigator", site="01")
    done = runner.invoke(args=["crf", "enter", subject.code, "D1", TOY, "weight=70",
                               "height=171", "fever=N", "comment=seen at rounds",
                               "--reason", "entry_error", "--as", "inv"])
    assert done.exit_code == 0, done.output
    assert _verified(subject) == {"weight", "fever", "comment"}
    assert _cleared_rows("height") == [("height", *CLEARED, "true", "false")]


def test_a_recalculation_changes_only_the_derived_value_and_keeps_other_verifications(make, db):
    """save_form recalculates BMI when the height changes: the height loses its verification,
    the weight keeps its own, and the BMI (computed) has none to lose."""
    subject = make.subject("01")
    _save(subject)
    _verify_all(make, subject)
    _save(subject, {**VALUES, "height": "180"}, reason=Reason("entry_error"))
    assert [r.reason_text for r in audit_rows(action="item.update", item="bmi")] == [
        "derived value recalculated"]
    assert _verified(subject) == {"weight", "fever", "comment"}
    assert _cleared_rows("weight") == [] and _cleared_rows("bmi") == []


def test_a_recalculated_derived_value_loses_a_verification_it_carried(make, db):
    """The recalculation path goes through the same rule: a verification on BMI (recorded, say,
    before the item became derived; the service never makes one) is cleared when it changes."""
    subject = make.subject("01")
    instance = _save(subject)
    bmi = db.session.scalar(sa.select(ItemValue).where(ItemValue.form_instance_id == instance.id,
                                                       ItemValue.item_key == "bmi"))
    with unit_of_work(system_actor()):
        db.session.add(ItemVerification(item_value=bmi, verified=True,
                                        verified_by_id=system_actor().user_id))
    _save(subject, {**VALUES, "weight": "80"}, reason=Reason("entry_error"))
    assert not db.session.scalar(sa.select(ItemVerification.verified).where(
        ItemVerification.item_value_id == bmi.id))
    assert _cleared_rows("bmi") == [("bmi", *CLEARED, "true", "false")]


@pytest.mark.requirement("ALCOA-accurate")
def test_negative_control_without_the_rule_a_changed_value_keeps_its_verification(make, db,
                                                                                 monkeypatch):
    subject = make.subject("01")
    _save(subject)
    _verify_all(make, subject)
    monkeypatch.setattr(capture, "FLUSH_RULES",
                        [r for r in capture.FLUSH_RULES if r[1] != "sdv.clear_on_change"])
    _save(subject, {**VALUES, "weight": "72.5"}, reason=Reason("entry_error"))
    assert "weight" in _verified(subject)  # the stale verification the rule exists to clear
    assert _cleared_rows("weight") == []


# --- the backlog -------------------------------------------------------------------------------


@pytest.mark.requirement("E6-4.2.3")
def test_the_backlog_counts_what_is_left_per_site_and_per_subject(make, db):
    a, b, c = make.subject("01"), make.subject("01"), make.subject("02")
    for subject in (a, b, c):
        _save(subject)  # 4 values each: weight (critical), height, fever, comment
    monitor = make.user("cra", role="monitor", site="01")
    sdv.verify_items(_monitor_actor(monitor, a), a, sdv.items_of(a)[0].instance,
                     ["weight", "height"])
    by_site = {row.site.code: (row.required, row.verified, row.left)
               for row in sdv.backlog_by_site()}
    assert by_site == {"01": (8, 2, 6), "02": (4, 0, 4)}
    sdv.set_plan(_dm_actor(make), "none")
    by_site = {row.site.code: tuple(row)[1:] for row in sdv.backlog_by_site()}
    assert by_site == {"01": (2, 1, 1), "02": (1, 0, 1)}  # weight only, a's is verified
    assert [(s.code, s.left) for s in sdv.backlog_by_subject()] == [(b.code, 1), (c.code, 1)]
    site_01 = {a.site_id}
    assert [row.site.code for row in sdv.backlog_by_site(site_01)] == ["01"]
    for subject in (a, b, c):  # the counts agree with the per-subject list of required items
        required = sdv.required_items(subject)
        assert sdv.counts_by_subject(subject_ids={subject.id})[subject.id] == sdv.Counts(
            len(required), sum(1 for i in required if i.verified))


def _kept() -> dict[int, tuple[int, int, int, int]]:
    db.session.expire_all()
    return {c.subject_id: (c.values_n, c.verified_n, c.critical_n, c.critical_verified_n)
            for c in db.session.scalars(sa.select(SdvCount)) if c.values_n}


def _change_everything(make):
    """Saves, verifications at two sites, and a verified value changed (which clears it)."""
    a, b = make.subject("01"), make.subject("02")
    _save(a)
    sdv.ensure_counts()  # filled once, then kept by every change below
    _save(b)
    _verify_all(make, a)
    _save(a, {**VALUES, "weight": "72.5"}, reason=Reason("entry_error"))
    monitor = make.user("cra-kept", role="monitor", site="02")
    sdv.verify_items(_monitor_actor(monitor, b), b, sdv.items_of(b)[0].instance, ["fever"])
    return a, b


def test_the_kept_counts_agree_with_a_recount_after_every_kind_of_change(make, db):
    """The backlog reads per-subject counts kept by every change instead of counting a large
    study's values on each page; they must equal a count made from the values themselves."""
    a, b = _change_everything(make)
    assert _kept() == sdv.counted_by_subject()
    assert _kept()[a.id] == (4, 3, 1, 0) and _kept()[b.id] == (4, 1, 1, 0)


def test_negative_control_without_the_rule_the_kept_counts_go_stale(make, db, monkeypatch):
    monkeypatch.setattr(capture, "FLUSH_RULES",
                        [r for r in capture.FLUSH_RULES if r[1] != "sdv.keep_counts"])
    _change_everything(make)
    assert _kept() != sdv.counted_by_subject()


def test_the_backlog_page_lists_the_monitors_sites_and_links_each_form_left(make, login_as, client,
                                                                           db, app, monkeypatch):
    subjects = [make.subject("01") for _ in range(3)]
    other = make.subject("02")
    for subject in (*subjects, other):
        _save(subject)
    _verify_all(make, subjects[0])
    login_as("monitor", site="01")
    page = client.get("/sdv/").get_data(as_text=True)
    assert 'id="sdv-site-01"' in page and 'id="sdv-site-02"' not in page
    assert other.code not in page
    assert 'id="sdv-subject-' + subjects[0].code not in page  # nothing left there
    link = FORM.format(code=subjects[1].code)
    assert f'href="{link}"' in page and "(4 left)" in page
    monkeypatch.setitem(app.config, "SUBJECTS_PER_PAGE", 1)
    first = client.get("/sdv/").get_data(as_text=True)
    second = client.get("/sdv/?page=2").get_data(as_text=True)
    assert subjects[1].code in first and subjects[2].code not in first
    assert subjects[2].code in second and "Page 2 of 2 (2)" in second
    site = subjects[0].site
    assert subjects[1].code in client.get(f"/sdv/?site={site.id}").get_data(as_text=True)
    assert client.get(f"/sdv/?site={other.site_id}").status_code == 404


# --- what the protocol makes critical ------------------------------------------------------------


@pytest.mark.requirement("A11-6", "E6-4.2.1")
def test_the_protocol_s_critical_items_are_flagged_in_the_crf_definitions(app):
    """Eligibility, every SOFA input, dosing and the serious AE fields are verified for every
    subject (the items an endpoint or a safety report rests on)."""
    registry = app.extensions["ecrf.registry"]

    def entered(crf_key):
        return {i.key: i for i in registry.current(crf_key).items if not i.derived}

    sofa = entered("sofa_daily")
    assert [k for k, i in sofa.items() if not i.critical] == ["rrt"]  # recorded, not scored
    assert all(i.critical for k, i in entered("eligibility").items() if k.startswith("e"))
    dosing = entered("dosing")
    assert all(dosing[k].critical for k in ("dose_date", "given", "dose_mg", "status"))
    ae = entered("adverse_event")
    assert all(ae[k].critical for k in ("term", "grade", "onset", "serious", "criteria",
                                        "aware_at", "reported_at", "causality"))
