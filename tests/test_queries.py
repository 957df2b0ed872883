"""Data clarification: a monitor or data manager raises a query on an item of a saved form, the
site's investigator answers it (in words, or by correcting the value), the monitor closes it or
re-opens it. A soft edit check that fires opens a system query, which closes itself once a save no
longer fires it. Every step is a message with its author and time, and an audit record."""

from __future__ import annotations

import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from ecrf.access.grants import Access
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import unit_of_work
from ecrf.auth.services import system_actor, system_user
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.extensions import db
from ecrf.review import queries
from ecrf.review.models import Query
from tests.factories import audit_rows

FORM = "/subjects/{code}/visits/D1/1/forms/toy_vitals/1"
RANGE = "TOY_VITALS-weight-RANGE"  # the soft range of the toy CRF's weight (35-200 kg)


def _actor(user, permission: str, site):
    return Access.for_user(user, permission).actor(site.id)


@pytest.fixture
def trial(make):
    """Site 01 with a subject whose toy form is saved, its people, and site 02 with its own."""
    site, other = make.site("01"), make.site("02")
    subject, other_subject = make.subject(site), make.subject(other)
    people = SimpleNamespace(
        investigator=make.user("inv01", role="investigator", site=site),
        monitor=make.user("mon01", role="monitor", site=site),
        data_manager=make.user("dm", role="data_manager"),
        auditor=make.user("aud", role="auditor"),
        investigator02=make.user("inv02", role="investigator", site=other),
        monitor02=make.user("mon02", role="monitor", site=other),
    )
    t = SimpleNamespace(site=site, other=other, subject=subject, other_subject=other_subject,
                        **vars(people))
    t.enter = _actor(t.investigator, "crf.enter", site)
    t.inv = _actor(t.investigator, "query.answer", site)
    t.mon = _actor(t.monitor, "query.manage", site)
    t.dm = _actor(t.data_manager, "query.manage", site)
    t.form = _save(t.enter, subject, {"weight": "70", "height": "170", "fever": "N"}).instance
    t.other_form = _save(_actor(t.investigator02, "crf.enter", other), other_subject,
                         {"weight": "70", "fever": "N"}).instance
    return t


def _save(actor, subject, values, **kwargs):
    result = save_form(actor, subject, "toy_vitals", Slot("D1"), Submitted(values), **kwargs)
    assert result.ok, (result.outcome, result.errors)
    return result


def _in_state(t, state: str) -> Query:
    """A query on the weight of site 01's form, brought to ``state`` by the legal steps."""
    query = queries.raise_query(t.mon, t.form, "weight", "Weight 70 kg: please check the source.")
    if state in ("answered", "closed"):
        queries.answer(t.inv, query, "Checked: 70 kg in the nursing chart.")
    if state == "closed":
        queries.close(t.mon, query, "Thank you.")
    if state == "cancelled":
        queries.cancel(t.mon, query, "Raised on the wrong subject.")
    assert query.state == state
    return query


def _login(login, user):
    assert login(user.username).status_code == 302


def _fresh(query: Query) -> Query:
    """The query as the database has it now (a request wrote it in its own session)."""
    db.session.refresh(query)
    return query


def _raised_days_ago(query: Query, days: int) -> None:
    with unit_of_work(system_actor(), Reason.system("test: raised earlier")):
        query.created_at -= timedelta(days=days)


# --- the state machine ------------------------------------------------------------------------


@pytest.mark.requirement("E6-4.2.2a-iii")
def test_a_monitor_raises_a_query_on_an_item_and_it_is_open_with_its_first_message(trial):
    query = queries.raise_query(trial.mon, trial.form, "weight", "Weight: please check.")
    assert (query.state, query.origin, query.item_key, query.form_instance_id) == (
        "open", "manual", "weight", trial.form.id)
    assert [(m.action, m.text, m.author_id) for m in query.messages] == [
        ("raise", "Weight: please check.", trial.monitor.id)]
    created = audit_rows(action="query.create", entity_id=str(query.id))
    assert {(r.field, r.username, r.role, r.item) for r in created} >= {
        ("state", "mon01", "monitor", "weight"), ("origin", "mon01", "monitor", "weight")}
    assert audit_rows(action="query_message.create", field="action")[-1].username == "mon01"


