"""Audit trail review (EMA-6): the data managers' worklist flags late entries, changes after SDV,
changes after a signature, items changed many times and data entered outside working hours (site
local time); a reviewed record keeps who reviewed it, when and the comment, and leaves the list of
records to review. Every scenario is built through the real services."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from ecrf.access.grants import Access
from ecrf.audit import review
from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, get_instance, mark_not_done, save_form
from ecrf.exports.models import AuditReview
from ecrf.review import sdv
from ecrf.review import signatures as sig
from ecrf.review.delegation import add_entry, site_today
from ecrf.study import settings
from ecrf.study.services import activate_site, create_site
from tests.factories import PASSWORD, audit_rows

pytestmark = pytest.mark.requirement("EMA-6", "E6-4.2.3")

TOY = "toy_vitals"
CHANGE = Reason("entry_error", "corrected from the source")


def save_toy(subject, slot=None, **values):
    data = {"weight": "70", "fever": "N", **values}
    result = save_form(system_actor(), subject, TOY, slot or Slot("D1"), Submitted(data), reason=CHANGE,
                       confirmed={"TOY_VITALS-weight-RANGE"})
    assert result.ok, result.errors
    return result.instance


def item_row(subject, item: str, action: str, n: int = -1, visit: str = "D1"):
    """The n-th (default: last) audit row of an item's value at a visit."""
    return [r for r in audit_rows(action=action, subject=subject.code, item=item)
            if r.visit == visit and r.entity_type == "item"][n]


def flags_of(seq: int) -> set[str]:
    return {f.flag for f in review.flagged(seq=seq)}


def with_flag(flag: str, site: str | None = None) -> set[int]:
    return {f.seq for f in review.flagged(site) if f.flag == flag}


def new_site(code: str, timezone: str):
    site = create_site(system_actor(), code, f"Site {code}", timezone)
    activate_site(system_actor(), site)
    return site


# --- late entries ------------------------------------------------------------------------------


def included_days_ago(make, later, days: int, site: str):
    """A subject included ``days`` days ago (the clock of the services moved back, then forward)."""
    later(days=-days)
    try:
        return make.included(site)
    finally:
        later(days=days)


@pytest.mark.requirement("ALCOA-contemporaneous")
def test_a_value_entered_more_than_seven_days_after_its_visit_date_is_a_late_entry(make, later, db):
    later(days=-30)
    new_site("01", "UTC")  # one calendar for the site and the database clock: exact day counts
    later(days=30)
    late = included_days_ago(make, later, 9, "01")  # D1 was 8 days ago
    on_time = included_days_ago(make, later, 8, "01")  # D1 was 7 days ago: not more than 7
    assert late.inclusion_date == date.today() - timedelta(days=9)
    save_toy(late)
    save_toy(on_time)
    weight = item_row(late, "weight", "item.create")
    assert "late_entry" in flags_of(weight.seq)
    (found,) = [f for f in review.flagged(seq=weight.seq) if f.flag == "late_entry"]
    assert dict(found.detail)["days"] == 8 and "8 days after" in found.explain()
    assert "late_entry" not in flags_of(item_row(on_time, "weight", "item.create").seq)
    # a change is not an entry: only the first value of an item can be late
    save_toy(late, weight="71")
    assert "late_entry" not in flags_of(item_row(late, "weight", "item.update").seq)


@pytest.mark.requirement("ALCOA-contemporaneous")
def test_the_late_entry_limit_is_a_study_setting(make, later, db, monkeypatch):
    later(days=-30)
    new_site("01", "UTC")
    later(days=30)
    subject = included_days_ago(make, later, 8, "01")
    save_toy(subject)
    weight = item_row(subject, "weight", "item.create")
    assert "late_entry" not in flags_of(weight.seq)
    monkeypatch.setattr(settings, "AUDIT_LATE_ENTRY_DAYS", 6)
    assert "late_entry" in flags_of(weight.seq)


def test_an_unscheduled_visit_has_no_target_date_and_is_never_late(make, later, db):
    later(days=-30)
    new_site("01", "UTC")
    later(days=30)
    subject = included_days_ago(make, later, 20, "01")
    save_toy(subject, Slot("UNS", 1))
    assert "late_entry" not in flags_of(item_row(subject, "weight", "item.create", visit="UNS").seq)


