"""The DEMO study: two sites, one user per role, synthetic subjects.

Everything goes through the same audited services a user's request uses, attributed to the
named system account ``demo-loader``. Never loaded in a production configuration.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import click
import sqlalchemy as sa
from flask import current_app

from ecrf.access import services as access_services
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.auth import services as auth_services
from ecrf.auth.models import User
from ecrf.extensions import db
from ecrf.study import eligibility
from ecrf.study import services as study_services
from ecrf.study.models import Site, SubjectStatus

LOADER = "demo-loader"
SITES = [("01", "DEMO site 01 - Medical ICU, Paris"), ("02", "DEMO site 02 - ICU, Lyon")]
#: username, full name, role, site
USERS = [
    ("investigator", "DEMO Investigator (site 01)", "investigator", "01"),
    ("investigator02", "DEMO Investigator (site 02)", "investigator", "02"),
    ("monitor", "DEMO Monitor (site 01)", "monitor", "01"),
    ("monitor02", "DEMO Monitor (site 02)", "monitor", "02"),
    ("datamanager", "DEMO Data Manager", "data_manager", None),
    ("auditor", "DEMO Auditor", "auditor", None),
    ("admin", "DEMO Administrator", "admin", None),
]


def loader_actor() -> Actor:
    user = auth_services.get_user(LOADER)
    if user is None:
        with unit_of_work(auth_services.system_actor(), Reason.system("demo loader account")):
            user = User(username=LOADER, full_name="DEMO data loader (system account)",
                        is_system=True, is_active=True, must_change_password=False,
                        failed_logins=0)
            db.session.add(user)
    return Actor.of(user)


def is_loaded() -> bool:
    return auth_services.get_user(LOADER) is not None and db.session.scalar(
        sa.select(sa.func.count()).select_from(Site)) >= len(SITES)


def load_demo(n_subjects: int | None, *, echo=print, seed: int = 2026) -> None:
    password = current_app.config["DEMO_PASSWORD"]
    first_load = not is_loaded()
    actor = loader_actor()
    if first_load:
        sites = {}
        for code, name in SITES:
            site = study_services.create_site(actor, code, name)
            study_services.activate_site(actor, site)
            sites[code] = site
        for username, full_name, role, site_code in USERS:
            user, _ = auth_services.create_user(actor, username=username, full_name=full_name,
                                                email=f"{username}@demo.invalid",
                                                password=password)
            access_services.grant_role(actor, user, role, sites.get(site_code))
        _delegate(actor, sites)
        echo("DEMO study loaded: sites 01 and 02, one user per role.")
        n_subjects = 10 if n_subjects is None else n_subjects
    else:
        echo("DEMO study already loaded.")
    if n_subjects:
        add_subjects(actor, n_subjects, seed=seed)
        review_work(password, seed=seed)
    echo_logins(echo, password)


def add_subjects(actor: Actor, n: int, *, seed: int) -> None:
    """Enrol ``n`` synthetic subjects alternately on each site; some are included, some fail."""
    rng = random.Random(seed)
    sites = list(db.session.scalars(sa.select(Site).order_by(Site.code)))
    with click.progressbar(range(n), label="Enrolling synthetic subjects",
                           show_pos=True) as bar:
        for i in bar:
            with unit_of_work(actor):  # one transaction per subject: same services, fewer commits
                _add_subject(actor, sites[i % len(sites)], rng)


def _add_subject(actor: Actor, site, rng: random.Random) -> None:
    subject = study_services.enrol_subject(actor, site)
    roll = rng.random()
    if roll >= 0.9:
        return  # still in screening
    fill_screening(actor, subject, rng, eligible=roll >= 0.12)
    fill_sofa(actor, subject, rng)
    if eligibility.for_subject(subject).eligible:
        study_services.change_subject_status(actor, subject, SubjectStatus.INCLUDED)
        fill_follow_up(actor, subject, rng)
    else:
        study_services.change_subject_status(
            actor, subject, SubjectStatus.SCREEN_FAILURE,
            Reason("other", "DEMO: did not meet the eligibility criteria"))


def _sofa_day(rng: random.Random, severity: float) -> dict[str, str]:
    """Plausible worst values of an ICU day for a patient of the given severity (0..1)."""
    ventilated = severity > 0.45
    values = {
        "pao2": f"{rng.uniform(55, 110):.0f}", "pao2_unit": "mmHg",
        "fio2": f"{rng.uniform(0.25 + 0.5 * severity, 0.35 + 0.6 * severity):.2f}"[:4],
        "fio2_unit": "fraction", "resp_support": "IMV" if ventilated else rng.choice(
            ["NONE", "HFNO", "NIV"]),
        "platelets": str(max(5, int(rng.gauss(160 - 130 * severity, 25)))),
        "bilirubin": f"{max(4, rng.gauss(15 + 90 * severity, 10)):.0f}", "bilirubin_unit": "umol/L",
        "map": str(int(rng.gauss(78 - 15 * severity, 6))),
        "gcs": str(max(3, min(15, int(rng.gauss(15 - 6 * severity, 2))))),
        "creatinine": f"{max(30, rng.gauss(80 + 200 * severity, 30)):.0f}",
        "creatinine_unit": "umol/L", "urine_output": str(max(0, int(rng.gauss(1500 - 1100 *
                                                                               severity, 300)))),
        "rrt": "Y" if severity > 0.8 and rng.random() < 0.5 else "N",
    }
    if severity > 0.5:
        values["norepinephrine"] = f"{rng.uniform(0.05, 0.5 * severity):.2f}"
    values["fio2"] = str(min(1.0, max(0.21, float(values["fio2"]))))
    return values


def save_confirmed(actor: Actor, subject, crf_key: str, slot, values: dict,
                   reason: Reason | None = None, null_flavors: dict | None = None) -> None:
    """Save through the same service as the web form, confirming its soft checks (a loader)."""
    from ecrf.casebook.services import Submitted, save_form

    submitted = Submitted(values, null_flavors or {})
    result = save_form(actor, subject, crf_key, slot, submitted, reason=reason)
    if result.outcome == "needs_confirmation":
        result = save_form(actor, subject, crf_key, slot, submitted, reason=reason,
                           confirmed={w.check_id for w in result.warnings})
    if not result.ok:
        raise RuntimeError(f"demo {crf_key} for {subject.code} refused: {result.errors}")


def screening_forms(rng: random.Random, subject, *, eligible: bool = True) -> dict[str, dict]:
    """Plausible D0 forms of an adult with acquired HS in the ICU (eligible, or not)."""
    from datetime import timedelta

    from ecrf.forms.crfs.eligibility import EXCLUSIONS

    tz = ZoneInfo(subject.site.timezone)
    now = datetime.now(tz).replace(second=0, microsecond=0)
    sex = rng.choice("MF")
    age = rng.randint(19, 84) if eligible else rng.choice([17, 18])
    wocbp = sex == "F" and age < 50 and rng.random() < 0.7
    forms = {
        "consent": {"consent_type": "PATIENT",
                    "patient_signed_at": (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"),
                    "withdrawn": "N"},
        "demographics": {"sex": sex, "age": str(age), "weight": f"{rng.uniform(50, 110):.1f}",
                         "height": str(rng.randint(152, 192)),
                         **({"wocbp": "Y"} if wocbp else {"wocbp": "N",
                                                          "not_wocbp_reason": "POSTMENOPAUSAL"}
                            if sex == "F" else {})},
        "medical_history": {"immunosuppression": "N", "etiology": ["VIRAL"],
                            "etiology_detail": "EBV", "prior_treatment": "N",
                            "icu_admission_at": (now - timedelta(hours=30)).strftime(
                                "%Y-%m-%dT%H:%M")},
        "hs_diagnosis": {"temperature": "38.8", "hepatomegaly": "N", "splenomegaly": "Y",
                         "immunosuppression": "N", "hemoglobin": "8.6", "neutrophils": "1.21",
                         "platelets": "34", "ferritin": str(rng.randint(2500, 30000)),
                         "triglycerides": "1.80", "fibrinogen": "1.54", "ast": "717",
                         "marrow_done": "Y", "marrow_date": (now - timedelta(days=1)).strftime(
                             "%Y-%m-%d"), "hemophagocytosis": "Y"},
        "eligibility": {key: "N" for key, _ in EXCLUSIONS} | {"other_trial": "N"},
        "labs": {"sampled_at": (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"),
                 "ferritin": str(rng.randint(2500, 40000)), "triglycerides": "3.4",
                 "fibrinogen": f"{rng.uniform(0.8, 2.5):.2f}", "crp": f"{rng.uniform(20, 250):.1f}",
                 "ast": str(rng.randint(80, 900)), "alt": str(rng.randint(60, 700)),
                 "ldh": str(rng.randint(400, 3000)), "hb": f"{rng.uniform(6.5, 9.5):.1f}",
                 "wbc": f"{rng.uniform(1.0, 4.0):.2f}", "anc": f"{rng.uniform(0.3, 0.9):.2f}",
                 "platelets": str(rng.randint(15, 90))},
    }
    if wocbp:
        forms["contraception"] = {
            "pregnancy_test": "Y", "pregnancy_test_type": "SERUM",
            "pregnancy_test_at": (now - timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M"),
            "pregnancy_test_result": "NEG", "contraception_used": "Y", "method": "IUD",
            "method_start": str(now.year - rng.randint(1, 5))}
    return forms


def fill_screening(actor: Actor, subject, rng: random.Random, *, eligible: bool = True) -> None:
    from ecrf.casebook.services import Slot

    for crf_key, values in screening_forms(rng, subject, eligible=eligible).items():
        save_confirmed(actor, subject, crf_key, Slot("D0"), values)


def fill_sofa(actor: Actor, subject, rng: random.Random, days: int = 4,
              severity: float | None = None) -> None:
    """Daily SOFA from D0 on, improving (or not) from a random baseline severity."""
    from ecrf.casebook.services import Slot

    severity = rng.uniform(0.45, 0.95) if severity is None else severity
    for day in range(days):
        save_confirmed(actor, subject, "sofa_daily", Slot(f"D{day}"), _sofa_day(rng, severity))
        severity = max(0.05, severity + rng.uniform(-0.2, 0.08))


def fill_follow_up(actor: Actor, subject, rng: random.Random) -> None:
    """Dosing, adverse events (some serious, some causing a dose change), and some deaths."""
    from datetime import timedelta

    from ecrf.casebook.services import Slot

    d0 = subject.inclusion_date
    ae_number = None
    if rng.random() < 0.45:
        serious = rng.random() < 0.35
        aware = datetime.now(UTC) - timedelta(hours=rng.uniform(1, 20))
        values = {"term": rng.choice(["10040047", "10016288", "10061229"])
                  if serious else rng.choice(["10002272", "10035528", "10029366"]),
                  "onset": str(d0), "serious": "Y" if serious else "N",
                  "causality": rng.choice(["POSSIBLE", "UNLIKELY", "PROBABLE"]),
                  "action": "DOSE REDUCED", "outcome": "RECOVERING/RESOLVING"}
        values["grade"] = "3"
        if serious:
            values.update(grade="4",
                          criteria=["LIFE"], aware_at=aware.strftime("%Y-%m-%dT%H:%M"))
        save_confirmed(actor, subject, "adverse_event", Slot("D0", form_repeat=None), values)
        ae_number = 1
    for slot in ("AM", "PM"):
        reduced = ae_number is not None and slot == "PM"
        save_confirmed(actor, subject, "dosing", Slot("D0", form_repeat=None), {
            "dose_date": str(d0), "slot": slot, "given": "Y", "time_given": "09:00"
            if slot == "AM" else "21:00", "dose_mg": "5" if reduced else "10",
            "tablet_strength": "5" if reduced else "10", "tablets": "1",
            "route": rng.choice(["ORAL", "NG", "NG"]),
            "status": "REDUCED" if reduced else "PLANNED",
            **({"reason": "AE", "ae_number": str(ae_number)} if reduced else {})})
    if rng.random() < 0.5:
        save_confirmed(actor, subject, "concomitant", Slot("D0", form_repeat=None), {
            "kind": "HS", "hs_drug": "DEXAMETHASONE", "drug_name": "Dexamethasone",
            "dose": "10 mg/m2 once a day", "route": "IV", "start": str(d0)})
    save_confirmed(actor, subject, "organ_support", Slot("D0", form_repeat=None), {
        "support": rng.choice(["IMV", "VASOPRESSOR", "RRT"]),
        "started_at": f"{d0}T04:00"}, null_flavors={"stopped_at": ("UNK", "not noted")}
        if rng.random() < 0.1 else None)
    roll = rng.random()
    if roll < 0.25:  # corrections with their reason; a rare one makes the subject ineligible
        from ecrf.casebook.services import CheckContext, registry, value_text

        current = CheckContext(subject, Slot("D0")).values("demographics")
        crf = registry().current("demographics")
        values = {k: value_text(crf.item(k), v) for k, v in current.items()
                  if v is not None and not crf.item(k).derived}
        if roll < 0.04:
            values["age"] = "18"
            why = Reason("entry_error", "DEMO: age read from the wrong document")
        else:
            values["weight"] = f"{float(values['weight']) + rng.choice([-2.5, 1.5, 3.0]):.1f}"
            why = Reason("new_information", "DEMO: weighed on the ICU bed scale")
        save_confirmed(actor, subject, "demographics", Slot("D0"), values, reason=why)
    if rng.random() < 0.12:
        death = d0 + timedelta(days=rng.randint(1, 3))
        save_confirmed(actor, subject, "end_of_study", Slot("D90"), {
            "died": "Y", "vital_d28": "DEAD", "vital_d90": "DEAD", "death_date": str(death),
            "death_cause": "Refractory multiple organ failure", "completed": "N",
            "termination_reason": "DEATH"}, null_flavors={"hospital_discharge": ("NA", "")})


# --- review work ------------------------------------------------------------------------------


def _delegate(actor: Actor, sites: dict) -> None:
    """Each site's investigator is its principal investigator in the delegation log."""
    from ecrf.review import delegation

    dm = _demo_actor("datamanager", "delegation.manage")
    for username, site_code in (("investigator", "01"), ("investigator02", "02")):
        site = sites[site_code]
        delegation.add_entry(dm, site, auth_services.get_user(username), "pi",
                             delegation.site_today(site))


