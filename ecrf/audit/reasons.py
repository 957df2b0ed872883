"""Reasons for change: a short list plus free text (EU Annex 11 §9, 21 CFR 11.10(e))."""

from __future__ import annotations

from dataclasses import dataclass

from flask_babel import lazy_gettext as _l

#: the codes are stored in the audit trail; only their labels are shown in the user's language
REASON_CODES: dict[str, str] = {
    "entry_error": _l("Data entry error"),
    "new_information": _l("New or updated source information"),
    "query_response": _l("Correction in response to a query"),
    "administrative": _l("Administrative change"),
    "other": _l("Other (explain)"),
}
#: set by the system itself (derived values, security events, loaders); never offered to users
SYSTEM_CODE = "system"


@dataclass(frozen=True)
class Reason:
    code: str
    text: str = ""

    def __post_init__(self):
        if self.code not in REASON_CODES and self.code != SYSTEM_CODE:
            raise ValueError(f"unknown reason code {self.code!r}")
        if self.code == "other" and not self.text.strip():
            raise ValueError("a reason 'other' needs an explanation")

    @classmethod
    def system(cls, text: str) -> Reason:
        return cls(SYSTEM_CODE, text)
