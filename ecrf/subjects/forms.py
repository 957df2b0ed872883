"""Enrolment and subject status forms."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, StringField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from ecrf.forms.choices import choices
from ecrf.study.models import SUBJECT_STATUS_LABELS


class EnrolForm(FlaskForm):
    # the view checks the site against the user's grants (site_or_404 records a refusal)
    site = SelectField(_l("Site"), choices=[], validators=[DataRequired()], validate_choice=False)


class StatusForm(FlaskForm):
    status = SelectField(_l("New status"), choices=choices(
        (s.value, label) for s, label in SUBJECT_STATUS_LABELS.items()), validators=[DataRequired()])
    reason_text = StringField(_l("Reason (required for screen failure, withdrawal, removal)"),
                              validators=[Length(max=500)])


class ScreeningForm(FlaskForm):
    """One screened patient: no identifiers, only what the flow diagram needs."""

    site = SelectField(_l("Site"), choices=[], validators=[DataRequired()], validate_choice=False)
    screened_on = DateField(_l("Date screened"), validators=[DataRequired()])
    age = IntegerField(_l("Age (years)"), validators=[DataRequired(), NumberRange(0, 120)])
    sex = SelectField(_l("Sex"), choices=choices([("M", _l("Male")), ("F", _l("Female"))]),
                      validators=[DataRequired()])
    subject = StringField(_l("Enrolled as subject (code), if enrolled"),
                          validators=[Optional(), Length(max=16)])
    reason_not_included = StringField(_l("Reason not included, if not enrolled"),
                                      validators=[Optional(), Length(max=500)])