def test_a_query_on_the_whole_form_has_no_item(trial):
    query = queries.raise_query(trial.dm, trial.form, None, "Is this the D1 form of the subject?")
    assert query.item_key is None and query.state == "open"


def test_a_query_needs_a_text_and_an_item_of_the_form(trial):
    with pytest.raises(queries.QueryError, match="Write the text"):
        queries.raise_query(trial.mon, trial.form, "weight", "   ")
    with pytest.raises(queries.QueryError, match="no item 'shoe_size'|no item shoe_size"):
        queries.raise_query(trial.mon, trial.form, "shoe_size", "?")
    assert queries.raise_query(trial.mon, trial.form, "height", "?").item_key == "height"


#: (state, step) -> the state after it; a step not listed is refused in that state
LEGAL = {
    ("open", "answer"): "answered",
    ("open", "cancel"): "cancelled",
    ("answered", "close"): "closed",
    ("answered", "reopen"): "open",
    ("closed", "reopen"): "open",
}
STATES = ("open", "answered", "closed", "cancelled")


@pytest.mark.requirement("P11-10f")
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("step", list(queries.STEPS))
def test_each_step_is_taken_only_from_the_states_that_allow_it(trial, state, step):
    query = _in_state(trial, state)
    actor = trial.inv if step == "answer" else trial.mon
    before = len(query.messages)
    steps = len(audit_rows(action=f"query.{step}", entity_id=str(query.id)))
    if (state, step) in LEGAL:
        queries.take_step(actor, query, step, "text of the step")
        assert query.state == LEGAL[state, step]
        assert query.messages[-1].action == step and len(query.messages) == before + 1
        rows = audit_rows(action="query.update", entity_id=str(query.id), field="state")
        assert (rows[-1].value.old_value, rows[-1].value.new_value) == (state, LEGAL[state, step])
        assert len(audit_rows(action=f"query.{step}", entity_id=str(query.id))) == steps + 1
    else:
        with pytest.raises(queries.QueryError) as refused:
            queries.take_step(actor, query, step, "text of the step")
        assert refused.value.status == 409
        assert f"Query #{query.id}" in str(refused.value)
        assert query.state == state and len(query.messages) == before
        assert len(audit_rows(action=f"query.{step}", entity_id=str(query.id))) == steps


@pytest.mark.requirement("P11-10f")
def test_closing_an_open_query_that_has_no_answer_is_refused_with_a_clear_message(trial):
    query = _in_state(trial, "open")
    with pytest.raises(queries.QueryError, match="has no answer yet: it can be closed once "
                                                 "answered, or cancelled"):
        queries.close(trial.mon, query)


@pytest.mark.requirement("P11-10f")
def test_answering_a_closed_query_is_refused(trial):
    query = _in_state(trial, "closed")
    with pytest.raises(queries.QueryError, match="is closed: only an open query can be answered"):
        queries.answer(trial.inv, query, "Late answer")


def test_a_re_opened_query_is_answered_again_and_every_message_is_kept(trial):
    query = _in_state(trial, "answered")
    queries.reopen(trial.mon, query, "The chart says 76 kg.")
    queries.answer(trial.inv, query, "Corrected chart: 70 kg on D1.")
    queries.close(trial.dm, query)
    assert [(m.action, m.author_id) for m in query.messages] == [
        ("raise", trial.monitor.id), ("answer", trial.investigator.id),
        ("reopen", trial.monitor.id), ("answer", trial.investigator.id),
        ("close", trial.data_manager.id)]
    assert all(m.created_at is not None for m in query.messages)
    steps = [r.action for r in audit_rows(entity_type="query", entity_id=str(query.id))
             if r.action.startswith("query.") and r.action not in ("query.create", "query.update")]
    assert steps == ["query.answer", "query.reopen", "query.answer", "query.close"]


def test_a_step_on_a_query_that_changed_since_the_page_was_read_is_refused(trial):
    query = _in_state(trial, "open")
    seen = query.row_version
    queries.answer(trial.inv, query, "Checked.")
    with pytest.raises(queries.QueryError, match="changed since you opened it"):
        queries.close(trial.mon, query, row_version=seen)
    queries.close(trial.mon, query, row_version=query.row_version)  # control: the current one
    assert query.state == "closed"


