"""Enrolment and subject status forms."""

from flask_wtf import FlaskForm
from wtforms import SelectField, StringField
from wtforms.validators import DataRequired, Length

from ecrf.forms.choices import choices
from ecrf.study.models import SubjectStatus


class EnrolForm(FlaskForm):
    # the view checks the site against the user's grants (site_or_404 records a refusal)
    site = SelectField("Site", choices=[], validators=[DataRequired()], validate_choice=False)


class StatusForm(FlaskForm):
    status = SelectField("New status", choices=choices((s.value, s.value.replace("_", " "))
                                                for s in SubjectStatus),
                         validators=[DataRequired()])
    reason_text = StringField("Reason (required for screen failure, withdrawal, removal)",
                              validators=[Length(max=500)])
