"""Concomitant treatments: strong CYP3A4 inhibitors flagged, HS drugs for HS treatments only,
and a stop after the start."""

from __future__ import annotations

import pytest

from ecrf.casebook import services
from ecrf.casebook.services import Submitted
from ecrf.forms.crfs import concomitant
from tests.crfs.checking import findings

pytestmark = pytest.mark.requirement("E6-4.3.4")


def test_voriconazole_is_flagged_as_a_strong_cyp3a4_inhibitor():
    f = findings(concomitant.DEFINITION, {"kind": "OTHER", "drug_name": "Voriconazole",
                                          "start": "2026-03-02"})
    assert f["CM-01"].severity == "soft" and "check the ruxolitinib dose" in f["CM-01"].message
    assert "CM-01" not in findings(concomitant.DEFINITION, {
        "kind": "OTHER", "drug_name": "Voriconazole", "start": "2026-03-02", "cyp3a4": "Y"})


def test_a_hs_treatment_names_the_drug_and_stops_after_it_starts():
    f = findings(concomitant.DEFINITION, {"kind": "HS", "hs_drug": "ETOPOSIDE",
                                          "drug_name": "Etoposide", "start": "2026-03-04",
                                          "stop": "2026-03-03"})
    assert "CM-02" in f


def test_the_hs_drug_list_applies_only_to_hs_treatments():
    _, errors = services.parse(concomitant.DEFINITION, Submitted(
        {"kind": "OTHER", "hs_drug": "ETOPOSIDE", "drug_name": "x", "start": "2026"}), "UTC")
    assert "does not apply" in errors["hs_drug"][0]
