"""Laboratory and HS activity: markers checked against each other and plausible ranges."""

from __future__ import annotations

import pytest

from ecrf.forms.crfs import labs
from tests.crfs.checking import findings

pytestmark = pytest.mark.requirement("E6-4.3.4")


def test_neutrophils_cannot_exceed_leukocytes():
    assert "LAB-01" in findings(labs.DEFINITION, {"wbc": "2,1", "anc": "3.4"})
    assert "LAB-01" not in findings(labs.DEFINITION, {"wbc": "2.1", "anc": "1.4"})


def test_a_ferritin_above_100000_asks_for_confirmation():
    assert findings(labs.DEFINITION, {"ferritin": "250000"})["LABS-ferritin-RANGE"]
