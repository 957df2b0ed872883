"""The WTForms form of a CRF, built at run time from its definition.

Each item becomes the field its type asks for, plus a null-flavor choice and comment; parsing and
checks are the service's (so the CLI and loaders share them), the form only carries the input.
The form is built for each request, so its labels are in the user's language.
"""

from __future__ import annotations

from flask_babel import gettext as _
from flask_wtf import FlaskForm
from wtforms import HiddenField, RadioField, SelectField, SelectMultipleField, StringField
from wtforms.widgets import CheckboxInput, ListWidget

from ecrf.forms.choices import choices
from ecrf.forms.definition import CRF, Item
from ecrf.forms.items import NULL_FLAVORS, Choice, YesNo
from ecrf.i18n import tr

NF_SUFFIX, NF_COMMENT_SUFFIX = "__nf", "__nfc"


class MultiCheckboxField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


def item_field(item: Item):
    """The WTForms field for one item (validation is left to the service)."""
    help_text = tr(item.help)
    options = item.type.choices()
    if isinstance(item.type, Choice):  # a codelist of the definition (not the CTCAE dictionary)
        options = [(code, tr(label)) for code, label in options]
    kw = {"description": help_text, "validate_choice": False} if options else {
        "description": help_text}
    label = tr(item.label) + (f" ({item.unit})" if item.unit else "")
    render = {"aria-describedby": f"{item.key}-help"} if item.help else {}
    if item.derived:
        return StringField(label, description=help_text,
                           render_kw={**render, "readonly": True, "tabindex": "-1"})
    if isinstance(item.type, YesNo):
        return RadioField(label, choices=choices(options), **kw)
    if item.type.multiple:
        return MultiCheckboxField(label, choices=choices(options), **kw)
    if isinstance(item.type, Choice) or options:
        return SelectField(label, choices=choices([("", "—")] + options), **kw)
    render["type"] = item.type.input_type
    if item.type.name == "integer":
        render["inputmode"] = "numeric"
    if item.type.name == "decimal":
        render["inputmode"] = "decimal"
    if item.type.name == "partial_date":
        render["placeholder"] = _("YYYY, YYYY-MM or YYYY-MM-DD")
    return StringField(label, render_kw=render, description=help_text)


def form_class(crf: CRF) -> type[FlaskForm]:
    """A FlaskForm class for this CRF version (CSRF included), labelled in the user's language."""
    fields = {
        "row_version": HiddenField(),
        "submission_token": HiddenField(),
    }
    for item in crf.items:
        fields[item.key] = item_field(item)
        if not item.derived:
            label = tr(item.label)
            fields[item.key + NF_SUFFIX] = SelectField(
                _("%(label)s: missing because", label=label), validate_choice=False,
                choices=choices([("", "—")] + list(NULL_FLAVORS.items())))
            fields[item.key + NF_COMMENT_SUFFIX] = StringField(_("%(label)s: comment", label=label))
    return type(f"{crf.key.title().replace('_', '')}Form", (FlaskForm,), fields)