# --- changes after SDV -------------------------------------------------------------------------


def _verify(make, subject, *items):
    monitor = make.user("cra-review", role="monitor", site=subject.site)
    actor = Access.for_user(monitor, "sdv.verify").actor(subject.site_id)
    sdv.verify_items(actor, subject, get_instance(subject, TOY, Slot("D1")), list(items))
    return actor


def test_a_change_of_a_verified_value_is_flagged_as_changed_after_sdv(make, db):
    subject = make.subject("01")
    save_toy(subject, height="170")
    actor = _verify(make, subject, "weight", "fever")
    # fever: verified, then un-verified by the monitor with a reason, then changed
    sdv.unverify(actor, subject, get_instance(subject, TOY, Slot("D1")), "fever", "wrong source")
    save_toy(subject, weight="72", height="171", fever="Y", temperature="38.2")
    weight = item_row(subject, "weight", "item.update")
    assert flags_of(weight.seq) >= {"changed_after_sdv"}
    assert with_flag("changed_after_sdv") == {weight.seq}  # not height (never verified), not fever
    # the exact link: the verification cleared in the same transaction, with the system reason
    (cleared,) = audit_rows(action="sdv.update", field="verified", reason_code="system")
    assert (cleared.request_id, cleared.item) == (weight.request_id, "weight")


# --- changes after a signature -----------------------------------------------------------------


def _signed_d1(make, scope=None):
    site = make.site("01")
    pi = make.user("pi-review", role="investigator", site=site, full_name="Pia Investigator")
    add_entry(system_actor(), site, pi, "pi", site_today(site) - timedelta(days=30))
    subject = make.subject("01")
    save_toy(subject)
    mark_not_done(system_actor(), subject, "sofa_daily", Slot("D1"), "not measured that day")
    save_toy(subject, Slot("UNS", 1))
    before = item_row(subject, "weight", "item.create")
    sig.sign(pi, subject, scope or sig.SignScope.visit("D1"), username=pi.username, password=PASSWORD)
    return subject, before


def test_a_change_after_the_visit_was_signed_is_flagged(make, db):
    subject, before = _signed_d1(make)
    save_toy(subject, weight="75")
    save_toy(subject, Slot("UNS", 1), weight="76")  # another visit: not covered by the signature
    after = item_row(subject, "weight", "item.update")
    elsewhere = item_row(subject, "weight", "item.update", visit="UNS")
    assert "changed_after_signature" in flags_of(after.seq)
    assert with_flag("changed_after_signature") == {after.seq}
    assert "changed_after_signature" not in flags_of(before.seq)
    assert "changed_after_signature" not in flags_of(elsewhere.seq)
    (found,) = [f for f in review.flagged(seq=after.seq) if f.flag == "changed_after_signature"]
    assert "signature of visit D1" in found.explain()


def test_a_casebook_signature_covers_every_visit(make, db):
    subject, _before = _signed_d1(make, sig.SignScope.casebook())
    save_toy(subject, Slot("UNS", 1), weight="76")
    elsewhere = item_row(subject, "weight", "item.update", visit="UNS")
    assert "changed_after_signature" in flags_of(elsewhere.seq)


# --- many changes ------------------------------------------------------------------------------


def _changed(subject, times: int) -> list[int]:
    save_toy(subject, height="170")
    for n in range(times):
        save_toy(subject, weight=str(71 + n), height="171")  # height: changed once
    return [r.seq for r in audit_rows(action="item.update", subject=subject.code, item="weight")]


def test_each_change_of_an_item_after_the_third_is_flagged(make, db):
    subject = make.subject("01")
    changes = _changed(subject, 5)
    assert len(changes) == 5
    assert with_flag("many_changes") == set(changes[3:])  # the 4th and 5th; height changed once
    (fourth,) = [f for f in review.flagged(seq=changes[3]) if f.flag == "many_changes"]
    assert fourth.explain() == "Change 4 of this item (more than 3)."


