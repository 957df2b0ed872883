"""The signing form (both components, every time) and the delegation log forms."""

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import DateField, HiddenField, PasswordField, RadioField, SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from ecrf.forms.choices import choices
from ecrf.forms.reason import ReasonFields
from ecrf.review.models import DELEGATION_TASK_LABELS
from ecrf.review.signatures import MEANING_LABELS


class SignForm(FlaskForm):
    """Username and password are asked at each signing, whatever the session (21 CFR 11.200)."""

    meaning = RadioField(_l("Meaning of the signature"), choices=choices(MEANING_LABELS.items()),
                         default=next(iter(MEANING_LABELS)), validators=[DataRequired()])
    username = StringField(_l("Username"), validators=[DataRequired(), Length(max=64)],
                           render_kw={"autocomplete": "username", "autocapitalize": "none"})
    password = PasswordField(_l("Password"), validators=[DataRequired()],
                             render_kw={"autocomplete": "current-password"})
    #: the content hash of the page read: if the data changed since, nothing is signed
    content_hash = HiddenField()


class DelegationForm(FlaskForm):
    user = SelectField(_l("Person"), choices=[], validators=[DataRequired()])
    task = SelectField(_l("Task"), choices=choices(DELEGATION_TASK_LABELS.items()),
                       validators=[DataRequired()])
    start_date = DateField(_l("First day"), validators=[DataRequired()])
    end_date = DateField(_l("Last day (leave empty while the task goes on)"), validators=[Optional()])


class EndDelegationForm(ReasonFields, FlaskForm):
    """Ending a line: its last day and why (the line itself stays in the log)."""

    end_date = DateField(_l("Last day of the task"), validators=[DataRequired()])

    def validate_reason_text(self, field):
        # ReasonFields raises a plain ValueError, which WTForms 3 does not catch (a 500)
        if self.reason_code.data == "other" and not (field.data or "").strip():
            raise ValidationError(_("Explain the reason when it is 'Other'."))
