"""The audit trail viewer: auditors and data managers read the trail of one item, form, visit,
subject, site or the whole study, filtered by user, action and UTC dates, 50 records a page, in
words (actions, reasons, old -> new values, UTC and site time with its offset); they download any
filtered view as CSV or JSON lines, streamed from the database, and each download is recorded in
the audit trail before its first byte is sent."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from ecrf.access.grants import Access
from ecrf.audit import viewer
from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import Reason
from ecrf.audit.redaction import redact_value
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, get_instance, save_form
from ecrf.extensions import db
from tests.factories import audit_rows

TOY = "toy_vitals"
TODAY = date.today  # the database clock is real: rows are recorded today (UTC)


def _enterer(make, name: str, site: str):
    user = make.user(name, role="investigator", site=site)
    return user, Access.for_user(user, "crf.enter").actor(make.site(site).id)


def _save(actor, subject, values, slot=None, reason=None):
    result = save_form(actor, subject, TOY, slot or Slot("D1"), Submitted(values), reason=reason,
                       confirmed={"TOY_VITALS-weight-RANGE"})
    assert result.ok, result.errors
    return result.instance


@pytest.fixture
def world(make, db):
    """Two sites; at site 01 two subjects entered by two investigators (D1 and an unscheduled
    visit, a change with a reason), at site 02 one subject."""
    anna, anna_actor = _enterer(make, "anna-inv", "01")
    ben, ben_actor = _enterer(make, "ben-inv", "01")
    _olga, olga_actor = _enterer(make, "olga-inv", "02")
    first, second, other = make.subject("01"), make.subject("01"), make.subject("02")
    _save(anna_actor, first, {"weight": "70", "height": "170", "fever": "N"})
    _save(ben_actor, first, {"weight": "72.5", "height": "170", "fever": "N"},
          reason=Reason("entry_error", "transcription"))
    _save(anna_actor, first, {"weight": "69", "fever": "N"}, slot=Slot("UNS", 1))
    _save(ben_actor, second, {"weight": "80", "fever": "Y", "temperature": "38.5"})
    _save(olga_actor, other, {"weight": "60", "fever": "N"})
    return {"anna": anna, "ben": ben, "first": first, "second": second, "other": other}


def _all() -> list[AuditRecord]:
    return audit_rows()


def _seqs(rows) -> list[int]:
    return [r.seq for r in rows]


def _page_seqs(response) -> list[int]:
    assert response.status_code == 200
    return [int(s) for s in re.findall(r'<tr id="seq-(\d+)">', response.get_data(as_text=True))]


def _everything(filters: viewer.Filters) -> list[int]:
    """The whole filtered view through the service (one big page), newest first."""
    return [e.seq for e in viewer.page(filters, 1, 100_000).items]


# --- filters -----------------------------------------------------------------------------------


def _reference(world) -> dict[str, tuple[dict, callable]]:
    """Each filter, and the same condition written out in Python over every row."""
    first = world["first"].code
    return {
        "site": ({"site": "02"}, lambda r: r.site == "02"),
        "subject": ({"subject": first}, lambda r: r.subject == first),
        "visit": ({"subject": first, "visit": "UNS"}, lambda r: r.subject == first and r.visit == "UNS"),
        "form": ({"form": TOY}, lambda r: r.form == TOY),
        "item": ({"subject": first, "visit": "D1", "form": TOY, "item": "weight"},
                 lambda r: (r.subject, r.visit, r.form, r.item) == (first, "D1", TOY, "weight")),
        "user": ({"user": "ben-inv"}, lambda r: r.username == "ben-inv"),
        "action": ({"action": "item.update"}, lambda r: r.action == "item.update"),
        "user and action": ({"user": "anna-inv", "action": "item.create"},
                            lambda r: r.username == "anna-inv" and r.action == "item.create"),
    }


@pytest.mark.requirement("E6-4.2.2c")
@pytest.mark.parametrize("name", ["site", "subject", "visit", "form", "item", "user", "action",
                                  "user and action"])
def test_each_filter_narrows_the_view_to_exactly_its_rows(name, world):
    args, keep = _reference(world)[name]
    filters, errors = viewer.Filters.parse(args)
    assert errors == []
    everything = _all()
    expected = sorted((r.seq for r in everything if keep(r)), reverse=True)
    assert expected, "the scenario has rows for this filter"
    assert len(expected) < len(everything)  # it does narrow: some rows are left out
    assert _everything(filters) == expected
    assert _everything(viewer.Filters()) == sorted(_seqs(everything), reverse=True)


def test_the_page_reads_its_filters_from_the_query_string(world, login_as, client):
    login_as("auditor")
    first = world["first"].code
    shown = _page_seqs(client.get(f"/audit/?subject={first}&visit=D1&form={TOY}&item=weight"))
    expected = [r.seq for r in reversed(_all())
                if (r.subject, r.visit, r.form, r.item) == (first, "D1", TOY, "weight")]
    assert shown == expected and len(shown) == 2  # entered, then changed
    whole = client.get(f"/audit/?subject={first}").get_data(as_text=True)
    assert first in whole and world["second"].code not in whole


@pytest.mark.requirement("E6-4.2.2d")
def test_the_date_range_is_in_utc_days_both_included(world):
    today = datetime.now(UTC).date()
    total = len(_all())

    def count(**dates) -> int:
        filters, errors = viewer.Filters.parse({k: v.isoformat() for k, v in dates.items()})
        assert errors == []
        return len(_everything(filters))

    assert count(date_from=today, date_to=today) == total  # the last day is included
    assert count(date_from=today - timedelta(days=3)) == total
    assert count(date_from=today + timedelta(days=1)) == 0
    assert count(date_to=today - timedelta(days=1)) == 0


def test_a_malformed_date_is_said_on_the_page_and_refuses_a_download(world, login_as, client):
    login_as("auditor")
    page = client.get("/audit/?date_from=31/12/2026").get_data(as_text=True)
    assert "31/12/2026 is not a date (YYYY-MM-DD)." in page
    reversed_range = client.get("/audit/?date_from=2026-02-02&date_to=2026-02-01")
    assert "The first date is after the last date." in reversed_range.get_data(as_text=True)
    assert client.get("/audit/export.csv?date_from=31/12/2026").status_code == 400
    assert audit_rows(action="audit.exported") == []


# --- pages -------------------------------------------------------------------------------------


def test_fifty_records_a_page_newest_first_each_record_once(world, login_as, client):
    login_as("data_manager")
    newest_first = sorted(_seqs(_all()), reverse=True)
    assert len(newest_first) > 50  # the scenario spans two pages
    first = _page_seqs(client.get("/audit/"))
    second = _page_seqs(client.get("/audit/?page=2"))
    assert first == newest_first[:50] and second == newest_first[50:100]
    page = client.get("/audit/?page=2").get_data(as_text=True)
    assert re.search(r"Page 2 of \d+ \(\d+\)", page)
    assert _page_seqs(client.get("/audit/?page=999")) == []


def test_the_pager_keeps_the_filters(world, login_as, client, app, monkeypatch):
    monkeypatch.setitem(app.config, "AUDIT_PER_PAGE", 5)
    login_as("auditor")
    page = client.get("/audit/?form=toy_vitals").get_data(as_text=True)
    assert re.search(r'href="/audit/\?page=2&amp;form=toy_vitals"|href="/audit/\?form=toy_vitals&amp;page=2"',
                     page)


# --- in words ----------------------------------------------------------------------------------


@pytest.mark.requirement("A11-9", "E6-4.2.2c", "E6-4.2.2d", "ALCOA-legible")
def test_a_change_reads_in_words_with_old_and_new_value_utc_and_site_time(world, login_as, client):
    login_as("auditor")
    change = next(r for r in audit_rows(action="item.update", item="weight",
                                        subject=world["first"].code))
    page = client.get(f"/audit/?subject={world['first'].code}&item=weight&action=item.update")
    row = page.get_data(as_text=True).split(f'<tr id="seq-{change.seq}">')[1].split("</tr>")[0]
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
    utc = change.recorded_at.astimezone(UTC)
    paris = change.recorded_at.astimezone(ZoneInfo("Europe/Paris"))
    offset = paris.strftime("%z")
    assert cells[1] == utc.strftime("%Y-%m-%d %H:%M:%S")
    assert cells[2] == paris.strftime("%Y-%m-%d %H:%M:%S ") + f"{offset[:3]}:{offset[3:]} Europe/Paris"
    assert cells[3:6] == ["ben-inv", "investigator / 01", "Value changed (item.update)"]
    assert cells[6].startswith(f"{world['first'].code} · D1 · toy_vitals · weight (Weight)")
    assert cells[7:10] == ["70", "72.5", "Data entry error: transcription"]


@pytest.mark.requirement("E6-4.2.2c", "ALCOA-legible")
def test_every_action_the_services_record_has_words():
    """The actions the code records (read from the sources) all have a label."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "ecrf"
    recorded = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        recorded |= set(re.findall(r'uow\.record\(\s*"([a-z_]+\.[a-z_]+)"', text))
        recorded |= {f"{e}.{v}" for e in re.findall(r'AuditSpec\(\s*"([a-z_]+)"', text)
                     for v in ("create", "update")}
    assert "item.update" in recorded and "auth.login" in recorded
    missing = sorted(recorded - viewer.ACTION_LABELS.keys())
    assert missing == []


