"""Study settings: every choice the public protocol does not state ([A] in the domain notes).

A sponsor changes these settings, not the code around them; docs/study-settings.md lists them.
A change is recorded in the audit trail as "study definition changed" (change control).
"""

from __future__ import annotations

STUDY = {
    "name": "JAKAHDI",
    "registry_id": "NCT06244862",
    "target_enrolment": 42,
}

#: [A] days of daily follow-up after D0 (D1..Dn), and the window of a daily visit (days)
DAILY_FOLLOW_UP_DAYS = 14
DAILY_WINDOW_DAYS = 0

#: [A] follow-up visits: key -> (title, target day, window before, window after)
FOLLOW_UP_VISITS = {
    "D28": ("Day 28", 28, 2, 2),
    "D90": ("Day 90", 90, 7, 7),
}


def as_dict() -> dict:
    """The settings as plain data, for the change-control fingerprint."""
    return {
        "STUDY": STUDY,
        "DAILY_FOLLOW_UP_DAYS": DAILY_FOLLOW_UP_DAYS,
        "DAILY_WINDOW_DAYS": DAILY_WINDOW_DAYS,
        "FOLLOW_UP_VISITS": FOLLOW_UP_VISITS,
    }
