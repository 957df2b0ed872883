"""Protocol deviations: category and description recorded (the system raises the eligibility
ones itself: tests/test_protocol_rules.py)."""

from __future__ import annotations

import pytest

from ecrf.casebook import services
from ecrf.casebook.services import Submitted
from ecrf.forms.crfs import deviation

pytestmark = pytest.mark.requirement("E6-4.3.4")


def test_a_deviation_records_its_category_and_description():
    values, errors = services.parse(deviation.DEFINITION, Submitted(
        {"deviation_date": "2026-03-02", "category": "ELIGIBILITY",
         "description": "Age corrected after inclusion"}), "UTC")
    assert not errors and services.form_status(deviation.DEFINITION, values).value == "complete"