def test_the_system_reason_and_user_reasons_have_words():
    assert viewer.reason_label("entry_error") == "Data entry error"
    assert viewer.reason_label("system") == "System"
    assert viewer.reason_label(None) == ""


def test_a_redacted_value_shows_as_redacted_and_is_left_out_of_downloads(world, login_as, client):
    typo = audit_rows(action="item.create", item="weight", subject=world["second"].code)[0]
    manager = login_as("data_manager")
    redact_value(Access.for_user(manager, "audit.view").actor(), typo.seq, "new",
                 Reason("other", "entered in the wrong subject"))
    page = client.get(f"/audit/?subject={world['second'].code}&item=weight").get_data(as_text=True)
    row = page.split(f'<tr id="seq-{typo.seq}">')[1].split("</tr>")[0]
    assert "[redacted]" in row and ">80<" not in row
    lines = client.get(f"/audit/export.jsonl?subject={world['second'].code}&item=weight")
    record = next(json.loads(x) for x in lines.get_data(as_text=True).splitlines()
                  if json.loads(x)["seq"] == typo.seq)
    assert record["new_value"] is None and record["redacted_by"] > typo.seq


# --- downloads ---------------------------------------------------------------------------------


def _csv_rows(body: str) -> list[dict]:
    assert body.startswith("\ufeff")
    return list(csv.DictReader(io.StringIO(body[1:])))


