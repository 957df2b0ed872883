"""One module per CRF, each declaring ``DEFINITION`` (see ecrf.forms.definition)."""
