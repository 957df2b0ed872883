"""Run a CRF's parsing, derivations and edit checks on typed values, as the save service does."""

from __future__ import annotations

from ecrf.casebook import services
from ecrf.casebook.services import Submitted


def findings(definition, values: dict, context=None) -> dict:
    """The edit-check findings by check id (the values must parse)."""
    parsed, errors = services.parse(definition, Submitted(values), "Europe/Paris")
    assert not errors, errors
    derived = services.derive(definition, parsed, context)
    return {f.check_id: f for f in services.run_checks(definition, derived, context)}
