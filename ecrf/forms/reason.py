"""The reason-for-change fields shared by every form that changes saved data."""

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from wtforms import SelectField, StringField
from wtforms.validators import DataRequired, Length, ValidationError

from ecrf.audit.reasons import REASON_CODES, Reason
from ecrf.forms.choices import choices


class ReasonFields:
    """Mixin for a FlaskForm: a reason code from the short list plus free text."""

    reason_code = SelectField(_l("Reason for change"), choices=choices(REASON_CODES.items()),
                              validators=[DataRequired()])
    reason_text = StringField(_l("Explanation"), validators=[Length(max=500)])

    def validate_reason_text(self, field):
        if self.reason_code.data == "other" and not (field.data or "").strip():
            raise ValidationError(_("Explain the reason when it is 'Other'."))

    def reason(self) -> Reason:
        return Reason(self.reason_code.data, (self.reason_text.data or "").strip())
