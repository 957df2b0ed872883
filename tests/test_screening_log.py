"""The screening log: every patient screened, enrolled or not, with no identifiers."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from ecrf.auth.services import system_actor
from ecrf.study.models import ScreeningEntry
from ecrf.study.services import StudyError, log_screening
from tests.factories import audit_rows


def test_a_patient_not_enrolled_is_logged_with_the_reason(make):
    site = make.site("01")
    entry = log_screening(system_actor(), site, screened_on=date.today(), age=67, sex="F",
                          reason_not_included="E7 limitation of life-sustaining care")
    assert entry.subject is None and entry.reason_not_included.startswith("E7")
    rows = audit_rows(action="screening.create")
    assert {r.field for r in rows} >= {"age", "sex", "screened_on", "reason_not_included"}


def test_an_enrolled_patient_is_logged_with_the_subject_it_became(make):
    subject = make.subject("01")
    entry = log_screening(system_actor(), subject.site, screened_on=date.today(), age=54,
                          sex="M", subject=subject)
    assert entry.subject_id == subject.id


@pytest.mark.parametrize("kwargs, message", [
    ({"age": 54, "sex": "M"}, "Either the patient was enrolled"),
    ({"age": 54, "sex": "X", "reason_not_included": "r"}, "Sex is M or F"),
    ({"age": 130, "sex": "M", "reason_not_included": "r"}, "between 0 and 120"),
])
def test_a_log_entry_is_complete_and_plausible(make, kwargs, message):
    with pytest.raises(StudyError, match=message):
        log_screening(system_actor(), make.site("01"), screened_on=date.today(), **kwargs)


def test_a_future_screening_date_is_refused(make):
    with pytest.raises(StudyError, match="future"):
        log_screening(system_actor(), make.site("01"), screened_on=date.today() + timedelta(2),
                      age=40, sex="M", reason_not_included="r")


@pytest.mark.requirement("E6-3.16.1(t,v,w)", "GDPR-1")
def test_the_log_stores_no_identifier():
    assert set(sa.inspect(ScreeningEntry).columns.keys()) == {
        "id", "site_id", "screened_on", "age", "sex", "subject_id", "reason_not_included",
        "created_at"}


@pytest.mark.requirement("GDPR-4")
def test_the_web_log_shows_the_flow_for_the_users_sites_only(make, login_as, client):
    make.site("02")
    log_screening(system_actor(), make.site("02"), screened_on=date.today(), age=70, sex="M",
                  reason_not_included="other site reason")
    login_as("investigator", site="01")
    response = client.post("/subjects/screening-log", data={
        "site": str(make.site("01").id), "screened_on": date.today().isoformat(), "age": "45",
        "sex": "F", "reason_not_included": "SOFA below 4"})
    assert response.status_code == 302
    page = client.get("/subjects/screening-log").get_data(as_text=True)
    assert "SOFA below 4" in page and "other site reason" not in page
    assert '<dt>Screened</dt><dd>1</dd>' in page
