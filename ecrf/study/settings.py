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

#: [A] days on which the laboratory and HS activity form is expected
LAB_DAYS = (0, 3, 7, 14)

#: [A] follow-up visits: key -> (title, target day, window before, window after)
FOLLOW_UP_VISITS = {
    "D28": ("Day 28", 28, 2, 2),
    "D90": ("Day 90", 90, 7, 7),
}


#: [A] the primary endpoint, derived from the daily SOFA total:
#:   "value"    - the SOFA total at day ``day``;
#:   "change"   - the SOFA total at day ``day`` minus the total at D0 (negative = better);
#:   "response" - yes/no: a decrease of at least ``points`` from D0 by day ``day``.
PRIMARY_ENDPOINT = {"kind": "change", "day": 7, "points": 2}

#: [A] ruxolitinib: the planned dose per slot (twice daily) and the tablet strengths (EU Jakavi)
PLANNED_DOSE_MG = 10
DOSE_LEVELS_MG = (5, 10, 15, 20)
TABLET_STRENGTHS_MG = (5, 10, 15, 20)

#: eligibility (inclusion criteria I1-I6)
#: [S] "older than 18 years": eligible when the age in whole years is strictly above this
MINIMUM_AGE_YEARS = 18
#: [A] I2 read as ">= 5 of the 8 HLH-2004 criteria met", or an HScore of at least 200 [S]
HLH2004_MIN_CRITERIA = 5
HSCORE_MIN = 200
#: [S] I4: SOFA at inclusion of at least 4
SOFA_INCLUSION_MIN = 4
#: [S] I6: highly effective contraception from the first dose to this many days after the last
CONTRACEPTION_DAYS_AFTER_LAST_DOSE = 1
#: [A] participation in another interventional trial is recorded; set True to make it exclude
OTHER_TRIAL_EXCLUDES = False
#: [A] ask for a birth date on the demographics form (otherwise the age in years only)
COLLECT_BIRTH_DATE = False
#: [A] a pregnancy test before the first dose (CTFG) is expected at most this many days before
#: inclusion (D0); an older one, or one dated after D0, asks for a confirmation (contraception form)
PREGNANCY_TEST_MAX_DAYS_BEFORE_INCLUSION = 3

#: [A] audit trail review (EMA-6): the audit records a data manager reviews are flagged by these
#: an item value entered more than this many days after its visit's target date (D0 + day)
AUDIT_LATE_ENTRY_DAYS = 7
#: more than this many changes (updates) of one item: each further change is flagged
AUDIT_MANY_CHANGES = 3
#: working hours at the site, local time: from the first hour (included) to the second (excluded)
AUDIT_WORKING_HOURS = (7, 20)
#: days outside working hours, local time (Monday 0 ... Sunday 6)
AUDIT_WEEKEND_DAYS = (5, 6)


def as_dict() -> dict:
    """The settings as plain data, for the change-control fingerprint."""
    return {
        "STUDY": STUDY,
        "DAILY_FOLLOW_UP_DAYS": DAILY_FOLLOW_UP_DAYS,
        "DAILY_WINDOW_DAYS": DAILY_WINDOW_DAYS,
        "FOLLOW_UP_VISITS": FOLLOW_UP_VISITS,
        "LAB_DAYS": LAB_DAYS,
        "MINIMUM_AGE_YEARS": MINIMUM_AGE_YEARS,
        "HLH2004_MIN_CRITERIA": HLH2004_MIN_CRITERIA,
        "HSCORE_MIN": HSCORE_MIN,
        "SOFA_INCLUSION_MIN": SOFA_INCLUSION_MIN,
        "CONTRACEPTION_DAYS_AFTER_LAST_DOSE": CONTRACEPTION_DAYS_AFTER_LAST_DOSE,
        "COLLECT_BIRTH_DATE": COLLECT_BIRTH_DATE,
        "PREGNANCY_TEST_MAX_DAYS_BEFORE_INCLUSION": PREGNANCY_TEST_MAX_DAYS_BEFORE_INCLUSION,
        "OTHER_TRIAL_EXCLUDES": OTHER_TRIAL_EXCLUDES,
        "PRIMARY_ENDPOINT": PRIMARY_ENDPOINT,
        "PLANNED_DOSE_MG": PLANNED_DOSE_MG,
        "DOSE_LEVELS_MG": DOSE_LEVELS_MG,
        "TABLET_STRENGTHS_MG": TABLET_STRENGTHS_MG,
        "AUDIT_LATE_ENTRY_DAYS": AUDIT_LATE_ENTRY_DAYS,
        "AUDIT_MANY_CHANGES": AUDIT_MANY_CHANGES,
        "AUDIT_WORKING_HOURS": AUDIT_WORKING_HOURS,
        "AUDIT_WEEKEND_DAYS": AUDIT_WEEKEND_DAYS,
    }
