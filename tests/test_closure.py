"""Freeze and lock: a frozen subject, site or study takes no data change (review goes on); a locked
one takes no change at all. Enforced on every write (services, web, CLI, derived values, forms not
started yet), by one rule of the write path; each action is audited, and reopening needs a reason."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ecrf.access.grants import Access
from ecrf.audit import capture
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.auth.services import system_actor
from ecrf.casebook.models import FormInstance, ItemValue
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.extensions import db
from ecrf.review import closure
from ecrf.review.closure import ClosedError, Scope
from ecrf.review.models import ClosureState, Query, QueryMessage
from ecrf.study import services as study_services
from ecrf.study.models import Subject
from tests.factories import audit_rows

TOY = "toy_vitals"
FORM = "/subjects/{code}/visits/D1/1/forms/toy_vitals/1"
WHY = Reason("other", "database review reopened")


def _save(subject, **values):
    return save_form(system_actor(), subject, TOY, Slot("D1"), Submitted(values or {"weight": "70",
                                                                                   "fever": "N"}))


def _dm(make) -> Actor:
    return Access.for_user(make.user("dm", role="data_manager"), "closure.freeze").actor()


def _raise_query(subject, instance) -> Query:
    with unit_of_work(system_actor()):
        query = Query(subject=subject, form_instance=instance, item_key="weight",
                      raised_by_id=system_actor().user_id)
        db.session.add(query)
        db.session.add(QueryMessage(query=query, action="raise", text="Source says 71?",
                                    author_id=system_actor().user_id))
    return query


# --- what freeze and lock close ----------------------------------------------------------------


@pytest.mark.requirement("P11-10f", "E6-3.16.1(p,q)")
def test_a_frozen_subject_takes_no_data_change_and_says_why(make, db):
    subject = make.included("01")
    assert _save(subject).outcome == "saved"
    closure.change(_dm(make), Scope.of_subject(subject), "freeze")
    refused = _save(subject, weight="71", fever="N")
    assert refused.outcome == "closed"
    assert refused.errors["_form"] == [f"Subject {subject.code} is frozen: data cannot change "
                                       "(queries, SDV and signatures go on)."]
    assert [v.value_dec for v in refused.instance.values if v.item_key == "weight"][0] == 70


@pytest.mark.requirement("EMA-12", "E6-3.16.1(r)")
def test_the_rule_holds_where_the_service_is_not_asked(make, db):
    """A write that skips the service's own check (a loader, a future code path) still flushes
    through the rule."""
    subject = make.included("01")
    instance = _save(subject).instance
    closure.change(_dm(make), Scope.of_subject(subject), "freeze")
    weight = next(v for v in instance.values if v.item_key == "weight")
    with pytest.raises(ClosedError, match="is frozen"):
        with unit_of_work(system_actor(), Reason("entry_error")):
            weight.value_dec = 99
    db.session.rollback()
    assert db.session.get(ItemValue, weight.id).value_dec == 70


@pytest.mark.requirement("EMA-12", "E6-3.16.1(r)")
def test_negative_control_without_the_rule_the_same_write_goes_through(make, db, monkeypatch):
    subject = make.included("01")
    instance = _save(subject).instance
    closure.change(_dm(make), Scope.of_subject(subject), "freeze")
    monkeypatch.setattr(capture, "FLUSH_RULES",
                        [r for r in capture.FLUSH_RULES if r[1] != "closure.freeze_and_lock"])
    weight = next(v for v in instance.values if v.item_key == "weight")
    with unit_of_work(system_actor(), Reason("entry_error")):
        weight.value_dec = 99
    assert db.session.get(ItemValue, weight.id).value_dec == 99


@pytest.mark.requirement("E6-3.16.1(p,q)")
def test_a_frozen_site_closes_its_subjects_forms_not_started_yet_and_derived_values(make, db):
    subject, other = make.included("01"), make.included("02")
    instance = _save(subject, weight="70", height="170", fever="N").instance
    closure.change(_dm(make), Scope.of_site(subject.site), "freeze")
    # a form not started yet
    with pytest.raises(ClosedError, match="Site 01 is frozen"):
        with unit_of_work(system_actor()):
            db.session.add(FormInstance(subject=subject, visit_key="D0", crf_key="demographics",
                                        crf_version=1))
    db.session.rollback()
    # a derived value, recalculated by hand
    bmi = next(v for v in db.session.get(FormInstance, instance.id).values if v.item_key == "bmi")
    with pytest.raises(ClosedError):
        with unit_of_work(system_actor(), Reason.system("derived value recalculated")):
            bmi.value_dec = 1
    db.session.rollback()
    # the subject's status, and a new subject at the site
    with pytest.raises(ClosedError):
        study_services.change_subject_status(system_actor(), db.session.get(Subject, subject.id),
                                     "withdrawn", Reason("other", "withdrew consent"))
    db.session.rollback()
    with pytest.raises(ClosedError):
        study_services.enrol_subject(system_actor(), subject.site)
    db.session.rollback()
    # another site is open
    assert _save(other).outcome == "saved"


@pytest.mark.requirement("E6-3.16.1(p,q)")
def test_a_frozen_study_closes_every_site(make, db):
    subjects = [make.included("01"), make.included("02")]
    closure.change(_dm(make), Scope.study(), "freeze")
    for subject in subjects:
        result = _save(subject)
        assert result.outcome == "closed"
        assert result.errors["_form"][0].startswith("The study is frozen")


@pytest.mark.requirement("P11-10f", "EMA-12", "E6-3.16.1(p,q)", "E6-3.16.1(r)")
def test_review_goes_on_while_frozen_and_stops_when_locked(make, db):
    subject = make.included("01")
    instance = _save(subject).instance
    dm = _dm(make)
    closure.change(dm, Scope.of_site(subject.site), "freeze")
    query = _raise_query(subject, instance)  # allowed while frozen
    assert query.id is not None
    closure.change(dm, Scope.of_site(subject.site), "lock")
    with pytest.raises(ClosedError, match="Site 01 is locked: nothing can change"):
        with unit_of_work(system_actor()):
            db.session.get(Query, query.id).state = "answered"
    db.session.rollback()
    assert db.session.get(Query, query.id).state == "open"


def test_unlock_works_whatever_the_other_flags_and_levels_say(make, db):
    subject = make.included("01")
    dm = _dm(make)
    closure.change(dm, Scope.of_subject(subject), "lock")
    closure.change(dm, Scope.of_subject(subject), "freeze")
    closure.change(dm, Scope.study(), "lock")
    closure.change(dm, Scope.of_subject(subject), "unlock", WHY)  # the study's lock does not block it
    closure.change(dm, Scope.study(), "unlock", WHY)
    assert _save(subject).outcome == "closed"  # still frozen
    closure.change(dm, Scope.of_subject(subject), "unfreeze", WHY)
    assert _save(subject).outcome == "saved"


# --- the actions themselves --------------------------------------------------------------------


@pytest.mark.requirement("A11-12.4", "EMA-12", "E6-4.2.2a-iii")
def test_unfreeze_and_unlock_need_a_reason_and_every_action_is_audited(make, db):
    subject = make.included("01")
    dm, scope = _dm(make), Scope.of_subject(subject)
    closure.change(dm, scope, "freeze")
    with pytest.raises(closure.ClosureChangeError, match="needs a reason"):
        closure.change(dm, scope, "unfreeze")
    with pytest.raises(closure.ClosureChangeError, match="needs a reason"):
        closure.change(dm, scope, "unfreeze", Reason("administrative", "  "))
    with pytest.raises(closure.ClosureChangeError, match="already frozen"):
        closure.change(dm, scope, "freeze")
    closure.change(dm, scope, "unfreeze", WHY)
    freeze, unfreeze = audit_rows(action="closure.freeze"), audit_rows(action="closure.unfreeze")
    assert len(freeze) == 1 and len(unfreeze) == 1
    assert (freeze[0].subject, freeze[0].username, freeze[0].role) == (subject.code, "dm",
                                                                       "data_manager")
    assert (unfreeze[0].reason_code, unfreeze[0].reason_text) == ("other", WHY.text)
    flags = [r for r in audit_rows(action="closure.update") if r.field == "frozen"]
    assert [(r.value.old_value, r.value.new_value) for r in flags] == [("true", "false")]


def test_the_state_is_one_row_per_scope(make, db):
    subject = make.included("01")
    dm = _dm(make)
    for action in ("freeze", "lock", "unlock", "unfreeze"):
        closure.change(dm, Scope.of_subject(subject), action, WHY)
    rows = db.session.scalars(sa.select(ClosureState)).all()
    assert [(r.scope, r.frozen, r.locked) for r in rows] == [(f"subject:{subject.id}", False, False)]


# --- through the web ---------------------------------------------------------------------------


def _token(page: str) -> str:
    import re

    return re.search(r'name="submission_token" type="hidden" value="([^"]+)"', page).group(1)


def test_a_data_manager_freezes_a_site_on_the_web_and_the_investigator_is_told(make, login_as,
                                                                                 client, db):
    subject = make.included("01")
    login_as("data_manager")
    page = client.get("/closure").get_data(as_text=True)
    assert 'id="scope-site-01"' in page
    frozen = client.post("/closure/freeze", data={"level": "site", "site": str(subject.site.id)})
    assert frozen.status_code == 302
    client.post("/auth/logout")
    login_as("investigator", site="01")
    form = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    assert "Site 01 is frozen" in form
    refused = client.post(FORM.format(code=subject.code),
                          data={"weight": "72", "fever": "N", "submission_token": _token(form),
                                "row_version": ""})
    text = refused.get_data(as_text=True)
    assert refused.status_code == 409
    assert "Nothing was saved" in text and 'value="72"' in text  # what was typed is kept
    assert db.session.scalar(sa.select(FormInstance).where(FormInstance.subject_id == subject.id,
                                                     FormInstance.crf_key == TOY)) is None


@pytest.mark.requirement("E6-3.16.1(r)")
def test_marking_a_form_not_done_on_a_locked_subject_is_refused_with_a_page(make, login_as, client,
                                                                            db):
    subject = make.included("01")
    closure.change(_dm(make), Scope.of_subject(subject), "lock")
    login_as("investigator", site="01")
    response = client.post(FORM.format(code=subject.code) + "/not-done",
                           data={"not_done_reason": "not collected"})
    assert response.status_code == 409
    assert f"Subject {subject.code} is locked" in response.get_data(as_text=True)
    assert db.session.scalar(sa.select(FormInstance).where(FormInstance.subject_id == subject.id,
                                                     FormInstance.crf_key == TOY)) is None


def test_unfreezing_on_the_web_needs_a_reason(make, login_as, client, db):
    subject = make.included("01")
    closure.change(_dm(make), Scope.of_site(subject.site), "freeze")
    login_as("data_manager")
    response = client.post("/closure/unfreeze", data={"level": "site", "site": str(subject.site.id)},
                           follow_redirects=True)
    assert "Say why" in response.get_data(as_text=True)
    assert closure.state_of(Scope.of_site(subject.site)).frozen


@pytest.mark.requirement("EMA-12")
def test_a_site_investigator_cannot_close_the_study(make, login_as, client, db):
    login_as("monitor", site="01")
    assert client.post("/closure/freeze", data={"level": "study"}).status_code == 403
    assert closure.state_of(Scope.study()) is None


# --- through the CLI ---------------------------------------------------------------------------


def test_the_cli_freezes_and_crf_entry_is_then_refused(runner, make, db):
    subject = make.included("01")
    make.user("dm", role="data_manager")
    make.user("inv", role="investigator", site="01")
    done = runner.invoke(args=["closure", "freeze", "--subject", subject.code, "--as", "dm"])
    assert done.exit_code == 0, done.output
    entry = runner.invoke(args=["crf", "enter", subject.code, "D1", TOY, "weight=70", "fever=N",
                                "--as", "inv"])
    assert entry.exit_code == 1
    assert f"Subject {subject.code} is frozen" in entry.output
    assert runner.invoke(args=["closure", "unfreeze", "--subject", subject.code,
                               "--as", "dm"]).exit_code != 0  # no reason given
    status = runner.invoke(args=["closure", "status"])
    assert f"subject:{subject.id}: frozen" in status.output
    assert runner.invoke(args=["closure", "lock", "--as", "inv"]).exit_code != 0  # no permission


@pytest.mark.requirement("GDPR-6")
def test_a_data_manager_freezes_one_subject_from_the_subject_page(make, login_as, client, db):
    subject, neighbour = make.included("01"), make.included("01")
    login_as("data_manager")
    page = client.get(f"/subjects/{subject.code}").get_data(as_text=True)
    assert 'id="closure"' in page and 'name="level" value="subject"' in page
    done = client.post("/closure/freeze", data={"level": "subject", "subject": subject.code,
                                                "next": f"/subjects/{subject.code}"})
    assert done.status_code == 302 and done.headers["Location"] == f"/subjects/{subject.code}"
    page = client.get(f"/subjects/{subject.code}").get_data(as_text=True)
    assert f"Subject {subject.code} is frozen" in page
    assert _save(subject).outcome == "closed" and _save(neighbour).outcome == "saved"
