"""Pseudonymous subjects: codes, enrolment and status (GDPR; 21 CFR 11.10(e); P11-10c)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.study import services
from ecrf.study.models import Subject
from tests.factories import audit_rows


@pytest.mark.requirement("GDPR-1")
def test_enrolment_gives_the_code_site_dash_three_digits_in_sequence(make):
    codes = [make.subject("01").code for _ in range(3)] + [make.subject("02").code]
    assert codes == ["01-001", "01-002", "01-003", "02-001"]


@pytest.mark.requirement("P11-10c")
def test_a_code_is_never_reused_even_after_removal(make, db):
    first = make.subject("01")
    services.change_subject_status(system_actor(), first, "removed",
                                   Reason("entry_error", "enrolled by mistake"))
    assert make.subject("01").code == "01-002"
    assert db.session.get(Subject, first.id).status == "removed"  # kept, with its reason


@pytest.mark.requirement("E6-4.3.5")
def test_a_site_that_is_not_activated_cannot_enrol(make):
    site = make.site("05", activated=False)
    with pytest.raises(services.StudyError, match="not activated"):
        services.enrol_subject(system_actor(), site)


@pytest.mark.requirement("EMA-3")
def test_an_investigator_enrols_through_the_web_and_the_audit_names_the_grant(make, login_as, client):
    site = make.site("01")
    user = login_as("investigator", site="01")
    response = client.post("/subjects/enrol", data={"site": str(site.id)})
    assert response.status_code == 302 and response.headers["Location"].endswith("/subjects/01-001")
    row = audit_rows(action="subject.create", field="code")[-1]
    assert (row.username, row.role, row.actor_site) == (user.username, "investigator", "01")
    assert row.grant_id == user.grants[0].id and row.subject == "01-001"


@pytest.mark.requirement("GDPR-6")
@pytest.mark.parametrize("status", ["screen_failure", "withdrawn"])
def test_screen_failure_and_withdrawal_need_a_reason(make, status):
    subject = make.included("01") if status == "withdrawn" else make.subject("01")
    with pytest.raises(services.StudyError, match="needs a reason"):
        services.change_subject_status(system_actor(), subject, status)
    services.change_subject_status(system_actor(), subject, status,
                                   Reason("other", "consent withdrawn by the patient"))
    assert subject.status == status
    assert subject.status_reason.startswith("consent withdrawn by the patient")


@pytest.mark.requirement("P11-10f")
def test_status_follows_the_allowed_path_only(make):
    subject = make.subject("01")
    with pytest.raises(services.StudyError, match="cannot go from screening to completed"):
        services.change_subject_status(system_actor(), subject, "completed")
    subject = make.included("01")
    services.change_subject_status(system_actor(), subject, "completed")
    with pytest.raises(services.StudyError):
        services.change_subject_status(system_actor(), subject, "screening")


@pytest.mark.requirement("P11-10e-1", "GDPR-6")
def test_every_status_change_is_audited_with_old_new_and_reason(make, login_as, client):
    make.site("01")
    login_as("investigator", site="01")
    subject = make.subject("01")
    refused = client.post(f"/subjects/{subject.code}/status", data={"status": "included"},
                          follow_redirects=True)
    assert "not eligible" in refused.get_data(as_text=True)  # no data yet: refused, listed
    subject = make.included("01")
    client.post(f"/subjects/{subject.code}/status",
                data={"status": "withdrawn", "reason_text": "transferred to another hospital"})
    rows = audit_rows(action="subject.update", field="status", subject=subject.code)
    assert [(r.value.old_value, r.value.new_value) for r in rows] == [
        ("screening", "included"), ("included", "withdrawn")]
    assert rows[-1].reason_text == "transferred to another hospital"


def test_a_withdrawal_without_reason_from_the_web_saves_nothing(make, login_as, client, db):
    make.site("01")
    login_as("investigator", site="01")
    subject = make.included("01")
    response = client.post(f"/subjects/{subject.code}/status", data={"status": "withdrawn"},
                           follow_redirects=True)
    assert "needs a reason" in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Subject, subject.id).status == "included"


@pytest.mark.requirement("E6-3.16.1(t,v,w)", "GDPR-1", "GDPR-4")
def test_no_identifier_is_stored_about_a_subject(db):
    columns = set(sa.inspect(Subject).columns.keys())
    assert columns == {"id", "site_id", "number", "code", "status", "status_reason", "created_at",
                       "row_version", "inclusion_date"}
