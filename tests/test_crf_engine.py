"""The CRF engine: a toy CRF declared in one module (tests/toy_crf.py) plus one line in the
schedule can be entered, stored, audited and checked with no other change."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa

from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook import services
from ecrf.casebook.models import FormInstance, ItemValue, Submission
from ecrf.casebook.services import Slot, Submitted, save_form
from tests.factories import audit_rows

D1 = Slot("D1")
GOOD = {"weight": "72,5", "height": "180", "fever": "Y", "temperature": "38.9", "onset": "2026-03"}


def save(subject, values=None, **kwargs):
    return save_form(system_actor(), subject, "toy_vitals", kwargs.pop("slot", D1),
                     Submitted(dict(values or GOOD), kwargs.pop("null_flavors", {})), **kwargs)


def stored(instance) -> dict:
    crf = services.definition_for("toy_vitals", instance)
    return {k: services.value_text(crf.item(k), v)
            for k, v in services.instance_values(instance, crf).items() if v is not None}


@pytest.mark.requirement("P11-10e-1", "EMA-1", "EMA-2", "EMA-3", "E6-4.2.2a-ii")
def test_a_complete_entry_is_stored_as_typed_values_and_audited_item_by_item(make, db):
    subject = make.subject("01")
    result = save(subject)
    assert result.outcome == "saved" and result.instance.status == "complete"
    assert stored(result.instance) == {"weight": "72.5", "height": "180", "bmi": "22.4",
                                       "fever": "Y", "temperature": "38.9", "onset": "2026-03"}
    row = db.session.scalar(sa.select(ItemValue).where(ItemValue.item_key == "weight"))
    assert row.value_dec == Decimal("72.5") and row.value_text is None
    items = {r.item: r for r in audit_rows(action="item.create", subject=subject.code)}
    assert set(items) == {"weight", "height", "bmi", "fever", "temperature", "onset"}
    assert items["weight"].value.new_value == "72.5" and items["weight"].form == "toy_vitals"
    assert items["weight"].visit == "D1" and items["bmi"].reason_text == "derived value recalculated"


@pytest.mark.requirement("GDPR-5")
def test_a_partial_date_is_kept_at_the_precision_known_never_zero_filled(make, db):
    result = save(make.subject("01"))
    onset = db.session.scalar(sa.select(ItemValue).where(ItemValue.item_key == "onset"))
    assert onset.value_text == "2026-03" and onset.value_date is None
    assert result.instance is not None


@pytest.mark.requirement("ALCOA-accurate")
@pytest.mark.parametrize("item, raw, message", [
    ("weight", "heavy", "A number is expected"),
    ("weight", "500", "must be between 1 and 400 kg; found 500"),
    ("weight", "72.55", "At most 1 decimal place"),
    ("height", "1.80", "A whole number is expected"),
    ("onset", "2024-13", "The month 13 does not exist"),
    ("fever", "maybe", "Choose one of the listed answers"),
    ("measured_at", "yesterday", "A date and time is expected"),
])
def test_bad_input_gets_a_clear_message_and_saves_nothing(make, db, item, raw, message):
    subject = make.subject("01")
    before = len(audit_rows())
    result = save(subject, {**GOOD, item: raw})
    assert result.outcome == "invalid"
    assert any(message in e for e in result.errors[item])
    assert db.session.scalar(sa.select(sa.func.count()).select_from(FormInstance)) == 0
    assert len(audit_rows()) == before


def test_a_value_for_a_hidden_item_is_refused(make):
    result = save(make.subject("01"), {"weight": "70", "fever": "N", "temperature": "38.9"})
    assert result.outcome == "invalid"
    assert "does not apply" in result.errors["temperature"][0]


@pytest.mark.requirement("ALCOA-accurate")
def test_a_derived_value_is_never_taken_from_input(make):
    result = save(make.subject("01"), {**GOOD, "bmi": "99"})
    assert result.outcome == "invalid" and "computed by the system" in result.errors["bmi"][0]


@pytest.mark.requirement("E6-4.2.1", "ALCOA-accurate")
def test_a_hard_check_blocks_the_save_and_names_the_rule_and_the_value(make):
    result = save(make.subject("01"), {**GOOD, "temperature": "37.2"})
    assert result.outcome == "invalid"
    assert "temperature is 37.2" in result.errors["temperature"][0] and "[TOY-01]" in result.errors[
        "temperature"][0]


@pytest.mark.requirement("A11-12.4", "E6-4.2.1", "ALCOA-accurate")
def test_a_soft_range_asks_for_confirmation_which_is_recorded(make, db):
    subject = make.subject("01")
    first = save(subject, {**GOOD, "weight": "210"})
    assert first.outcome == "needs_confirmation"
    assert first.warnings[0].check_id == "TOY_VITALS-weight-RANGE"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(FormInstance)) == 0
    second = save(subject, {**GOOD, "weight": "210"}, confirmed={"TOY_VITALS-weight-RANGE"})
    assert second.outcome == "saved"
    confirmed = audit_rows(action="check.confirmed")
    assert len(confirmed) == 1 and confirmed[0].field == "TOY_VITALS-weight-RANGE"
    assert "found 210" in confirmed[0].value.new_value


@pytest.mark.requirement("P11-10e-2", "A11-9", "E6-4.2.2a-ii", "E6-4.2.4", "ALCOA-original")
def test_changing_a_saved_value_needs_a_reason_and_recalculates_the_derived_value(make):
    subject = make.subject("01")
    save(subject)
    changed = {**GOOD, "weight": "80"}
    assert save(subject, changed).outcome == "needs_reason"
    result = save(subject, changed, reason=Reason("entry_error", "72.5 was yesterday's weight"))
    assert result.outcome == "saved" and stored(result.instance)["bmi"] == "24.7"
    weight = audit_rows(action="item.update", item="weight")
    assert [(r.value.old_value, r.value.new_value, r.reason_code) for r in weight] == [
        ("72.5", "80", "entry_error")]
    bmi = audit_rows(action="item.update", item="bmi")
    assert bmi[0].value.old_value == "22.4" and bmi[0].reason_text == "derived value recalculated"


@pytest.mark.requirement("A11-9", "E6-4.2.2a-ii", "ALCOA-original")
def test_clearing_a_saved_value_needs_a_reason_too(make):
    subject = make.subject("01")
    save(subject)
    values = {**GOOD, "height": ""}
    assert save(subject, values).outcome == "needs_reason"
    assert save(subject, values, reason=Reason("other", "height not measured")).outcome == "saved"
    row = audit_rows(action="item.update", item="height")[0]
    assert (row.value.old_value, row.value.new_value) == ("180", None)


@pytest.mark.requirement("ALCOA-complete")
def test_a_null_flavor_is_stored_and_audited_as_such_and_satisfies_required(make, db):
    subject = make.subject("01")
    result = save(subject, {"fever": "N"}, null_flavors={"weight": ("UNK", "scale broken")})
    assert result.outcome == "saved" and result.instance.status == "complete"
    row = db.session.scalar(sa.select(ItemValue).where(ItemValue.item_key == "weight"))
    assert (row.null_flavor, row.null_comment, row.value_dec) == ("UNK", "scale broken", None)
    audit = audit_rows(action="item.create", item="weight")[0]
    assert audit.value.new_value == "[UNK] scale broken"


def test_a_value_and_a_null_flavor_together_are_refused(make):
    result = save(make.subject("01"), GOOD, null_flavors={"weight": ("NI", "")})
    assert result.outcome == "invalid" and "either a value" in result.errors["weight"][0]


@pytest.mark.requirement("ALCOA-complete")
def test_an_empty_required_item_leaves_the_form_incomplete(make):
    result = save(make.subject("01"), {"height": "170"})
    assert result.outcome == "saved" and result.instance.status == "incomplete"


def test_a_stale_row_version_is_a_conflict_that_loses_nothing(make):
    subject = make.subject("01")
    first = save(subject)
    seen = first.instance.row_version
    save(subject, {**GOOD, "height": "181"}, reason=Reason("entry_error", "x"), row_version=seen)
    late = save(subject, {**GOOD, "height": "175"}, reason=Reason("entry_error", "y"),
                row_version=seen)
    assert late.outcome == "conflict" and late.current["height"] == "181"
    assert stored(late.instance)["height"] == "181"


def test_a_replayed_submission_token_saves_once(make, db):
    subject = make.subject("01")
    a = save(subject, slot=Slot("D1", form_repeat=None), token="t-1")
    b = save(subject, slot=Slot("D1", form_repeat=None), token="t-1")
    assert (a.outcome, b.outcome) == ("saved", "duplicate") and a.instance.id == b.instance.id
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Submission)) == 1


def test_new_instances_of_a_repeating_form_are_numbered(make):
    subject = make.subject("01")
    repeats = [save(subject, slot=Slot("D1", form_repeat=None)).instance.form_repeat
               for _ in range(3)]
    assert repeats == [1, 2, 3]


@pytest.mark.requirement("ALCOA-complete")
def test_opening_nothing_changes_nothing_and_not_done_needs_a_reason(make, db):
    subject = make.subject("01")
    with pytest.raises(ValueError, match="why"):
        services.mark_not_done(system_actor(), subject, "toy_vitals", D1, " ")
    instance = services.mark_not_done(system_actor(), subject, "toy_vitals", D1,
                                      "patient transferred for the day")
    assert instance.status == "not_done"
    assert audit_rows(action="form.create")[-1].reason_text == "patient transferred for the day"


@pytest.mark.requirement("ALCOA-accurate")
def test_a_cross_form_check_sees_the_rest_of_the_casebook(make, db):
    subject = make.included("01")
    d0 = subject.inclusion_date
    result = save(subject, {**GOOD, "measured_at": f"{d0.replace(year=d0.year - 1)}T10:00"})
    assert result.outcome == "invalid"
    assert f"before inclusion on {d0}" in result.errors["measured_at"][0]
    assert save(subject, {**GOOD, "measured_at": f"{d0}T23:00"}).outcome == "saved"