def test_answer_cancel_and_reopen_need_a_text_close_does_not(trial):
    query = _in_state(trial, "open")
    for step in ("answer", "cancel"):
        with pytest.raises(queries.QueryError, match="Write the text") as refused:
            queries.take_step(trial.inv if step == "answer" else trial.mon, query, step, " ")
        assert refused.value.status == 400
    queries.answer(trial.inv, query, "Checked.")
    with pytest.raises(queries.QueryError, match="Write the text"):
        queries.reopen(trial.mon, query, "")
    queries.close(trial.mon, query, "")
    assert query.state == "closed" and query.messages[-1].text == ""


def test_queries_go_on_while_the_data_are_frozen_not_once_they_are_locked(trial, login, client):
    from ecrf.review.closure import Scope, change

    query = _in_state(trial, "open")
    closer = _actor(trial.data_manager, "closure.freeze", trial.site)
    change(closer, Scope.of_subject(trial.subject), "freeze")
    queries.answer(trial.inv, query, "Answered while frozen.")  # review goes on
    change(_actor(trial.data_manager, "closure.lock", trial.site), Scope.of_subject(trial.subject),
           "lock")
    with pytest.raises(queries.QueryError, match="is locked: nothing can change"):
        queries.close(trial.mon, query)
    with pytest.raises(queries.QueryError, match="is locked"):
        queries.raise_query(trial.mon, trial.form, "weight", "Too late?")
    assert query.state == "answered"
    _login(login, trial.monitor)
    page = client.get(f"/queries/{query.id}").get_data(as_text=True)
    assert "is locked" in page and "<textarea" not in page


# --- who may do what --------------------------------------------------------------------------


def test_a_monitor_cannot_answer_a_query(trial, login, client):
    query = _in_state(trial, "open")
    with pytest.raises(queries.QueryError, match="Only an investigator") as refused:
        queries.answer(trial.mon, query, "I answer myself.")
    assert refused.value.status == 403
    _login(login, trial.monitor)
    response = client.post(f"/queries/{query.id}/answer", data={"text": "I answer myself."})
    assert response.status_code == 403 and _fresh(query).state == "open"
    assert [r.field for r in audit_rows(action="access.denied")] == ["queries.answer"]
    assert f'action="/queries/{query.id}/answer"' not in client.get(
        f"/queries/{query.id}").get_data(as_text=True)


def test_an_investigator_answers_on_the_query_page(trial, login, client):
    query = _in_state(trial, "open")
    _login(login, trial.investigator)
    page = client.get(f"/queries/{query.id}").get_data(as_text=True)
    assert f'action="/queries/{query.id}/answer"' in page
    assert f'action="/queries/{query.id}/close"' not in page
    response = client.post(f"/queries/{query.id}/answer", data={"text": "70 kg in the chart."})
    assert response.status_code == 302 and response.headers["Location"].endswith(
        f"/queries/{query.id}")
    assert _fresh(query).state == "answered"
    assert query.messages[-1].author_id == trial.investigator.id
    assert audit_rows(action="query.answer")[-1].username == "inv01"


@pytest.mark.parametrize("step", ["close", "cancel", "reopen"])
def test_an_investigator_cannot_close_cancel_or_reopen_a_query(trial, login, client, step):
    query = _in_state(trial, "answered" if step != "cancel" else "open")
    state = query.state
    with pytest.raises(queries.QueryError, match="Only a monitor or a data manager"):
        queries.take_step(trial.inv, query, step, "myself")
    _login(login, trial.investigator)
    response = client.post(f"/queries/{query.id}/{step}", data={"text": "myself"})
    assert response.status_code == 403 and _fresh(query).state == state
    # control: the monitor of the site may
    client.post("/auth/logout")
    _login(login, trial.monitor)
    assert client.post(f"/queries/{query.id}/{step}", data={"text": "ok"}).status_code == 302
    assert _fresh(query).state == LEGAL[state, step]


