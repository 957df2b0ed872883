"""Enrolment and subject status forms."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import SelectField, StringField
from wtforms.validators import DataRequired, Length

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
