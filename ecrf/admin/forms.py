"""Account and site administration forms."""

from flask_wtf import FlaskForm
from wtforms import DateTimeLocalField, EmailField, SelectField, StringField
from wtforms.validators import DataRequired, Email, Length, Optional, Regexp

from ecrf.access.roles import ROLES
from ecrf.forms.choices import choices
from ecrf.forms.reason import ReasonFields


class UserForm(FlaskForm):
    username = StringField("Username", validators=[
        DataRequired(), Length(max=64),
        Regexp(r"^[A-Za-z0-9._-]+$", message="Letters, digits, '.', '-' or '_' only.")])
    full_name = StringField("Full name", validators=[DataRequired(), Length(max=128)])
    email = EmailField("E-mail", validators=[Optional(), Email(check_deliverability=False),
                                             Length(max=254)])


class ReasonForm(ReasonFields, FlaskForm):
    """An administrative action that needs a reason (deactivate, unlock, reset, revoke)."""


class GrantForm(FlaskForm):
    role = SelectField("Role", choices=choices((r.name, r.title) for r in ROLES.values()),
                       validators=[DataRequired()])
    site = SelectField("Site (site roles only)", choices=[], validate_choice=False)
    valid_from = DateTimeLocalField("Valid from (UTC)", validators=[Optional()],
                                    format="%Y-%m-%dT%H:%M")
    valid_to = DateTimeLocalField("Valid to (UTC)", validators=[Optional()],
                                  format="%Y-%m-%dT%H:%M")


class SiteForm(FlaskForm):
    code = StringField("Code", validators=[DataRequired(), Regexp(r"^\d{2}$",
                                                                  message="Two digits, e.g. 01.")])
    name = StringField("Name", validators=[DataRequired(), Length(max=128)])
    timezone = StringField("Time zone", default="Europe/Paris",
                           validators=[DataRequired(), Length(max=64)])


class ConfirmForm(FlaskForm):
    """A bare POST with its CSRF token."""