def test_an_investigator_cannot_raise_a_query(trial, login, client):
    with pytest.raises(queries.QueryError, match="Only a monitor or a data manager"):
        queries.raise_query(trial.inv, trial.form, "weight", "?")
    _login(login, trial.investigator)
    response = client.post(f"/queries/forms/{trial.form.id}",
                           data={"item_key": "weight", "text": "?"})
    assert response.status_code == 403
    assert "Raise a query" not in client.get(FORM.format(code=trial.subject.code)).get_data(
        as_text=True)
    assert not audit_rows(action="query.create")


def test_a_monitor_raises_a_query_from_the_form_page(trial, login, client):
    _login(login, trial.monitor)
    page = client.get(FORM.format(code=trial.subject.code) + "?raise=weight").get_data(as_text=True)
    assert 'id="raise-query"' in page and '<option value="weight" selected>' in page
    response = client.post(f"/queries/forms/{trial.form.id}",
                           data={"item_key": "weight", "text": "Please check the weight."})
    assert response.status_code == 302
    assert response.headers["Location"].endswith(FORM.format(code=trial.subject.code)
                                                 + "#item-weight")
    query = _only_query()
    assert (query.item_key, query.raised_by_id, query.messages[0].text) == (
        "weight", trial.monitor.id, "Please check the weight.")
    refused = client.post(f"/queries/forms/{trial.form.id}", data={"item_key": "weight", "text": ""},
                          follow_redirects=True)
    assert "Write the text of the message." in refused.get_data(as_text=True)


def _only_query() -> Query:
    return db.session.scalars(sa.select(Query)).one()


def test_an_auditor_reads_queries_but_takes_no_step(trial, login, client):
    query = _in_state(trial, "answered")
    _login(login, trial.auditor)
    page = client.get(f"/queries/{query.id}").get_data(as_text=True)
    assert "Checked: 70 kg in the nursing chart." in page and "<textarea" not in page
    assert client.post(f"/queries/{query.id}/close", data={"text": ""}).status_code == 403
    assert _fresh(query).state == "answered"


def test_a_data_manager_manages_the_queries_of_every_site(trial, login, client):
    query = queries.raise_query(_actor(trial.data_manager, "query.manage", trial.other),
                                trial.other_form, "weight", "Site 02: check.")
    _login(login, trial.data_manager)
    assert client.get(f"/queries/{query.id}").status_code == 200
    assert client.post(f"/queries/{query.id}/cancel", data={"text": "dup"}).status_code == 302
    assert _fresh(query).state == "cancelled"


# --- each site sees its own -------------------------------------------------------------------


def test_a_monitor_of_site_01_gets_404_on_a_site_02_query(trial, login, client):
    theirs = queries.raise_query(_actor(trial.monitor02, "query.manage", trial.other),
                                 trial.other_form, "weight", "Site 02 only.")
    ours = _in_state(trial, "open")
    _login(login, trial.monitor)
    assert client.get(f"/queries/{ours.id}").status_code == 200  # control
    for response in (client.get(f"/queries/{theirs.id}"),
                     client.post(f"/queries/{theirs.id}/cancel", data={"text": "x"}),
                     client.post(f"/queries/forms/{trial.other_form.id}",
                                 data={"item_key": "weight", "text": "x"})):
        assert response.status_code == 404
    assert _fresh(theirs).state == "open" and len(audit_rows(action="access.denied")) == 3
    listing = client.get("/queries/").get_data(as_text=True)
    assert f"Query #{ours.id}<" in listing and trial.other_subject.code not in listing
    with pytest.raises(queries.QueryError, match="another site"):
        queries.cancel(trial.mon, theirs, "not mine")


def test_an_investigator_sees_only_the_queries_of_their_site(trial, login, client):
    theirs = queries.raise_query(_actor(trial.monitor02, "query.manage", trial.other),
                                 trial.other_form, "weight", "Site 02 only.")
    _login(login, trial.investigator)
    assert client.get(f"/queries/{theirs.id}").status_code == 404
    assert client.post(f"/queries/{theirs.id}/answer", data={"text": "x"}).status_code == 404
    with pytest.raises(queries.QueryError, match="another site"):
        queries.answer(trial.inv, theirs, "not mine")
    assert _fresh(theirs).state == "open"
    client.post("/auth/logout")
    _login(login, trial.investigator02)  # control: the investigator of site 02 answers it
    assert client.post(f"/queries/{theirs.id}/answer", data={"text": "ok"}).status_code == 302
    assert _fresh(theirs).state == "answered"