def test_the_number_of_changes_is_a_study_setting(make, db, monkeypatch):
    subject = make.subject("01")
    changes = _changed(subject, 3)
    assert with_flag("many_changes") == set()
    monkeypatch.setattr(settings, "AUDIT_MANY_CHANGES", 1)
    assert with_flag("many_changes") == set(changes[1:])


# --- outside working hours ---------------------------------------------------------------------


@pytest.mark.parametrize(("local", "tz", "outside"), [
    ("2026-03-04T06:59", "Europe/Paris", True),   # a Wednesday, before 07:00
    ("2026-03-04T07:00", "Europe/Paris", False),
    ("2026-03-04T19:59", "Europe/Paris", False),
    ("2026-03-04T20:00", "Europe/Paris", True),
    ("2026-03-07T12:00", "Europe/Paris", True),   # a Saturday
    ("2026-03-08T12:00", "Europe/Paris", True),   # a Sunday
    ("2026-03-30T06:30", "Europe/Paris", True),   # the day after the change to summer time
    ("2026-03-30T07:30", "Europe/Paris", False),
    ("2026-03-04T09:00", "America/Cayenne", False),
])
def test_working_hours_are_the_sites_local_time_on_working_days(local, tz, outside):
    from zoneinfo import ZoneInfo

    moment = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(tz)).astimezone(UTC)
    assert review.is_out_of_hours(moment, tz) is outside


def zone_where_it_is(hour: int) -> str:
    """A fixed-offset zone in which the local time is now ``hour`` o'clock (Etc/GMT-5 is UTC+5)."""
    offset = (hour - datetime.now(UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return "Etc/UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


def test_data_entered_at_night_site_time_is_flagged_and_in_the_day_is_not(make, db, monkeypatch):
    monkeypatch.setattr(settings, "AUDIT_WEEKEND_DAYS", ())  # whatever day the suite runs
    night, day = new_site("05", zone_where_it_is(2)), new_site("06", zone_where_it_is(12))
    at_night, in_the_day = make.subject(night), make.subject(day)
    save_toy(at_night)
    save_toy(in_the_day)
    entered_at_night = {r.seq for r in audit_rows(subject=at_night.code) if r.entity_type == "item"}
    assert entered_at_night and with_flag("out_of_hours", "05") == entered_at_night
    assert with_flag("out_of_hours", "06") == set()
    (found,) = [f for f in review.flagged(seq=max(entered_at_night)) if f.flag == "out_of_hours"]
    assert re.search(r"at 02:\d\d [+-]\d\d:\d\d site time", found.explain())
    monkeypatch.setattr(settings, "AUDIT_WORKING_HOURS", (0, 24))  # the setting is read
    assert with_flag("out_of_hours", "05") == set()


# --- the worklist and the review -------------------------------------------------------------


@pytest.fixture
def flagged_changes(make, db):
    subject = make.subject("01")
    return subject, _changed(subject, 5)[3:]


def _rows(page: str) -> list[tuple[int, str]]:
    return [(int(s), f) for s, f in re.findall(r'<tr id="r-(\d+)-([a-z_]+)">', page)]


def test_the_worklist_shows_the_flagged_records_and_counts_per_flag(flagged_changes, login_as,
                                                                     client):
    _subject, changes = flagged_changes
    login_as("data_manager")
    page = client.get("/audit/review?flag=many_changes").get_data(as_text=True)
    assert _rows(page) == [(changes[1], "many_changes"), (changes[0], "many_changes")]
    assert "Change 5 of this item (more than 3)." in page
    assert re.search(r"Many changes to one item</th>\s*<td><a [^>]*>2</a></td>\s*<td><a [^>]*>0</a>",
                     page)
    for seq in changes:
        assert f'<label for="c-{seq}-many_changes">Comment on record #{seq}</label>' in page


@pytest.mark.requirement("A11-9")
def test_reviewing_records_who_when_and_the_comment_and_moves_the_record_to_reviewed(
        flagged_changes, login_as, client, db):
    _subject, changes = flagged_changes
    manager = login_as("data_manager")
    response = client.post("/audit/review", data={
        "seq": str(changes[0]), "flag": "many_changes", "comment": "checked against the source",
        "back_state": "to_review", "back_flag": "many_changes"})
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/audit/review?state=to_review&flag=many_changes")
    (done,) = db.session.scalars(sa.select(AuditReview)).all()
    assert (done.seq, done.flag, done.reviewer_id, done.comment) == (
        changes[0], "many_changes", manager.id, "checked against the source")
    assert abs(done.reviewed_at - datetime.now(UTC)) < timedelta(minutes=1)
    recorded = audit_rows(action="audit_review.create")
    assert {r.field for r in recorded} >= {"seq", "flag", "reviewer_id", "comment"}
    assert {r.username for r in recorded} == {manager.username}

    to_review = client.get("/audit/review?flag=many_changes").get_data(as_text=True)
    assert _rows(to_review) == [(changes[1], "many_changes")]
    reviewed = client.get("/audit/review?flag=many_changes&state=reviewed").get_data(as_text=True)
    assert _rows(reviewed) == [(changes[0], "many_changes")]
    assert "checked against the source" in reviewed and manager.full_name in reviewed
    assert re.search(r"Many changes to one item</th>\s*<td><a [^>]*>1</a></td>\s*<td><a [^>]*>1</a>",
                     reviewed)
    every = client.get("/audit/review?flag=many_changes&state=all").get_data(as_text=True)
    assert len(_rows(every)) == 2


def test_a_review_needs_a_comment_a_flagged_record_and_happens_once(flagged_changes, login_as,
                                                                    client, db):
    subject, changes = flagged_changes
    manager = login_as("data_manager")
    actor = Access.for_user(manager, "audit.review").actor()
    with pytest.raises(review.ReviewError, match="Write a comment"):
        review.review(actor, changes[0], "many_changes", "   ")
    first_update = audit_rows(action="item.update", subject=subject.code, item="weight")[0]
    with pytest.raises(review.ReviewError, match="is not flagged as Many changes"):
        review.review(actor, first_update.seq, "many_changes", "looks fine")
    with pytest.raises(review.ReviewError, match="Unknown flag"):
        review.review(actor, changes[0], "bogus", "looks fine")
    review.review(actor, changes[0], "many_changes", "looks fine")
    with pytest.raises(review.ReviewError, match="already reviewed"):
        review.review(actor, changes[0], "many_changes", "again")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditReview)) == 1
    # through the page: said, nothing recorded
    response = client.post("/audit/review", data={"seq": str(changes[1]), "flag": "many_changes",
                                                   "comment": ""}, follow_redirects=True)
    assert "Write a comment" in response.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditReview)) == 1


