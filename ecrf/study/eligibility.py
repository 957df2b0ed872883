"""Eligibility computed by the system from the data, never ticked by hand (inclusion I1-I6,
exclusion E1-E12). ``evaluate`` is a pure function of the forms' values, so the protocol's rules
are tested on plain dicts; ``for_subject`` reads a subject's casebook."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ecrf.i18n import N_, Message, msg
from ecrf.study import settings

Forms = Mapping[str, Mapping[str, Any] | None]

#: the item keys the criteria read, by form (one place to align with the CRF modules)
SOURCES = {
    "age": ("demographics", "age"),
    "sex": ("demographics", "sex"),
    "wocbp": ("demographics", "wocbp"),
    "hlh_count": ("hs_diagnosis", "hlh_count"),
    "hscore": ("hs_diagnosis", "hscore"),
    "icu_admission": ("medical_history", "icu_admission_at"),
    "sofa": ("sofa_d0", "sofa_total"),
    "consent_type": ("consent", "consent_type"),
    "pregnancy_test": ("contraception", "pregnancy_test_result"),
    "method": ("contraception", "method"),
}


@dataclass(frozen=True)
class Criterion:
    id: str
    label: str
    #: True met, False not met, None not known yet (data missing)
    met: bool | None
    #: a ``Message``: English as a string (what is stored), translated where shown (``tr``)
    detail: str


@dataclass
class Eligibility:
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def eligible(self) -> bool:
        return all(c.met is True for c in self.criteria)

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if c.met is False]

    @property
    def unknown(self) -> list[Criterion]:
        return [c for c in self.criteria if c.met is None]

    def summary(self) -> Message:
        """Why a subject is not eligible, in one line (for the refusal and the screen failure): English
        as a string (the stored reason), in the user's language with ``tr``."""
        parts = [msg("%(id)s %(detail)s", id=c.id, detail=c.detail) for c in self.failed]
        parts += [msg("%(id)s not known: %(detail)s", id=c.id, detail=c.detail)
                  for c in self.unknown]
        return Message.join("; ", parts)


def _get(forms: Forms, name: str):
    form, item = SOURCES[name]
    values = forms.get(form)
    return None if values is None else values.get(item)


def _i1(forms):
    age = _get(forms, "age")
    if age is None:
        return None, msg("age at inclusion not entered (demographics)")
    minimum = settings.MINIMUM_AGE_YEARS
    if age > minimum:
        return True, msg("age %(age)s years (older than %(minimum)s)", age=age, minimum=minimum)
    return False, msg("age %(age)s years (not older than %(minimum)s)", age=age, minimum=minimum)


def _i2(forms):
    count, score = _get(forms, "hlh_count"), _get(forms, "hscore")
    if count is None and score is None:
        return None, msg("HS diagnosis not entered")
    ok = (count is not None and count >= settings.HLH2004_MIN_CRITERIA) or (
        score is not None and score >= settings.HSCORE_MIN)
    return ok, msg("HLH-2004 %(count)s criteria (needs %(count_min)s), HScore %(score)s "
                   "(needs %(score_min)s)", count=count if count is not None else "?",
                   count_min=settings.HLH2004_MIN_CRITERIA,
                   score=score if score is not None else "?", score_min=settings.HSCORE_MIN)


def _i3(forms):
    admitted = _get(forms, "icu_admission")
    if admitted is None:
        return None, msg("ICU admission not entered")
    return True, msg("admitted to the ICU on %(admitted)s", admitted=admitted)


def _i4(forms):
    total = _get(forms, "sofa")
    if total is None:
        return None, msg("SOFA at D0 not entered")
    ok = total >= settings.SOFA_INCLUSION_MIN
    return ok, msg("SOFA at D0 %(total)s (needs %(minimum)s or more)", total=total,
                   minimum=settings.SOFA_INCLUSION_MIN)


def _i5(forms):
    kind = _get(forms, "consent_type")
    if kind is None:
        return None, msg("consent not recorded")
    # the consent type's code (consent form), said in words once translated
    if kind == "PATIENT":
        return True, msg("consent: PATIENT")
    if kind == "RELATIVE":
        return True, msg("consent: RELATIVE")
    if kind == "EMERGENCY":
        return True, msg("consent: EMERGENCY")
    return True, msg("consent: %(kind)s", kind=kind)


def _i6(forms):
    sex, wocbp = _get(forms, "sex"), _get(forms, "wocbp")
    if sex is None:
        return None, msg("sex not entered")
    if sex != "F" or wocbp == "N":
        return True, msg("not a woman of childbearing potential")
    if wocbp is None:
        return None, msg("childbearing potential not entered")
    test, method = _get(forms, "pregnancy_test"), _get(forms, "method")
    if test is None:
        return None, msg("pregnancy test before the first dose not entered")
    if test != "NEG":
        return False, msg("pregnancy test before the first dose is not negative")
    if method is None:
        return None, msg("highly effective contraception not recorded")
    return True, msg("negative pregnancy test and highly effective contraception")


def _exclusions(forms):
    values = forms.get("eligibility")
    if values is None:
        return None, msg("exclusion criteria not answered")
    from ecrf.forms.crfs.eligibility import EXCLUSIONS

    keys = [k for k, _ in EXCLUSIONS] + (["other_trial"] if settings.OTHER_TRIAL_EXCLUDES else [])
    present = [_exclusion_code(k) for k in keys if values.get(k) == "Y"]
    unanswered = [_exclusion_code(k) for k in keys if values.get(k) is None]
    if present:
        return False, msg("exclusion criteria present: %(codes)s",
                          codes=Message.join(", ", present))
    if unanswered:
        return None, msg("exclusion criteria not answered: %(codes)s",
                         codes=Message.join(", ", unanswered))
    return True, msg("every exclusion criterion answered no")


def _exclusion_code(key: str) -> str:
    """E1..E12 from the item key; OTHER (another trial) is a word, translated where shown."""
    code = key.split("_")[0].upper()
    return msg("OTHER") if code == "OTHER" else code


RULES: list[tuple[str, str, Callable]] = [
    ("I1", N_("Adult older than the minimum age"), _i1),
    ("I2", N_("HLH-2004 criteria or HScore"), _i2),
    ("I3", N_("Admitted to the ICU"), _i3),
    ("I4", N_("Organ failure: SOFA at inclusion"), _i4),
    ("I5", N_("Consent (patient, relative or emergency inclusion)"), _i5),
    ("I6", N_("Woman of childbearing potential: negative test and contraception"), _i6),
    ("E", N_("No exclusion criterion"), _exclusions),
]


def evaluate(forms: Forms) -> Eligibility:
    result = Eligibility()
    for cid, label, rule in RULES:
        met, detail = rule(forms)
        result.criteria.append(Criterion(cid, label, met, detail))
    return result


def for_subject(subject) -> Eligibility:
    """Evaluate from the subject's casebook (D0 forms)."""
    from ecrf.casebook.services import CheckContext, Slot

    context = CheckContext(subject, Slot("D0"))
    forms = {form: context.values(form) for form, _ in SOURCES.values() if form != "sofa_d0"}
    forms["eligibility"] = context.values("eligibility")
    forms["sofa_d0"] = context.values("sofa_daily", "D0")
    return evaluate(forms)