# --- system queries from soft edit checks ----------------------------------------------------


def _system_queries(instance) -> list[Query]:
    return list(db.session.scalars(sa.select(Query).where(
        Query.form_instance_id == instance.id, Query.origin == "system").order_by(Query.id)))


@pytest.mark.requirement("ALCOA-accurate")
def test_a_confirmed_soft_check_opens_a_system_query_on_its_item(trial):
    assert _system_queries(trial.form) == []  # control: 70 kg fires nothing
    result = _save(trial.enter, trial.subject, {"weight": "210", "height": "170", "fever": "N"},
                   reason=Reason("entry_error", "typed from the chart"), confirmed={RANGE})
    finding = next(w for w in result.warnings if w.check_id == RANGE)
    [query] = _system_queries(trial.form)
    assert (query.state, query.check_id, query.item_key) == ("open", RANGE, "weight")
    assert query.messages[0].text == str(finding.message)
    assert query.messages[0].text.startswith("Weight is usually between 35 and 200 kg; found 210")
    assert query.raised_by_id == query.messages[0].author_id == system_user().id
    # written in the save's own transaction, under the user whose save fired the check
    [item_row] = audit_rows(action="item.update", item="weight")
    created = audit_rows(action="query.create", entity_id=str(query.id))
    assert {r.request_id for r in created} == {item_row.request_id}
    assert {(r.username, r.reason_code) for r in created} == {("inv01", "system")}


def test_a_system_query_is_not_opened_twice_while_its_check_still_fires(trial):
    values = {"weight": "210", "height": "170", "fever": "N"}
    _save(trial.enter, trial.subject, values, reason=Reason("entry_error", "x"), confirmed={RANGE})
    _save(trial.enter, trial.subject, {**values, "height": "171"},
          reason=Reason("entry_error", "height"), confirmed={RANGE})
    [query] = _system_queries(trial.form)
    queries.answer(trial.inv, query, "210 kg is right.")  # answered is not settled either
    _save(trial.enter, trial.subject, {**values, "height": "172"},
          reason=Reason("entry_error", "height again"), confirmed={RANGE})
    assert [q.state for q in _system_queries(trial.form)] == ["answered"]


def test_a_system_query_closes_itself_when_a_later_save_no_longer_fires_the_check(trial):
    values = {"weight": "210", "height": "170", "fever": "N"}
    _save(trial.enter, trial.subject, values, reason=Reason("entry_error", "x"), confirmed={RANGE})
    [query] = _system_queries(trial.form)
    _save(trial.enter, trial.subject, {**values, "height": "171"},
          reason=Reason("entry_error", "height"), confirmed={RANGE})
    assert query.state == "open"  # control: still firing, still open
    _save(trial.enter, trial.subject, {**values, "weight": "72"},
          reason=Reason("entry_error", "210 was the bed weight"))
    assert query.state == "closed"
    last = query.messages[-1]
    assert (last.action, last.author_id) == ("auto_close", system_user().id)
    [closing] = audit_rows(action="query.auto_close", entity_id=str(query.id))
    assert (closing.username, closing.reason_code) == ("inv01", "system")


def test_a_system_query_a_monitor_closed_is_raised_again_only_for_another_value(trial):
    values = {"weight": "210", "height": "170", "fever": "N"}
    _save(trial.enter, trial.subject, values, reason=Reason("entry_error", "x"), confirmed={RANGE})
    [query] = _system_queries(trial.form)
    queries.answer(trial.inv, query, "210 kg is right.")
    queries.close(trial.mon, query, "Accepted.")
    _save(trial.enter, trial.subject, {**values, "height": "171"},
          reason=Reason("entry_error", "height"), confirmed={RANGE})
    assert [q.state for q in _system_queries(trial.form)] == ["closed"]  # the value was accepted
    _save(trial.enter, trial.subject, {**values, "weight": "220"},
          reason=Reason("entry_error", "re-weighed"), confirmed={RANGE})
    assert [q.state for q in _system_queries(trial.form)] == ["closed", "open"]


# --- a correction in answer to a query --------------------------------------------------------


