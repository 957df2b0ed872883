"""Organ support periods: a support stops after it starts."""

from __future__ import annotations

from ecrf.casebook import services
from ecrf.casebook.services import Submitted
from ecrf.forms.crfs import organ_support


def findings(definition, values):
    parsed, errors = services.parse(definition, Submitted(values), "Europe/Paris")
    assert not errors, errors
    return {f.check_id: f for f in services.run_checks(definition, services.derive(definition,
                                                                                     parsed))}


def test_an_organ_support_stops_after_it_starts():
    f = findings(organ_support.DEFINITION, {"support": "RRT", "started_at": "2026-03-02T10:00",
                                            "stopped_at": "2026-03-02T09:00"})
    assert "OS-01" in f