@pytest.mark.requirement("P11-10e-3")
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_download_holds_exactly_the_rows_of_the_filtered_view(fmt, world, login_as, client):
    login_as("auditor")
    first = world["first"].code
    expected = [r.seq for r in _all() if r.subject == first and r.username == "ben-inv"]
    outside = [r.seq for r in _all() if r.subject != first or r.username != "ben-inv"]
    response = client.get(f"/audit/export.{fmt}?subject={first}&user=ben-inv")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith(
        f'attachment; filename="audit-trail-{first}-')
    body = response.get_data(as_text=True)
    if fmt == "csv":
        assert response.mimetype == "text/csv"
        rows = _csv_rows(body)
        assert list(rows[0]) == list(viewer.EXPORT_COLUMNS)
    else:
        assert response.mimetype == "application/x-ndjson"
        rows = [json.loads(line) for line in body.splitlines()]
        assert list(rows[0]) == list(viewer.EXPORT_COLUMNS)
    got = [int(r["seq"]) for r in rows]
    assert got == expected  # in chain order
    assert not set(got) & set(outside)  # negative control: rows outside the filter are absent
    change = next(r for r in rows if r["action"] == "item.update" and r["item"] == "weight")
    assert (change["old_value"], change["new_value"], change["reason"], change["action_label"]) == (
        "70", "72.5", "Data entry error", "Value changed")
    assert change["recorded_at_local"].endswith(("+01:00", "+02:00"))
    assert change["recorded_at_utc"].endswith("Z")


def test_the_unfiltered_download_is_the_whole_trail_up_to_the_download_itself(world, login_as,
                                                                              client):
    login_as("auditor")
    before = _seqs(_all())
    rows = _csv_rows(client.get("/audit/export.csv").get_data(as_text=True))
    assert [int(r["seq"]) for r in rows] == before
    recorded = audit_rows(action="audit.exported")
    assert len(recorded) == 1 and recorded[0].seq > before[-1]  # the download is after what it holds


def test_a_download_is_recorded_with_its_filters_before_streaming_starts(world, login_as, client):
    auditor = login_as("auditor")
    first = world["first"].code
    response = client.get(f"/audit/export.jsonl?subject={first}&action=item.update",
                          buffered=False)
    assert response.is_streamed
    (record,) = audit_rows(action="audit.exported")  # nothing read from the stream yet
    assert (record.username, record.role, record.field) == (auditor.username, "auditor", "jsonl")
    assert record.subject is None  # the download is not part of the trail it holds
    assert json.loads(record.value.new_value) == {
        "filters": {"subject": first, "action": "item.update"},
        "up_to_seq": record.seq - 1}
    assert record.reason_code == "system" and record.reason_text == "audit trail downloaded"
    body = response.get_data(as_text=True)
    assert {json.loads(x)["action"] for x in body.splitlines()} == {"item.update"}
    response.close()


def test_a_download_is_sent_in_pieces_read_from_the_database_as_it_goes(world, login_as, client,
                                                                        monkeypatch):
    monkeypatch.setattr(viewer, "CHUNK_CHARS", 2000)
    fetched = []
    real = viewer.Entry.of

    def counting(row, zones, words):
        fetched.append(row.seq)
        return real(row, zones, words)

    monkeypatch.setattr(viewer.Entry, "of", staticmethod(counting))
    login_as("auditor")
    response = client.get("/audit/export.csv", buffered=False)
    pieces = iter(response.response)
    first = next(pieces)
    assert len(fetched) < len(_all()) / 2  # the first piece left before most rows were read
    rest = list(pieces)
    assert len(rest) > 3 and all(len(p) < 2000 + 2000 for p in rest)
    assert len(fetched) >= len(_all()) - 1
    text = b"".join([first, *rest]).decode() if isinstance(first, bytes) else "".join([first, *rest])
    assert len(_csv_rows(text)) == len(fetched)
    response.close()


