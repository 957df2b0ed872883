"""The delegation log of each site: kept by the data manager, audited, ended never removed
(E6(R3) investigator delegation; P11-10g authority checks; P11-10c nothing deleted)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.review import delegation
from ecrf.review.delegation import DelegationError, add_entry, end_entry, signing_line, site_today
from ecrf.review.models import DelegationEntry
from tests.factories import audit_rows


@pytest.fixture
def site(make):
    return make.site("01")


@pytest.fixture
def today(site):
    return site_today(site)


def lines(db, site) -> list[DelegationEntry]:
    db.session.expire_all()  # the requests wrote through sessions of their own
    return list(db.session.scalars(sa.select(DelegationEntry).where(DelegationEntry.site_id == site.id)
                                   .order_by(DelegationEntry.id)))


def test_the_data_manager_adds_a_line_on_the_site_page_and_it_is_audited(make, site, today, login_as,
                                                                         client, db):
    inv = make.user("paula-pi", role="investigator", site=site, full_name="Paula Pi")
    dm = login_as("data_manager")
    page = client.get(f"/delegation/sites/{site.id}").get_data(as_text=True)
    assert "Paula Pi (paula-pi)" in page  # offered: holds the investigator role at the site
    response = client.post(f"/delegation/sites/{site.id}", data={
        "user": str(inv.id), "task": "pi", "start_date": today.isoformat()})
    assert response.status_code == 302
    [line] = lines(db, site)
    assert (line.user_id, line.task, line.start_date, line.end_date) == (inv.id, "pi", today, None)
    created = audit_rows(action="delegation.create")
    assert {r.username for r in created} == {dm.username}
    assert {r.site for r in created} == {"01"}
    assert {r.field for r in created} >= {"user_id", "task", "start_date"}
    listed = client.get(f"/delegation/sites/{site.id}").get_data(as_text=True)
    assert "Principal investigator" in listed and "active" in listed


@pytest.mark.requirement("P11-10c")
def test_a_line_is_ended_with_a_reason_and_stays_in_the_log(make, site, today, login_as, client, db):
    inv = make.user("sam-sub", role="investigator", site=site, full_name="Sam Sub")
    entry = add_entry(system_actor(), site, inv, "sign", today - timedelta(days=10))
    login_as("data_manager")
    yesterday = today - timedelta(days=1)
    response = client.post(f"/delegation/entries/{entry.id}/end", data={
        "end_date": yesterday.isoformat(), "reason_code": "administrative",
        "reason_text": "left the unit"})
    assert response.status_code == 302
    [line] = lines(db, site)  # still there
    assert line.end_date == yesterday
    [ended] = audit_rows(action="delegation.update", field="end_date")
    assert (ended.reason_code, ended.reason_text) == ("administrative", "left the unit")
    page = client.get(f"/delegation/sites/{site.id}").get_data(as_text=True)
    assert "Sam Sub" in page and "ended" in page
    assert signing_line(inv, site) is None


def test_ending_a_line_needs_a_reason(make, site, today, login_as, client, db):
    inv = make.user("sam-sub", role="investigator", site=site)
    entry = add_entry(system_actor(), site, inv, "sign", today - timedelta(days=10))
    login_as("data_manager")
    for reason in ({}, {"reason_code": "other", "reason_text": " "}):
        response = client.post(f"/delegation/entries/{entry.id}/end",
                               data={"end_date": today.isoformat(), **reason}, follow_redirects=True)
        assert "Give the last day of the task and the reason" in response.get_data(as_text=True)
    assert lines(db, site)[0].end_date is None
    assert audit_rows(action="delegation.update") == []


def test_an_investigator_cannot_keep_the_log(make, site, today, login_as, client, db):
    inv = make.user("paula-pi", role="investigator", site=site)
    me = login_as("investigator", site="01")
    assert client.get(f"/delegation/sites/{site.id}").status_code == 403
    response = client.post(f"/delegation/sites/{site.id}", data={
        "user": str(me.id), "task": "pi", "start_date": today.isoformat()})
    assert response.status_code == 403
    assert lines(db, site) == []
    assert [r.field for r in audit_rows(action="access.denied")] == [
        "signatures.delegation_log", "signatures.add_delegation"]
    assert inv.id  # the PI exists, but only the data manager can put them on the log


def test_a_line_is_active_from_its_first_to_its_last_day_included(make, site, today, db):
    inv = make.user("sam-sub", role="investigator", site=site)
    entry = add_entry(system_actor(), site, inv, "sign", today - timedelta(days=5), today)
    assert entry.is_active_on(today) and entry.is_active_on(today - timedelta(days=5))
    assert not entry.is_active_on(today + timedelta(days=1))
    assert not entry.is_active_on(today - timedelta(days=6))
    assert signing_line(inv, site) == entry
    assert signing_line(inv, site, today + timedelta(days=1)) is None


def test_a_line_starting_tomorrow_does_not_allow_signing_today(make, site, today, db):
    inv = make.user("sam-sub", role="investigator", site=site)
    add_entry(system_actor(), site, inv, "sign", today + timedelta(days=1))
    assert signing_line(inv, site) is None
    assert signing_line(inv, site, today + timedelta(days=1)) is not None


def test_one_principal_investigator_at_a_time_a_new_one_after_the_first_line_ends(make, site, today, db):
    first = make.user("paula-pi", role="investigator", site=site, full_name="Paula Pi")
    second = make.user("peter-pi", role="investigator", site=site)
    old = add_entry(system_actor(), site, first, "pi", today - timedelta(days=30))
    with pytest.raises(DelegationError, match="has a principal investigator over these days"):
        add_entry(system_actor(), site, second, "pi", today)
    end_entry(system_actor(), old, today - timedelta(days=1), Reason("administrative", "handover"))
    assert add_entry(system_actor(), site, second, "pi", today).task == "pi"
    # sub-investigators are not limited
    add_entry(system_actor(), site, first, "sign", today)


def test_the_same_task_twice_over_the_same_days_is_refused(make, site, today, db):
    inv = make.user("sam-sub", role="investigator", site=site)
    add_entry(system_actor(), site, inv, "sign", today - timedelta(days=10), today - timedelta(days=5))
    with pytest.raises(DelegationError, match="already has this task"):
        add_entry(system_actor(), site, inv, "sign", today - timedelta(days=6))
    assert add_entry(system_actor(), site, inv, "sign", today - timedelta(days=4))  # after: fine


def test_only_an_investigator_of_the_site_can_be_put_on_its_log(make, site, today, db):
    monitor = make.user("mona", role="monitor", site=site)
    elsewhere = make.user("olga", role="investigator", site="02")
    for user in (monitor, elsewhere):
        with pytest.raises(DelegationError, match="holds no investigator role at site 01"):
            add_entry(system_actor(), site, user, "sign", today)
    assert lines(db, site) == []
    assert delegation.eligible_users(site) == []
    # negative control: the same account once granted the role at the site
    from ecrf.access.services import grant_role

    grant_role(system_actor(), elsewhere, "investigator", site)
    assert add_entry(system_actor(), site, elsewhere, "sign", today).user_id == elsewhere.id


def test_dates_that_make_no_sense_are_refused(make, site, today, db):
    inv = make.user("sam-sub", role="investigator", site=site)
    with pytest.raises(DelegationError, match="before the start date"):
        add_entry(system_actor(), site, inv, "sign", today, today - timedelta(days=1))
    entry = add_entry(system_actor(), site, inv, "sign", today)
    with pytest.raises(DelegationError, match="before the start date"):
        end_entry(system_actor(), entry, today - timedelta(days=1), Reason("administrative", "x"))
    end_entry(system_actor(), entry, today, Reason("administrative", "x"))
    with pytest.raises(DelegationError, match="already ended"):
        end_entry(system_actor(), entry, today, Reason("administrative", "again"))
    with pytest.raises(DelegationError, match="Unknown task"):
        add_entry(system_actor(), site, inv, "monitor", today)


def test_a_refused_line_shows_why_on_the_page(make, site, today, login_as, client, db):
    first = make.user("paula-pi", role="investigator", site=site, full_name="Paula Pi")
    second = make.user("peter-pi", role="investigator", site=site)
    add_entry(system_actor(), site, first, "pi", today)
    login_as("data_manager")
    response = client.post(f"/delegation/sites/{site.id}", data={
        "user": str(second.id), "task": "pi", "start_date": today.isoformat()})
    assert response.status_code == 409
    assert "has a principal investigator over these days (Paula Pi" in response.get_data(as_text=True)
    assert len(lines(db, site)) == 1


def test_the_sites_page_counts_open_lines_and_the_log_is_paginated(make, site, today, login_as, client,
                                                                   app, db):
    from ecrf.signatures.views import PER_PAGE

    users = [make.user(f"inv-{n:02d}", role="investigator", site=site) for n in range(PER_PAGE + 1)]
    for user in users:
        add_entry(system_actor(), site, user, "sign", today)
    login_as("data_manager")
    overview = client.get("/delegation/").get_data(as_text=True)
    assert f"<td>0</td><td>{PER_PAGE + 1}</td>" in overview
    first = client.get(f"/delegation/sites/{site.id}").get_data(as_text=True)
    second = client.get(f"/delegation/sites/{site.id}?page=2").get_data(as_text=True)
    assert first.count('<tr id="line-') == PER_PAGE and second.count('<tr id="line-') == 1
