"""The form that creates an API token (not a CRF)."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import IntegerField, StringField
from wtforms.validators import DataRequired, Length, NumberRange


class TokenForm(FlaskForm):
    name = StringField(_l("Name (what the token is for)"), validators=[DataRequired(), Length(max=64)])
    days = IntegerField(_l("Valid for (days)"), validators=[DataRequired(), NumberRange(min=1)])


class ConfirmForm(FlaskForm):
    """A POST button: the CSRF token only."""
