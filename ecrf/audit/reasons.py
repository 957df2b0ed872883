"""Reasons for change: a short list plus free text (EU Annex 11 §9, 21 CFR 11.10(e))."""

from __future__ import annotations

from dataclasses import dataclass

REASON_CODES: dict[str, str] = {
    "entry_error": "Data entry error",
    "new_information": "New or updated source information",
    "query_response": "Correction in response to a query",
    "administrative": "Administrative change",
    "other": "Other (explain)",
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
