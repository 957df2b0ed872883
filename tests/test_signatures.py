"""Electronic signatures of a visit or a casebook (P11-50a/b, P11-70, P11-100a, P11-200a1, P11-300d).

The toy CRF is expected at D1 beside the daily SOFA (conftest): a subject's visit D1 is complete
once the toy form is complete and the SOFA is entered or marked not done.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.auth.models import User
from ecrf.auth.services import login as service_login
from ecrf.auth.services import system_actor
from ecrf.casebook.models import FormInstance, ItemValue
from ecrf.casebook.services import Slot, Submitted, get_instance, mark_not_done, save_form
from ecrf.review import closure
from ecrf.review import signatures as sig
from ecrf.review.delegation import active_lines, add_entry, end_entry, site_today
from ecrf.review.models import SIGNATURE_MEANINGS, Query, Signature
from tests.factories import PASSWORD, audit_rows

D1 = sig.SignScope.visit("D1")
CASEBOOK = sig.SignScope.casebook()


# --- the world: a site, its investigators and a subject with a complete visit D1 ----------------


def investigator(make, name: str, task: str | None = "pi", *, site="01", start_days_ago=30,
                 end_days_ago: int | None = None) -> User:
    """An investigator of the site, with a line of the delegation log for ``task`` (or none)."""
    site = make.site(site)
    user = make.user(name, role="investigator", site=site, full_name=name.replace("-", " ").title())
    if task is not None:
        today = site_today(site)
        add_entry(system_actor(), site, user, task, today - timedelta(days=start_days_ago),
                  None if end_days_ago is None else today - timedelta(days=end_days_ago))
    return user


def save_toy(subject, **values):
    data = {"weight": "70", "fever": "N", **values}
    result = save_form(system_actor(), subject, "toy_vitals", Slot("D1"), Submitted(data),
                       reason=Reason("entry_error", "test"), confirmed={"TOY_VITALS-weight-RANGE"})
    assert result.ok, result.errors
    return result.instance


def save_at_another_visit(subject):
    """Data at an unscheduled visit: not part of visit D1, part of the casebook."""
    result = save_form(system_actor(), subject, "toy_vitals", Slot("UNS", 1),
                       Submitted({"weight": "71", "fever": "N"}))
    assert result.ok, result.errors
    return result.instance


def complete_d1(make, site="01"):
    """A subject whose visit D1 is complete: the toy form complete, the SOFA not done."""
    subject = make.subject(site)
    save_toy(subject)
    mark_not_done(system_actor(), subject, "sofa_daily", Slot("D1"), "not measured that day")
    return subject


def signatures_of(db, subject) -> list[Signature]:
    return list(db.session.scalars(sa.select(Signature).where(Signature.subject_id == subject.id)
                                   .order_by(Signature.id)))


def sign_url(subject, scope=D1) -> str:
    if scope.is_casebook:
        return f"/subjects/{subject.code}/sign"
    return f"/subjects/{subject.code}/visits/{scope.visit_key}/{scope.visit_repeat}/sign"


def post_sign(client, subject, user, *, scope=D1, username=None, password=PASSWORD):
    return client.post(sign_url(subject, scope), data={
        "meaning": "approval", "username": user.username if username is None else username,
        "password": password})


def sign_directly(user, subject, scope=D1, password=PASSWORD, username=None):
    return sig.sign(user, subject, scope, username=username or user.username, password=password)


# --- who signs -----------------------------------------------------------------------------------


@pytest.mark.requirement("P11-50a", "P11-50b", "P11-200a1", "P11-200a1ii", "A11-12.4", "A11-14",
                         "E6-4.2.2a-iii", "E6-4.2.2d", "E6-3.16.1(n,o)")
def test_the_principal_investigator_signs_a_complete_visit_with_username_and_password(
        make, login, client, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    login(pi.username)
    page = client.get(sign_url(subject)).get_data(as_text=True)
    assert SIGNATURE_MEANINGS["approval"] in page  # the meaning is shown before signing
    assert 'name="username"' in page and 'name="password"' in page
    response = post_sign(client, subject, pi)
    assert response.status_code == 302, response.get_data(as_text=True)[:800]
    [signature] = signatures_of(db, subject)
    assert (signature.signer_id, signature.signer_name) == (pi.id, "Paula Pi")
    assert (signature.visit_key, signature.visit_repeat) == ("D1", 1)
    assert signature.meaning == "approval"
    assert signature.meaning_text == SIGNATURE_MEANINGS["approval"]  # stored in English
    assert signature.signed_at.utcoffset() == timedelta(0)
    assert signature.content_hash == sig.content_hash(subject, D1)
    created = audit_rows(action="signature.create")
    assert {r.username for r in created} == {pi.username}
    assert {r.field for r in created} >= {"signer_name", "signed_at", "content_hash", "meaning"}


@pytest.mark.requirement("P11-50a")
def test_the_meaning_is_stored_in_english_whatever_the_language_of_the_page(make, login, client, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    login(pi.username)
    client.post("/language/fr", data={"next": "/"})
    page = client.get(sign_url(subject)).get_data(as_text=True)
    assert '<html lang="fr">' in page and 'id="meaning-approval"' in page
    assert post_sign(client, subject, pi).status_code == 302
    assert signatures_of(db, subject)[0].meaning_text == SIGNATURE_MEANINGS["approval"]


@pytest.mark.requirement("E6-3.16.1(n,o)")
def test_a_delegated_sub_investigator_signs_the_whole_casebook(make, login, client, db):
    sub = investigator(make, "sam-sub", "sign")
    subject = complete_d1(make)
    login(sub.username)
    assert post_sign(client, subject, sub, scope=CASEBOOK).status_code == 302
    [signature] = signatures_of(db, subject)
    assert (signature.visit_key, signature.visit_repeat, signature.signer_name) == (None, None, "Sam Sub")


@pytest.mark.requirement("P11-10g")
def test_an_investigator_without_a_delegation_line_is_refused_and_signs_once_given_one(
        make, login, client, db):
    ivan = investigator(make, "ivan-inv", task=None)
    subject = complete_d1(make)
    login(ivan.username)
    refused = post_sign(client, subject, ivan)
    assert refused.status_code == 403
    assert "delegation log" in refused.get_data(as_text=True)
    assert signatures_of(db, subject) == []
    assert [(r.username, r.field) for r in audit_rows(action="access.denied")] == [
        (ivan.username, "signatures.sign_visit")]
    assert audit_rows(action="auth.signature_failed") == []  # nothing else was counted
    # negative control: the same user, the same request, with a signing line
    site = make.site("01")
    add_entry(system_actor(), site, ivan, "sign", site_today(site))
    assert post_sign(client, subject, ivan).status_code == 302
    assert len(signatures_of(db, subject)) == 1


@pytest.mark.parametrize(("end_days_ago", "signs"), [(1, False), (0, True)])
def test_a_line_ended_yesterday_no_longer_allows_signing(make, end_days_ago, signs, db):
    """The last day of a line is included: ended today still signs today, ended yesterday not."""
    pi = investigator(make, "paula-pi", "pi", end_days_ago=end_days_ago)
    subject = complete_d1(make)
    if signs:
        assert sign_directly(pi, subject).id
    else:
        with pytest.raises(sig.SigningRefused) as refused:
            sign_directly(pi, subject)
        assert refused.value.kind == "authority"
        assert signatures_of(db, subject) == []


def test_a_line_ended_through_the_log_stops_signing_from_the_next_day(make, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    [line] = active_lines(pi, subject.site_id, site_today(subject.site))
    end_entry(system_actor(), line, site_today(subject.site) - timedelta(days=1),
              Reason("administrative", "left the site"))
    with pytest.raises(sig.SigningRefused, match="delegation log"):
        sign_directly(pi, subject)


def test_a_line_at_another_site_does_not_allow_signing_here(make, db):
    pi_elsewhere = investigator(make, "paula-pi", "pi", site="02")
    subject = complete_d1(make, site="01")
    from ecrf.access.services import grant_role

    grant_role(system_actor(), pi_elsewhere, "investigator", make.site("01"))
    with pytest.raises(sig.SigningRefused, match="delegation log"):
        sign_directly(pi_elsewhere, subject)


def test_the_delegation_line_needs_the_role_grant_too(make, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    from ecrf.access.services import revoke_grant

    revoke_grant(system_actor(), pi.grants[0], Reason("administrative", "left the study"))
    with pytest.raises(sig.SigningRefused) as refused:
        sign_directly(pi, subject)
    assert refused.value.kind == "authority" and "no role" in str(refused.value)


@pytest.mark.requirement("P11-10g")
def test_a_monitor_cannot_sign_403_and_recorded(make, login_as, client, db):
    subject = complete_d1(make)
    monitor = login_as("monitor", site="01")
    for method in ("get", "post"):
        response = getattr(client, method)(sign_url(subject))
        assert response.status_code == 403
    assert signatures_of(db, subject) == []
    assert [r.username for r in audit_rows(action="access.denied")] == [monitor.username] * 2


def test_an_investigator_of_another_site_gets_404(make, login, client, db):
    other = investigator(make, "olga-other", "pi", site="02")
    subject = complete_d1(make, site="01")
    login(other.username)
    assert post_sign(client, subject, other).status_code == 404
    assert signatures_of(db, subject) == []


# --- when: complete, no query open ----------------------------------------------------------------


@pytest.mark.requirement("P11-10f")
def test_incomplete_forms_cannot_be_signed_until_complete(make, login, client, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = make.subject("01")
    save_form(system_actor(), subject, "toy_vitals", Slot("D1"), Submitted({"weight": "70"}))
    login(pi.username)
    refused = post_sign(client, subject, pi)
    body = refused.get_data(as_text=True)
    assert refused.status_code == 409
    assert "Visit D1: Toy vital signs is not complete." in body
    assert "Visit D1: Daily SOFA is expected but not entered" in body
    assert signatures_of(db, subject) == []
    assert audit_rows(action="auth.signature_failed") == []
    # complete the toy form: the SOFA still missing refuses
    save_toy(subject)
    assert post_sign(client, subject, pi).status_code == 409
    mark_not_done(system_actor(), subject, "sofa_daily", Slot("D1"), "not measured")
    assert post_sign(client, subject, pi).status_code == 302


def test_a_casebook_expects_every_visit_whose_window_has_started(make, later, db):
    subject = make.included("01")  # D0 = today: the D0 forms are entered
    d0 = sig.readiness(subject, CASEBOOK)
    assert not any("Visit D1:" in p for p in d0.problems)
    later(days=1)  # D1's window has started: its forms are expected
    d1 = sig.readiness(subject, CASEBOOK)
    assert any("Visit D1:" in p and "expected" in p for p in d1.problems)


@pytest.mark.requirement("P11-10f")
@pytest.mark.parametrize(("state", "signs"), [("open", False), ("answered", False),
                                               ("closed", True), ("cancelled", True)])
def test_an_open_or_answered_query_prevents_signing(make, state, signs, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    instance = get_instance(subject, "toy_vitals", Slot("D1"))
    with unit_of_work(system_actor(), Reason.system("query for the test")):
        db.session.add(Query(subject=subject, form_instance=instance, item_key="weight", state=state,
                             raised_by_id=system_actor().user_id))
    if signs:
        assert sign_directly(pi, subject).id
    else:
        with pytest.raises(sig.SigningRefused, match="queries are open") as refused:
            sign_directly(pi, subject)
        assert refused.value.kind == "state"


def test_a_query_on_another_visit_does_not_block_this_visit(make, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    elsewhere = save_at_another_visit(subject)
    with unit_of_work(system_actor(), Reason.system("query for the test")):
        db.session.add(Query(subject=subject, form_instance=elsewhere, state="open",
                             raised_by_id=system_actor().user_id))
    assert sign_directly(pi, subject, D1).id  # the visit signs
    with pytest.raises(sig.SigningRefused):  # the casebook does not
        sign_directly(pi, subject, CASEBOOK)


@pytest.mark.requirement("EMA-12", "E6-3.16.1(r)")
def test_a_locked_study_refuses_signing_a_frozen_one_does_not(make, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    closure.change(system_actor(), closure.Scope.study(), "freeze")
    assert sign_directly(pi, subject).id  # signing goes on while the data are frozen
    closure.change(system_actor(), closure.Scope.study(), "lock")
    with pytest.raises(sig.SigningRefused, match="locked"):
        sign_directly(pi, subject)


def test_a_page_read_before_a_change_signs_nothing(make, login, client, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    seen = sig.content_hash(subject, D1)
    save_toy(subject, weight="72")
    login(pi.username)
    response = client.post(sign_url(subject), data={"meaning": "approval", "username": pi.username,
                                                     "password": PASSWORD, "content_hash": seen})
    assert response.status_code == 409
    assert "changed since you opened this page" in response.get_data(as_text=True)
    assert signatures_of(db, subject) == []


# --- how: both components, every time; failures count toward the lockout ------------------------


@pytest.mark.requirement("P11-200a1i", "P11-200a1ii")
def test_each_signing_asks_for_the_password_again_in_the_same_session(make, login, client, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    login(pi.username)
    assert post_sign(client, subject, pi).status_code == 302
    response = client.post(sign_url(subject), data={"meaning": "approval", "username": pi.username})
    assert response.status_code == 400
    assert len(signatures_of(db, subject)) == 1


@pytest.mark.requirement("P11-200a1")
def test_a_wrong_password_is_refused_counted_and_audited(make, login, client, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    login(pi.username)
    response = post_sign(client, subject, pi, password="not-my-password")
    assert response.status_code == 400
    assert "Wrong username or password" in response.get_data(as_text=True)
    assert signatures_of(db, subject) == []
    db.session.refresh(pi)
    assert pi.failed_logins == 1
    [failed] = audit_rows(action="auth.signature_failed")
    assert failed.entity_id == str(pi.id) and "wrong password" in failed.value.new_value
    assert failed.reason_text == "failed signing"
    # negative control: the same request with the right password signs, and the count restarts
    assert post_sign(client, subject, pi).status_code == 302
    db.session.refresh(pi)
    assert pi.failed_logins == 0 and len(signatures_of(db, subject)) == 1


@pytest.mark.requirement("P11-300d")
def test_wrong_passwords_at_signing_lock_the_account_like_failed_logins(make, app, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    limit = app.config["LOGIN_MAX_FAILURES"]
    assert not service_login(pi.username, "wrong-at-login").ok  # one failed login...
    for _ in range(limit - 1):  # ...and the rest at signing
        with pytest.raises(sig.SigningRefused, match="Wrong username or password"):
            sign_directly(pi, subject, password="wrong-at-signing")
    db.session.refresh(pi)
    assert pi.locked_at is not None and pi.failed_logins == limit
    assert len(audit_rows(action="auth.locked")) == 1
    assert len(audit_rows(action="auth.signature_failed")) == limit - 1
    with pytest.raises(sig.SigningRefused, match="locked"):  # a locked account cannot sign
        sign_directly(pi, subject)
    assert not service_login(pi.username, PASSWORD).ok  # nor log in
    assert signatures_of(db, subject) == []


def test_a_signing_with_the_right_password_resets_the_failure_count(make, app, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    for _ in range(app.config["LOGIN_MAX_FAILURES"] - 1):
        with pytest.raises(sig.SigningRefused):
            sign_directly(pi, subject, password="wrong")
    assert sign_directly(pi, subject).id
    db.session.refresh(pi)
    assert pi.failed_logins == 0 and pi.locked_at is None


def test_the_lockout_ends_the_session_so_the_locked_user_is_logged_out(make, app, login, client, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    login(pi.username)
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        post_sign(client, subject, pi, password="wrong")
    response = client.get(sign_url(subject))
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


@pytest.mark.requirement("P11-100a", "P11-200a1", "P11-200a2/3")
def test_another_users_username_is_refused_and_audited(make, login, client, db):
    pi = investigator(make, "paula-pi", "pi")
    other = investigator(make, "sam-sub", "sign")
    subject = complete_d1(make)
    login(pi.username)
    # even with the other user's right password: nobody signs for someone else
    response = post_sign(client, subject, pi, username=other.username)
    assert response.status_code == 400
    assert "Sign with your own username" in response.get_data(as_text=True)
    assert signatures_of(db, subject) == []
    [failed] = audit_rows(action="auth.signature_failed")
    assert failed.entity_id == str(pi.id) and other.username in failed.value.new_value
    db.session.refresh(other)
    assert other.failed_logins == 0  # nobody's password was tried
    assert post_sign(client, subject, pi).status_code == 302  # one's own username signs


# --- what: the content hash ------------------------------------------------------------------------


@pytest.mark.requirement("P11-70")
def test_the_content_hash_can_be_recomputed_from_the_documented_format(make, db):
    subject = complete_d1(make)
    save_toy(subject, height="180", devices=["ECG", "SPO2"], measured_at="2026-01-05 10:30")
    toy, sofa = (get_instance(subject, k, Slot("D1")) for k in ("toy_vitals", "sofa_daily"))
    rows = db.session.scalars(sa.select(ItemValue).where(ItemValue.form_instance_id == toy.id))
    items = {r.item_key: {"weight": "70", "height": "180", "bmi": "21.6", "fever": "N",
                          "devices": r.value_text, "measured_at": r.value_dt and r.value_dt.isoformat()
                          }.get(r.item_key) for r in rows}
    items = {k: v for k, v in items.items() if v is not None}
    assert set(items) == {"weight", "height", "bmi", "fever", "devices", "measured_at"}
    document = {"format": 1, "subject": subject.code, "visit": "D1", "visit_repeat": 1, "forms": [
        {"visit": "D1", "visit_repeat": 1, "crf": "sofa_daily", "form_repeat": 1,
         "crf_version": sofa.crf_version, "status": "not_done",
         "not_done_reason": "not measured that day", "items": {}},
        {"visit": "D1", "visit_repeat": 1, "crf": "toy_vitals", "form_repeat": 1, "crf_version": 1,
         "status": "complete", "not_done_reason": None, "items": items}]}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert sig.signed_content(subject, D1) == text.encode()
    assert sig.content_hash(subject, D1) == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.requirement("P11-70", "A11-14")
def test_the_content_hash_changes_with_a_value_a_status_or_a_version_and_not_otherwise(make, db):
    subject = complete_d1(make)
    other = complete_d1(make)
    seen = [sig.content_hash(subject, D1)]

    def unchanged():
        assert sig.content_hash(subject, D1) == seen[-1]

    def changed():
        now = sig.content_hash(subject, D1)
        assert now not in seen
        seen.append(now)

    unchanged()  # recomputing gives the same digest
    assert save_form(system_actor(), subject, "toy_vitals", Slot("D1"),
                     Submitted({"weight": "70", "fever": "N"})).outcome == "unchanged"
    unchanged()
    save_toy(other, weight="80")  # another subject's data
    save_at_another_visit(subject)
    unchanged()  # another visit of the same subject
    instance = get_instance(subject, "toy_vitals", Slot("D1"))
    with unit_of_work(system_actor(), Reason.system("query for the test")):  # a query: not data
        db.session.add(Query(subject=subject, form_instance=instance, state="open",
                             raised_by_id=system_actor().user_id))
    unchanged()
    assert sig.content_hash(other, D1) != seen[-1]  # the same data elsewhere: bound to the subject
    save_toy(subject, weight="70.5")  # a value
    changed()
    save_toy(subject, weight="70.5", comment="checked")  # a value added
    changed()
    save_form(system_actor(), subject, "toy_vitals", Slot("D1"), Submitted(  # a null flavor
        {"weight": "70.5", "fever": "N", "comment": "checked"}, {"height": ("UNK", "")}),
        reason=Reason("entry_error", "t"))
    changed()
    save_form(system_actor(), subject, "toy_vitals", Slot("D1"),  # a status: a required item removed
              Submitted({"weight": "70.5", "comment": "checked"}, {"height": ("UNK", "")}),
              reason=Reason("entry_error", "t"))
    assert get_instance(subject, "toy_vitals", Slot("D1")).status == "incomplete"
    changed()
    save_form(system_actor(), subject, "toy_vitals", Slot("D1"), Submitted(  # back: the same hash
        {"weight": "70.5", "fever": "N", "comment": "checked"}, {"height": ("UNK", "")}),
        reason=Reason("entry_error", "t"))
    assert sig.content_hash(subject, D1) == seen[-2]
    seen.pop()
    instance = get_instance(subject, "toy_vitals", Slot("D1"))
    with unit_of_work(system_actor(), Reason("administrative", "moved to version 2")):
        instance.crf_version = 2  # a version
    changed()


# --- the signature shown with the data, broken by a change, signed again ------------------------


@pytest.mark.requirement("P11-50b")
def test_the_signature_is_shown_on_the_grid_the_form_page_and_the_subject_page(make, login, client, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    signature = sign_directly(pi, subject)
    login(pi.username)
    when = sig_local(signature, subject)
    form_page = f"/subjects/{subject.code}/visits/D1/1/forms/toy_vitals/1"
    for url in (f"/subjects/{subject.code}/casebook", form_page, f"/subjects/{subject.code}"):
        page = client.get(url).get_data(as_text=True)
        assert f"Signed by Paula Pi on {when} — approval" in page, url
    # a form of another visit is not covered by the D1 signature
    save_at_another_visit(subject)
    other_form = client.get(f"/subjects/{subject.code}/visits/UNS/1/forms/toy_vitals/1")
    assert "Signed by" not in other_form.get_data(as_text=True)


def sig_local(signature, subject) -> str:
    from ecrf.casebook.services import local_time

    return local_time(signature.signed_at, subject.site.timezone)


@pytest.mark.requirement("P11-70", "A11-14")
def test_a_change_after_signing_breaks_the_signature_and_the_pages_say_so(make, login, client, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    signature = sign_directly(pi, subject)
    [status] = [s for s in sig.signature_status(subject) if s.scope == D1]
    assert status.state == sig.VALID
    save_toy(subject, weight="71")
    [status] = [s for s in sig.signature_status(subject) if s.scope == D1]
    assert status.state == sig.BROKEN and status.signature.id == signature.id
    change = audit_rows(action="item.update", item="weight")[-1]
    assert status.changed_at == change.recorded_at
    login(pi.username)
    broken = f"Signature broken: data changed after signing on {sig_local(signature, subject)}"
    for url in (f"/subjects/{subject.code}/casebook",
                f"/subjects/{subject.code}/visits/D1/1/forms/toy_vitals/1", f"/subjects/{subject.code}"):
        page = client.get(url).get_data(as_text=True)
        assert broken in page, url
        assert "Signed by Paula Pi" not in page


@pytest.mark.requirement("P11-70")
def test_signing_again_adds_a_second_row_and_keeps_the_first(make, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    first = sign_directly(pi, subject)
    first_hash = first.content_hash
    save_toy(subject, weight="71")
    second = sign_directly(pi, subject)
    rows = signatures_of(db, subject)
    assert [r.id for r in rows] == [first.id, second.id]
    assert rows[0].content_hash == first_hash != rows[1].content_hash
    states = {s.scope: s for s in sig.signature_status(subject)}
    assert states[D1].state == sig.VALID and [s.id for s in states[D1].history] == [second.id, first.id]
    assert len(audit_rows(action="signature.update")) == 0  # the first row was never rewritten


@pytest.mark.requirement("P11-70")
def test_a_casebook_signature_breaks_when_any_visit_changes_a_visit_one_only_for_its_visit(make, db):
    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    sign_directly(pi, subject, D1)
    sign_directly(pi, subject, CASEBOOK)
    save_at_another_visit(subject)
    states = {s.scope: s.state for s in sig.signature_status(subject)}
    assert states[D1] == sig.VALID
    assert states[CASEBOOK] == sig.BROKEN
    assert states[sig.SignScope.visit("UNS", 1)] == sig.NEVER


@pytest.mark.requirement("E6-3.16.1(n,o)")
def test_the_dashboard_lists_casebooks_ready_to_sign_and_broken_signatures(make, db):
    pi = investigator(make, "paula-pi", "pi")
    ready = complete_d1(make)
    signed = complete_d1(make)
    broken = complete_d1(make)
    incomplete = make.subject("01")
    save_form(system_actor(), incomplete, "toy_vitals", Slot("D1"), Submitted({"weight": "70"}))
    sign_directly(pi, signed, CASEBOOK)
    sign_directly(pi, broken, D1)
    save_toy(broken, weight="71")
    elsewhere = complete_d1(make, site="02")
    overview = sig.pending_and_broken()
    assert {s.code for s in overview.ready_unsigned} == {ready.code, broken.code, elsewhere.code}
    assert [(s.code, st.scope) for s, st in overview.broken] == [(broken.code, D1)]
    site_01 = sig.pending_and_broken({make.site("01").id})
    assert elsewhere.code not in {s.code for s in site_01.ready_unsigned}


def test_the_dashboard_hashes_only_casebooks_changed_after_their_signature(make, db, monkeypatch):
    """The sign-off figures cost what the changes cost, not what the study weighs: a visit with
    no change since its signature is not hashed again (data entered at another visit does not
    touch it); one changed and changed back is hashed and found valid."""
    pi = investigator(make, "paula-pi", "pi")
    untouched, reverted, broken = (complete_d1(make) for _ in range(3))
    for subject in (untouched, reverted, broken):
        sign_directly(pi, subject, D1)
    save_at_another_visit(untouched)
    save_toy(reverted, weight="71")
    save_toy(reverted, weight="70")
    save_toy(broken, weight="72")
    hashed = []
    real = sig.content_hash
    monkeypatch.setattr(sig, "content_hash",
                        lambda subject, *a, **k: hashed.append(subject.code) or real(subject, *a, **k))
    overview = sig.pending_and_broken()
    assert [(s.code, st.scope) for s, st in overview.broken] == [(broken.code, D1)]
    assert set(hashed) == {reverted.code, broken.code}
    # negative control: every signed casebook counts as changed, and all are hashed again
    monkeypatch.setattr(sig, "_changed_since_signed", lambda: sa.select(Signature.subject_id))
    hashed.clear()
    assert [(s.code, st.scope) for s, st in sig.pending_and_broken().broken] == [(broken.code, D1)]
    assert set(hashed) == {untouched.code, reverted.code, broken.code}


@pytest.mark.requirement("P11-10c", "P11-70", "A11-14")
def test_a_signature_row_is_never_physically_deleted(make, db):
    from ecrf.audit.unit_of_work import AuditError

    pi = investigator(make, "paula-pi", "pi")
    subject = complete_d1(make)
    signature = sign_directly(pi, subject)
    with pytest.raises(AuditError), unit_of_work(system_actor(), Reason.system("attempt")):
        db.session.delete(signature)
    assert db.session.get(FormInstance, get_instance(subject, "toy_vitals", Slot("D1")).id)
    assert len(signatures_of(db, subject)) == 1
