"""Laboratory and HS activity: markers checked against each other and plausible ranges."""

from __future__ import annotations

from ecrf.casebook import services
from ecrf.casebook.services import Submitted
from ecrf.forms.crfs import labs


def findings(definition, values):
    parsed, errors = services.parse(definition, Submitted(values), "Europe/Paris")
    assert not errors, errors
    derived = services.derive(definition, parsed)
    return {f.check_id: f.message for f in services.run_checks(definition, derived)}


def test_neutrophils_cannot_exceed_leukocytes():
    assert "LAB-01" in findings(labs.DEFINITION, {"wbc": "2,1", "anc": "3.4"})
    assert "LAB-01" not in findings(labs.DEFINITION, {"wbc": "2.1", "anc": "1.4"})


def test_a_ferritin_above_100000_asks_for_confirmation():
    assert findings(labs.DEFINITION, {"ferritin": "250000"})["LABS-ferritin-RANGE"]