def test_a_csv_cell_that_a_spreadsheet_would_run_as_a_formula_is_quoted_json_keeps_it(
        world, login_as, client):
    formula = '=HYPERLINK("http://example.org","x")'
    _save(system_actor(), world["other"], {"weight": "60", "fever": "N", "comment": formula},
          reason=Reason("entry_error", "comment added"))
    login_as("auditor")
    query = f"subject={world['other'].code}&item=comment"
    (row,) = _csv_rows(client.get(f"/audit/export.csv?{query}").get_data(as_text=True))
    assert row["new_value"] == "'" + formula
    (line,) = client.get(f"/audit/export.jsonl?{query}").get_data(as_text=True).splitlines()
    assert json.loads(line)["new_value"] == formula
    assert viewer._cell("-5.2") == "-5.2" and viewer._cell("-x") == "'-x"


# --- who -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["monitor", "investigator", "admin"])
@pytest.mark.parametrize("url", ["/audit/", "/audit/export.csv", "/audit/export.jsonl"])
def test_only_auditors_and_data_managers_read_or_download_the_trail(role, url, world, login_as,
                                                                    client):
    user = login_as(role, site="01" if role in ("monitor", "investigator") else None)
    response = client.get(url)
    assert response.status_code == 403
    assert world["first"].code not in response.get_data(as_text=True)
    assert audit_rows(action="audit.exported") == []
    assert [r.username for r in audit_rows(action="access.denied")] == [user.username]


@pytest.mark.requirement("P11-10e-3", "ALCOA-available")
@pytest.mark.parametrize("role", ["auditor", "data_manager"])
def test_auditors_and_data_managers_read_and_download_the_whole_study(role, world, login_as, client):
    login_as(role)
    page = client.get("/audit/").get_data(as_text=True)
    assert "Audit trail" in page
    body = client.get("/audit/export.csv?site=02").get_data(as_text=True)
    assert {r["site"] for r in _csv_rows(body)} == {"02"}


def test_the_trail_page_offers_the_download_of_the_view_shown(world, login_as, client):
    login_as("auditor")
    page = client.get("/audit/?site=01&action=item.create").get_data(as_text=True)
    for fmt in ("csv", "jsonl"):
        assert re.search(rf'href="/audit/export\.{fmt}\?(site=01&amp;action=item\.create|'
                         rf'action=item\.create&amp;site=01)"', page)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditRecord).where(
        AuditRecord.action == "audit.exported")) == 0  # showing the links downloads nothing


@pytest.mark.requirement("ALCOA-traceable")
def test_an_items_history_links_auditors_to_its_full_audit_trail(world, make, login_as, client):
    first = world["first"]
    history = f"/subjects/{first.code}/visits/D1/1/forms/{TOY}/1/items/weight/history"
    monitor = make.user("cra-history", role="monitor", site="01")
    from ecrf.review import sdv

    sdv.verify_items(Access.for_user(monitor, "sdv.verify").actor(first.site_id), first,
                     get_instance(first, TOY, Slot("D1")), ["weight"])
    login_as("monitor", site="01")
    assert "Full audit trail of this item" not in client.get(history).get_data(as_text=True)
    client.post("/auth/logout")
    login_as("auditor")
    page = client.get(history).get_data(as_text=True)
    link = re.search(r'<a href="(/audit/\?[^"]+)">Full audit trail of this item', page).group(1)
    shown = _page_seqs(client.get(link.replace("&amp;", "&")))
    expected = [r.seq for r in reversed(_all())
                if (r.subject, r.visit, r.form, r.item) == (first.code, "D1", TOY, "weight")]
    assert shown == expected
    assert {r.entity_type for r in _all() if r.seq in shown} == {"item", "sdv"}


@pytest.mark.requirement("ALCOA-consistent")
def test_the_unfiltered_total_is_the_head_seq_and_equals_a_count(world):
    """The whole trail's total is read from the last seq, not counted (the chain proves seq has
    no gaps); it must equal a count of the rows."""
    filters, _errors = viewer.Filters.parse({})
    shown = viewer.page(filters, 1, 10)
    assert shown.total == len(_all()) == viewer.head_seq()
    filtered, _errors = viewer.Filters.parse({"action": "create"})
    assert viewer.page(filtered, 1, 10).total == len([r for r in _all() if r.action == "create"])
