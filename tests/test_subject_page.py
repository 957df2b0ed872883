"""The subject page shows the eligibility computed from the data and the SOFA trajectory; the
data managers' home page lists serious adverse events with their 24-hour deadline."""

from __future__ import annotations

from datetime import timedelta

from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot
from ecrf.database import utcnow
from ecrf.demo import save_confirmed


def test_the_subject_page_shows_eligibility_and_the_sofa_plot(make, login_as, client):
    subject = make.included("01")
    login_as("investigator", site="01")
    page = client.get(f"/subjects/{subject.code}").get_data(as_text=True)
    assert "Eligibility, computed from the data" in page and "Eligible" in page
    assert 'class="sofa-plot"' in page and "SOFA totals: D0" in page
    assert "Change in SOFA D0 to D7" in page


def test_an_ineligible_subject_page_lists_what_is_missing(make, login_as, client):
    subject = make.subject("01")
    login_as("monitor", site="01")
    page = client.get(f"/subjects/{subject.code}").get_data(as_text=True)
    assert "Not eligible (yet)" in page and "consent not recorded" in page


def test_the_administrator_sees_no_clinical_summary(make, login_as, client):
    make.subject("01")
    login_as("admin")
    assert client.get("/subjects/01-001").status_code == 403


def test_a_data_manager_home_page_lists_serious_events_and_flags_the_late_ones(make, login_as,
                                                                                client):
    subject = make.subject("01")
    aware = (utcnow() - timedelta(hours=30)).strftime("%Y-%m-%dT%H:%M")
    save_confirmed(system_actor(), subject, "adverse_event", Slot("D1"), {
        "term": "10040047", "grade": "4", "onset": "2026-03-02", "serious": "Y",
        "criteria": ["LIFE"], "aware_at": aware, "causality": "POSSIBLE",
        "action": "DRUG INTERRUPTED", "outcome": "RECOVERING/RESOLVING"})
    login_as("data_manager")
    page = client.get("/").get_data(as_text=True)
    assert "Serious adverse events" in page and subject.code in page and "Sepsis" in page
    assert "Past the 24-hour deadline" in page


def test_an_investigator_home_page_has_no_alert_list(make, login_as, client):
    login_as("investigator", site="01")
    assert "Serious adverse events" not in client.get("/").get_data(as_text=True)