@pytest.mark.requirement("EMA-4", "E6-4.2.4", "ALCOA-traceable")
def test_a_value_corrected_in_answer_to_a_query_names_the_query_in_its_audit_row(trial):
    query = queries.raise_query(trial.mon, trial.form, "weight", "70 kg? The chart says 72.5.")
    _save(trial.enter, trial.subject, {"weight": "72.5", "height": "170", "fever": "N"},
          reason=Reason("entry_error", "read from the wrong line"), query=query)
    [row] = audit_rows(action="item.update", item="weight")
    assert row.reason_code == "query_response"
    assert row.reason_text == f"Query #{query.id}: read from the wrong line"
    assert query.state == "answered"
    last = query.messages[-1]
    assert (last.action, last.author_id) == ("answer", trial.investigator.id)
    assert last.text == ("Corrected in the form: Weight: 70 -> 72.5. "
                         "Reason: read from the wrong line")
    assert audit_rows(action="query.answer")[-1].request_id == row.request_id


@pytest.mark.requirement("EMA-4")
def test_a_correction_without_a_query_keeps_its_own_reason(trial):
    query = queries.raise_query(trial.mon, trial.form, "weight", "Check the weight.")
    _save(trial.enter, trial.subject, {"weight": "72.5", "height": "170", "fever": "N"},
          reason=Reason("entry_error", "typo"))
    [row] = audit_rows(action="item.update", item="weight")
    assert (row.reason_code, row.reason_text) == ("entry_error", "typo")
    assert query.state == "open"


def test_a_correction_cannot_answer_a_query_that_is_not_open_or_not_on_the_form(trial):
    closed = _in_state(trial, "closed")
    theirs = queries.raise_query(_actor(trial.monitor02, "query.manage", trial.other),
                                 trial.other_form, "weight", "Site 02")
    values = {"weight": "72.5", "height": "170", "fever": "N"}
    for query, why in ((closed, "only an open query can be answered"),
                       (theirs, "is not on this form")):
        result = save_form(trial.enter, trial.subject, "toy_vitals", Slot("D1"),
                           Submitted(values), reason=Reason("entry_error", "x"), query=query)
        assert result.outcome == "invalid" and why in result.errors["_form"][0]
    assert not audit_rows(action="item.update")


