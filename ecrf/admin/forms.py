"""Account and site administration forms."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import DateTimeLocalField, EmailField, SelectField, StringField
from wtforms.validators import DataRequired, Email, Length, Optional, Regexp

from ecrf.access.roles import ROLES
from ecrf.forms.choices import choices
from ecrf.forms.reason import ReasonFields


class UserForm(FlaskForm):
    username = StringField(_l("Username"), validators=[
        DataRequired(), Length(max=64),
        Regexp(r"^[A-Za-z0-9._-]+$", message=_l("Letters, digits, '.', '-' or '_' only."))])
    full_name = StringField(_l("Full name"), validators=[DataRequired(), Length(max=128)])
    email = EmailField(_l("E-mail"), validators=[Optional(), Email(check_deliverability=False),
                                                 Length(max=254)])


class ReasonForm(ReasonFields, FlaskForm):
    """An administrative action that needs a reason (deactivate, unlock, reset, revoke)."""


class GrantForm(FlaskForm):
    role = SelectField(_l("Role"), choices=choices((r.name, r.title) for r in ROLES.values()),
                       validators=[DataRequired()])
    site = SelectField(_l("Site (site roles only)"), choices=[], validate_choice=False)
    valid_from = DateTimeLocalField(_l("Valid from (UTC)"), validators=[Optional()],
                                    format="%Y-%m-%dT%H:%M")
    valid_to = DateTimeLocalField(_l("Valid to (UTC)"), validators=[Optional()],
                                  format="%Y-%m-%dT%H:%M")


class SiteForm(FlaskForm):
    code = StringField(_l("Code"), validators=[DataRequired(), Regexp(
        r"^\d{2}$", message=_l("Two digits, e.g. 01."))])
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=128)])
    timezone = StringField(_l("Time zone"), default="Europe/Paris",
                           validators=[DataRequired(), Length(max=64)])


class ConfirmForm(FlaskForm):
    """A bare POST with its CSRF token."""


class ExpiryForm(ReasonFields, FlaskForm):
    """An account's end date (UTC); empty removes it."""

    expires_at = DateTimeLocalField(_l("Account expires (UTC)"), validators=[Optional()],
                                    format="%Y-%m-%dT%H:%M")
