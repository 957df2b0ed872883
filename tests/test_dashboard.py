"""The study home: enrolment against the target of 42, forms missing or overdue per visit window,
open queries by age; each count links to the list behind it, within the sites the user may see."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, mark_not_done, save_form
from ecrf.database import utcnow
from ecrf.review import dashboard
from ecrf.review.models import Query, QueryMessage
from ecrf.study.models import Subject


def _schedule(app):
    return app.extensions["ecrf.registry"].schedule


def _include_days_ago(subject: Subject, days: int) -> None:
    with unit_of_work(system_actor(), Reason.system("test: included some days ago")):
        subject.inclusion_date = utcnow().date() - timedelta(days=days)


def test_enrolment_counts_included_subjects_per_site_against_the_target(make, db):
    make.included("01"), make.included("01"), make.included("02")
    make.subject("02")  # screening: not included
    data = dashboard.enrolment(None)
    assert data.target == 42 and data.total == 3
    assert [(s.code, n) for s, n in data.by_site] == [("01", 2), ("02", 1)]
    one_site = dashboard.enrolment({data.by_site[1][0].id})
    assert one_site.total == 1


def test_the_enrolment_plot_is_an_accessible_svg_with_the_target(make, db):
    make.included("01")
    data = dashboard.enrolment(None)
    svg = dashboard.enrolment_svg(data, "Inclusions", "1 of 42")
    assert svg.startswith("<svg") and 'role="img"' in svg and "<title" in svg and "<desc" in svg
    assert 'class="target"' in svg and 'class="total"' in svg and ">01 1</text>" in svg


def test_missing_forms_are_due_in_an_open_window_and_overdue_once_it_closed(app, make, db):
    subject = make.included("01")
    _include_days_ago(subject, 3)
    today = utcnow().date()
    rows = dashboard.missing_forms(_schedule(app), None, today)
    by_visit = {(r.visit_key, r.crf_key): r for r in rows}
    window = _schedule(app).visit("D1").window(subject.inclusion_date)
    assert window[1] < today and by_visit[("D1", "sofa_daily")].state == "overdue"
    assert ("D3", "sofa_daily") in by_visit
    assert not any(r.visit_key == "D4" for r in rows)  # its window has not opened
    assert ("D0", "sofa_daily") not in by_visit  # entered and complete
    # a form marked not done is no longer missing
    mark_not_done(system_actor(), subject, "sofa_daily", Slot("D1"), "patient in imaging all day")
    rows = dashboard.missing_forms(_schedule(app), None, today)
    assert ("D1", "sofa_daily") not in {(r.visit_key, r.crf_key) for r in rows}
    counts = dict((v, (d, o)) for v, d, o in dashboard.missing_by_visit(rows, _schedule(app)))
    assert sum(d + o for d, o in counts.values()) == len(rows)


def test_a_screen_failure_has_no_missing_follow_up(app, make, db):
    subject = make.subject("01")
    assert dashboard.missing_forms(_schedule(app), None, utcnow().date() + timedelta(days=30)) == []
    assert subject.inclusion_date is None


def test_open_queries_on_the_home_page_link_to_the_list_with_the_same_count(make, login_as, client,
                                                                            db):
    subject = make.included("01")
    instance = save_form(system_actor(), subject, "toy_vitals", Slot("D1"),
                         Submitted({"weight": "70", "fever": "N"})).instance
    now = utcnow()
    with unit_of_work(system_actor()):
        for days, state in ((1, "open"), (10, "answered"), (40, "open"), (2, "closed")):
            query = Query(subject=subject, form_instance=instance, item_key="weight", state=state,
                          raised_by_id=system_actor().user_id, created_at=now - timedelta(days=days))
            db.session.add(query)
            db.session.add(QueryMessage(query=query, action="raise", text="?",
                                        author_id=system_actor().user_id))
    login_as("monitor", site="01")
    page = html.unescape(client.get("/").get_data(as_text=True))
    links = dict(re.findall(r'<th scope="row">([^<]+)</th><td><a href="(/queries/[^"]+)">', page))
    assert set(links) == {"0-7", "8-14", ">30"}
    for label, expected in ((">30", 1), ("0-7", 1), ("8-14", 1)):
        listed = client.get(links[label]).get_data(as_text=True)
        assert len(set(re.findall(r'href="/queries/(\d+)"', listed))) == expected, label


@pytest.mark.requirement("E6-4.2.3")
def test_the_home_page_shows_each_count_with_a_link_to_its_list(make, login_as, client, db):
    subject = make.included("01")
    _include_days_ago(subject, 3)
    make.included("02")
    login_as("data_manager")
    page = html.unescape(client.get("/").get_data(as_text=True))
    assert "2 of 42 subjects included" in page
    assert 'href="/subjects/?site=01&included=1">1</a>' in page
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="enrolment-plot"' in page
    overdue = re.search(r'href="(/missing-forms\?[^"]*visit=D1[^"]*)">(\d+)</a>', page)
    listed = client.get(overdue.group(1)).get_data(as_text=True)
    assert listed.count(f">{subject.code}</a>") == int(overdue.group(2))
    for section in ("queries-by-age", "sdv-backlog", "sign-off"):
        assert f'id="{section}"' in page, section
    assert client.get("/sign-off").status_code == 200


def test_an_investigator_sees_only_the_figures_of_their_site(make, login_as, client, db):
    make.included("01"), make.included("02"), make.included("02")
    login_as("investigator", site="01")
    page = client.get("/").get_data(as_text=True)
    assert "1 of 42 subjects included" in page
    listed = client.get("/subjects/?included=1").get_data(as_text=True)
    assert "01-001" in listed and "02-00" not in listed


def test_the_missing_forms_list_is_paginated_and_filtered_on_the_server(app, make, login_as,
                                                                          client, db):
    for _ in range(4):
        _include_days_ago(make.included("01"), 12)  # about 13 days x several forms each
    login_as("monitor", site="01")
    total = len(dashboard.missing_forms(_schedule(app), None, utcnow().date()))
    assert total > 50
    first = client.get("/missing-forms").get_data(as_text=True)
    assert f"Page 1 of {(total + 49) // 50} ({total})" in first
    assert first.count("<tr><td><a href=\"/subjects/") == 50
    overdue_d2 = client.get("/missing-forms?visit=D2&state=overdue").get_data(as_text=True)
    assert "overdue" in overdue_d2 and ">D3<" not in overdue_d2
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Subject)) == 4