def test_the_worklist_is_paginated(make, login_as, client, app, monkeypatch):
    subject = make.subject("01")
    changes = _changed(subject, 8)[3:]  # five flagged
    monkeypatch.setitem(app.config, "AUDIT_PER_PAGE", 2)
    login_as("data_manager")
    pages = [_rows(client.get(f"/audit/review?flag=many_changes&page={n}").get_data(as_text=True))
             for n in (1, 2, 3, 4)]
    assert [len(p) for p in pages] == [2, 2, 1, 0]
    assert [seq for p in pages for seq, _flag in p] == sorted(changes, reverse=True)
    assert "Page 2 of 3 (5)" in client.get("/audit/review?flag=many_changes&page=2").get_data(
        as_text=True)


def test_the_worklist_filters_by_site(make, login_as, client):
    first, other = make.subject("01"), make.subject("02")
    _changed(first, 4)
    theirs = _changed(other, 4)[3]
    login_as("data_manager")
    page = client.get("/audit/review?flag=many_changes&site=02").get_data(as_text=True)
    assert _rows(page) == [(theirs, "many_changes")]


@pytest.mark.parametrize("role", ["monitor", "investigator", "auditor"])
def test_only_a_data_manager_reviews(role, flagged_changes, login_as, client, db):
    _subject, changes = flagged_changes
    user = login_as(role, site="01" if role != "auditor" else None)
    assert client.get("/audit/review").status_code == 403
    response = client.post("/audit/review", data={"seq": str(changes[0]), "flag": "many_changes",
                                                   "comment": "not mine to review"})
    assert response.status_code == 403
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditReview)) == 0
    assert [r.username for r in audit_rows(action="access.denied")] == [user.username] * 2