def _demo_actor(username: str, permission: str, site_id: int | None = None) -> Actor:
    from ecrf.access.grants import Access

    return Access.for_user(auth_services.get_user(username), permission).actor(site_id)


QUESTIONS = ("Please check this value against the source document.",
             "The value differs from the ICU chart: please confirm or correct.",
             "Is this the worst value of the day?")
ANSWERS = ("Checked against the source: the value is correct.",
           "Confirmed with the ICU chart.")


def review_work(password: str, *, seed: int) -> None:
    """What monitors, investigators and the data manager do with new data, through the same
    services as their pages: queries raised, answered and closed, a share of items verified,
    and casebooks signed by the principal investigators once ready."""
    from ecrf.casebook.models import FormInstance, FormStatus
    from ecrf.review import queries, sdv, signatures
    from ecrf.study.models import Subject

    rng = random.Random(seed + 1)
    followed = list(db.session.scalars(sa.select(Subject).where(
        Subject.inclusion_date.is_not(None)).order_by(Subject.code)))
    visits = [v.key for v in current_app.extensions["ecrf.registry"].schedule.visits
              if v.day is not None]
    monitors = {"01": "monitor", "02": "monitor02"}
    investigators = {"01": "investigator", "02": "investigator02"}
    with click.progressbar(followed, label="Reviewing the synthetic casebooks",
                           show_pos=True) as bar:
        for subject in bar:
            site_code = subject.site.code
            monitor = _demo_actor(monitors[site_code], "query.manage", subject.site_id)
            forms = [f for f in db.session.scalars(sa.select(FormInstance).where(
                FormInstance.subject_id == subject.id).order_by(FormInstance.id))
                if f.status == FormStatus.COMPLETE.value]
            if forms and rng.random() < 0.5:
                instance = rng.choice(forms)
                items = [v.item_key for v in instance.values]
                query = queries.raise_query(monitor, instance, rng.choice(items) if items else None,
                                            rng.choice(QUESTIONS))
                roll = rng.random()
                if roll < 0.7:
                    investigator = _demo_actor(investigators[site_code], "query.answer",
                                               subject.site_id)
                    queries.answer(investigator, query, rng.choice(ANSWERS))
                    if roll < 0.5:
                        queries.close(monitor, query, "Thank you.")
            if rng.random() < 0.6:
                verifier = _demo_actor(monitors[site_code], "sdv.verify", subject.site_id)
                required = [i for i in sdv.items_of(subject) if i.required]
                share = required[: max(1, int(len(required) * rng.uniform(0.3, 1.0)))]
                if share:
                    sdv.verify(verifier, subject, share)
            if rng.random() < 0.5:  # the investigator signs the first visit ready for it
                signer = auth_services.get_user(investigators[site_code])
                for visit in visits:
                    scope = signatures.SignScope.visit(visit)
                    if signatures.readiness(subject, scope).ready:
                        signatures.sign(signer, subject, scope, username=signer.username,
                                        password=password)
                        break


def echo_logins(echo, password: str) -> None:
    echo(f"DEMO logins (password for all: {password}):")
    for username, _full_name, role, site_code in USERS:
        echo(f"  {username:16} {role:13} {('site ' + site_code) if site_code else 'study-wide'}")
