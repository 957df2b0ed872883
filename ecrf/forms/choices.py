"""WTForms select options from (value, label) pairs."""

from wtforms.fields.choices import SelectChoice


def choices(pairs) -> list[SelectChoice]:
    return [SelectChoice(str(value), label) for value, label in pairs]
