"""Organ support periods: a support stops after it starts."""

from __future__ import annotations

import pytest

from ecrf.forms.crfs import organ_support
from tests.crfs.checking import findings

pytestmark = pytest.mark.requirement("E6-4.3.4")


def test_an_organ_support_stops_after_it_starts():
    f = findings(organ_support.DEFINITION, {"support": "RRT", "started_at": "2026-03-02T10:00",
                                            "stopped_at": "2026-03-02T09:00"})
    assert "OS-01" in f
