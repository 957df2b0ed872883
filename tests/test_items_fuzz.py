"""Random input at every item type: a clear message or a value, never a crash, never a partial save."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecrf.auth.services import system_actor
from ecrf.casebook.models import FormInstance, ItemValue
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.forms.items import (
    Choice,
    CtcaeTerm,
    Date,
    DateTime,
    DecimalNumber,
    Integer,
    ItemValueError,
    MultiChoice,
    PartialDate,
    Text,
    Time,
    YesNo,
)
from tests.toy_crf import DEFINITION

TYPES = [Integer(), DecimalNumber(2), Text(50), Date(), PartialDate(), DateTime(), Time(),
         Choice((("A", "a"), ("B", "b"))), MultiChoice((("A", "a"), ("B", "b"))), YesNo(),
         CtcaeTerm()]
raw_text = st.one_of(st.text(max_size=40), st.from_regex(r"[0-9,.\-/: T]{0,20}", fullmatch=True),
                     st.sampled_from(["2024-02-30", "2024-13", "1e5", "NaN", "inf", "-0", "24:00",
                                      "10002272", "Y", "A", "", " "]))


@pytest.mark.requirement("E6-4.3.3")
@settings(max_examples=300, deadline=None)
@given(raw=raw_text, index=st.integers(0, len(TYPES) - 1))
def test_every_item_type_parses_or_explains(raw, index):
    item_type = TYPES[index]
    if item_type.is_empty(raw):
        return
    try:
        value = item_type.parse(raw) if not isinstance(item_type, DateTime) else item_type.parse(
            raw, "Europe/Paris")
    except ItemValueError as e:
        assert str(e)  # a message for the user
        return
    text = item_type.text(value)
    assert isinstance(text, str)
    assert item_type.text(item_type.from_text(text)) == text  # the stored text reads back


keys = [i.key for i in DEFINITION.items]


@pytest.mark.requirement("E6-4.3.3")
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.dictionaries(st.sampled_from(keys), st.one_of(raw_text, st.lists(raw_text,
                                                                                  max_size=3)),
                              max_size=6))
def test_a_random_form_is_saved_whole_or_not_at_all(make, db, values):
    subject = make.subject("01")
    try:
        result = save_form(system_actor(), subject, "toy_vitals", Slot("D1", form_repeat=None),
                           Submitted(values))
        if result.outcome == "invalid":
            assert result.errors and result.instance is None
            assert db.session.scalar(sa.select(sa.func.count()).select_from(FormInstance).where(
                FormInstance.subject_id == subject.id)) == 0
        elif result.outcome == "saved":
            stored = db.session.scalar(sa.select(sa.func.count()).select_from(ItemValue).where(
                ItemValue.form_instance_id == result.instance.id))
            assert stored >= 1
    finally:
        db.session.rollback()


@pytest.mark.parametrize("raw", ["[", "[1, 2]", '{"a": 1}', "[null]"])
def test_a_malformed_list_of_answers_is_explained_not_a_crash(raw):
    with pytest.raises(ItemValueError, match="Choose among the listed answers"):
        MultiChoice((("A", "a"), ("B", "b"))).parse(raw)