@pytest.mark.requirement("EMA-4")
def test_the_investigator_corrects_the_value_from_the_query_page(trial, login, client):
    query = queries.raise_query(trial.mon, trial.form, "weight", "70 kg? The chart says 72.5.")
    _login(login, trial.investigator)
    page = client.get(f"/queries/{query.id}").get_data(as_text=True)
    link = re.search(r'<a id="correct" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert f"?query={query.id}" in link
    form_page = client.get(link).get_data(as_text=True)
    assert f'name="query_id" value="{query.id}"' in form_page
    assert '<option value="query_response" selected>' in form_page
    token = re.search(r'name="submission_token" type="hidden" value="([^"]+)"', form_page).group(1)
    version = re.search(r'name="row_version" type="hidden" value="([^"]*)"', form_page).group(1)
    response = client.post(FORM.format(code=trial.subject.code), data={
        "weight": "72.5", "height": "170", "fever": "N", "query_id": str(query.id),
        "reason_code": "query_response", "reason_text": "wrong line of the chart",
        "submission_token": token, "row_version": version})
    assert response.status_code == 302 and response.headers["Location"].endswith(
        f"/queries/{query.id}")
    assert _fresh(query).state == "answered"
    [row] = audit_rows(action="item.update", item="weight")
    assert (row.reason_code, row.reason_text) == (
        "query_response", f"Query #{query.id}: wrong line of the chart")
    assert "Weight: 70 -&gt; 72.5" in client.get(f"/queries/{query.id}").get_data(as_text=True)


# --- lists, ages and counts -------------------------------------------------------------------


def test_the_list_filters_by_site_subject_form_state_and_age(trial, login, client):
    old = _in_state(trial, "open")
    _raised_days_ago(old, 10)
    answered = _in_state(trial, "answered")
    recent = queries.raise_query(trial.dm, trial.form, None, "Whole form?")
    theirs = queries.raise_query(_actor(trial.data_manager, "query.manage", trial.other),
                                 trial.other_form, "weight", "Site 02")
    _login(login, trial.data_manager)

    def ids(**args) -> set[int]:
        page = client.get("/queries/", query_string=args).get_data(as_text=True)
        return {int(n) for n in re.findall(r'href="/queries/(\d+)"', page)}

    everyone = {old.id, answered.id, recent.id, theirs.id}
    assert ids() == everyone
    assert ids(site=trial.other.id) == {theirs.id}
    assert ids(subject=trial.subject.code) == everyone - {theirs.id}
    assert ids(crf="toy_vitals") == everyone and ids(crf="labs") == set()
    assert ids(state="open") == {old.id, recent.id, theirs.id}
    assert ids(state="answered") == {answered.id}
    assert ids(state="unresolved") == everyone
    assert ids(age=">7") == ids(age="8-14") == {old.id}
    assert ids(age=">14") == set() and ids(age="0-7") == everyone - {old.id}
    assert ids(form=trial.form.id, item="weight") == {old.id, answered.id}
    page = client.get("/queries/", query_string={"state": "open"}).get_data(as_text=True)
    row = re.search(rf'href="/queries/{old.id}".*?</tr>', page, re.S).group(0)
    assert "<td>10</td>" in row  # its age in days


def test_the_list_is_paginated_on_the_server_by_50(trial, login, client):
    made = [queries.raise_query(trial.mon, trial.form, "height", f"Question {n}").id
            for n in range(51)]
    _login(login, trial.monitor)
    first = client.get("/queries/?state=open").get_data(as_text=True)
    second = client.get("/queries/?state=open&page=2").get_data(as_text=True)
    on_first = [int(n) for n in re.findall(r'href="/queries/(\d+)"', first)]
    on_second = [int(n) for n in re.findall(r'href="/queries/(\d+)"', second)]
    assert on_first == made[:50] and on_second == made[50:]
    assert "Page 1 of 2 (51)" in first and "state=open" in re.search(
        r'<nav class="pager".*?</nav>', first, re.S).group(0)


def test_the_casebook_grid_and_the_form_page_count_the_open_queries(trial, login, client):
    _login(login, trial.monitor)
    grid = f"/subjects/{trial.subject.code}/casebook"
    assert "open quer" not in client.get(grid).get_data(as_text=True)  # control: none yet
    _in_state(trial, "open")
    _in_state(trial, "open")
    _in_state(trial, "answered")
    _in_state(trial, "closed")  # settled: not counted
    queries.raise_query(trial.mon, trial.form, None, "Whole form?")
    page = client.get(grid).get_data(as_text=True)
    assert f'href="/queries/?form={trial.form.id}">3 open queries · 1 answered query</a>' in page
    form = client.get(FORM.format(code=trial.subject.code)).get_data(as_text=True)
    marker = re.search(r'<a class="query-marker" href="/queries/\?form=\d+&amp;item=weight">(.*?)'
                       r'</a>', form, re.S).group(1)
    assert "2 open queries · 1 answered query" in marker
    assert "Queries on the whole form: 1 open, 0 answered" in form
    assert "item=height" not in form


def test_the_counts_a_dashboard_reads(trial, later):
    _in_state(trial, "open")
    later(days=20)
    _in_state(trial, "answered")
    _in_state(trial, "closed")
    queries.raise_query(_actor(trial.data_manager, "query.manage", trial.other),
                        trial.other_form, "weight", "Site 02")
    assert queries.counts_by_state() == {"open": 2, "answered": 1, "closed": 1, "cancelled": 0}
    assert queries.open_counts() == {trial.site.id: 2, trial.other.id: 1}
    assert queries.open_counts(states=("open",)) == {trial.site.id: 1, trial.other.id: 1}
    assert queries.open_counts({trial.other.id}) == {trial.other.id: 1}
    assert queries.open_by_age() == {"0-7": 2, "8-14": 0, "15-30": 1, ">30": 0}
    assert queries.open_by_age({trial.other.id}) == {"0-7": 1, "8-14": 0, "15-30": 0, ">30": 0}
    later(days=11)
    assert queries.open_by_age(states=("open",)) == {"0-7": 0, "8-14": 1, "15-30": 0, ">30": 1}
