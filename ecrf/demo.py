"""The DEMO study: two sites, one user per role, synthetic subjects.

Everything goes through the same audited services a user's request uses, attributed to the
named system account ``demo-loader``. Never loaded in a production configuration.
"""

from __future__ import annotations

import random

import click
import sqlalchemy as sa
from flask import current_app

from ecrf.access import services as access_services
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.auth import services as auth_services
from ecrf.auth.models import User
from ecrf.extensions import db
from ecrf.study import services as study_services
from ecrf.study.models import Site, SubjectStatus

LOADER = "demo-loader"
SITES = [("01", "DEMO site 01 - Medical ICU, Paris"), ("02", "DEMO site 02 - ICU, Lyon")]
#: username, full name, role, site
USERS = [
    ("investigator", "DEMO Investigator (site 01)", "investigator", "01"),
    ("investigator02", "DEMO Investigator (site 02)", "investigator", "02"),
    ("monitor", "DEMO Monitor (site 01)", "monitor", "01"),
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
        echo("DEMO study loaded: sites 01 and 02, one user per role.")
        n_subjects = 10 if n_subjects is None else n_subjects
    else:
        echo("DEMO study already loaded.")
    if n_subjects:
        add_subjects(actor, n_subjects, seed=seed)
    echo_logins(echo, password)


def add_subjects(actor: Actor, n: int, *, seed: int) -> None:
    """Enrol ``n`` synthetic subjects alternately on each site; some are included, some fail."""
    rng = random.Random(seed)
    sites = list(db.session.scalars(sa.select(Site).order_by(Site.code)))
    with click.progressbar(range(n), label="Enrolling synthetic subjects",
                           show_pos=True) as bar:
        for i in bar:
            site = sites[i % len(sites)]
            subject = study_services.enrol_subject(actor, site)
            roll = rng.random()
            if roll < 0.15:
                study_services.change_subject_status(
                    actor, subject, SubjectStatus.SCREEN_FAILURE,
                    Reason("other", "DEMO: did not meet the eligibility criteria"))
            elif roll < 0.9:
                study_services.change_subject_status(actor, subject, SubjectStatus.INCLUDED)


def echo_logins(echo, password: str) -> None:
    echo(f"DEMO logins (password for all: {password}):")
    for username, _full_name, role, site_code in USERS:
        echo(f"  {username:16} {role:13} {('site ' + site_code) if site_code else 'study-wide'}")
