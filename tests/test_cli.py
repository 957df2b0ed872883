"""The ecrf console script: a thin shell over the audited services (every write attributed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from ecrf.audit.models import AuditRecord
from ecrf.auth.models import User
from ecrf.study.models import Site, Subject
from tests.factories import audit_rows


def test_the_first_admin_can_be_created_on_an_empty_database(runner, db):
    result = runner.invoke(args=["users", "create", "first-admin", "--full-name", "First Admin",
                                 "--role", "admin"])
    assert result.exit_code == 0, result.output
    assert "Temporary password" in result.output
    created = audit_rows(action="auth.account_created")
    assert created[-1].username == "system"  # attributed to the named system account
    user = db.session.scalar(sa.select(User).where(User.username == "first-admin"))
    assert user.must_change_password and user.grants[0].role == "admin"


@pytest.mark.requirement("A11-12.1-12.3", "E6-4.2.2a-i", "ALCOA-attributable")
def test_once_an_admin_exists_every_cli_write_needs_a_named_user(runner, make, db):
    make.user("root", role="admin")
    refused = runner.invoke(args=["users", "create", "bob", "--full-name", "Bob"])
    assert refused.exit_code != 0 and "--as USERNAME" in refused.output
    second_admin = runner.invoke(args=["users", "create", "eve", "--full-name", "Eve",
                                       "--role", "admin"])
    assert second_admin.exit_code != 0
    done = runner.invoke(args=["users", "create", "bob", "--full-name", "Bob", "--role", "monitor",
                               "--site", make.site("01").code, "--as", "root"])
    assert done.exit_code == 0, done.output
    rows = [r for r in audit_rows() if r.action in ("auth.account_created", "grant.create")
            and r.seq > 0 and r.username == "root"]
    assert rows and all(r.role == "admin" and r.grant_id is not None for r in rows)


@pytest.mark.requirement("P11-10g")
def test_a_user_without_the_permission_cannot_act_through_the_cli(runner, make, db):
    make.user("inv", role="investigator", site="01")
    result = runner.invoke(args=["users", "create", "x", "--full-name", "X", "--as", "inv"])
    assert result.exit_code != 0 and "does not hold the permission users.manage" in result.output
    assert db.session.scalar(sa.select(User).where(User.username == "x")) is None


@pytest.mark.requirement("A11-12.1-12.3")
def test_grant_unlock_revoke_and_reset_from_the_cli(runner, make, app, login, db):
    make.user("root", role="admin")
    make.site("02")
    make.user("mon")
    out = runner.invoke(args=["users", "grant", "mon", "monitor", "--site", "02",
                              "--valid-to", "2099-01-01T00:00", "--as", "root"])
    assert out.exit_code == 0, out.output
    grant_id = int(out.output.split()[1].rstrip(":"))
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        login("mon", "wrong-password-123")
    assert runner.invoke(args=["users", "unlock", "mon", "--as", "root"]).exit_code == 0
    revoke = runner.invoke(args=["users", "revoke", str(grant_id), "--reason", "other",
                                 "--explain", "end of monitoring", "--as", "root"])
    assert revoke.exit_code == 0, revoke.output
    reset = runner.invoke(args=["users", "reset-password", "mon", "--as", "root"])
    assert "Temporary password for mon" in reset.output
    actions = [r.action for r in audit_rows(username="root")]
    assert {"grant.create", "auth.unlocked", "grant.update", "auth.password_reset"} <= set(actions)


def test_other_is_refused_as_a_reason_without_an_explanation(runner, make, db):
    make.user("root", role="admin")
    make.user("gus", role="auditor")
    result = runner.invoke(args=["users", "deactivate", "gus", "--reason", "other", "--as", "root"])
    assert result.exit_code != 0 and "needs an explanation" in result.output


@pytest.mark.requirement("E6-4.3.5")
def test_sites_are_created_and_activated_from_the_cli(runner, make, db):
    make.user("root", role="admin")
    assert runner.invoke(args=["sites", "create", "07", "CHU Lille", "--as", "root"]).exit_code == 0
    assert runner.invoke(args=["sites", "activate", "07", "--as", "root"]).exit_code == 0
    site = db.session.scalar(sa.select(Site).where(Site.code == "07"))
    assert site.activated_at is not None
    assert audit_rows(action="site.update", field="activated_at")[-1].username == "root"


def test_demo_loads_two_sites_one_user_per_role_and_subjects_through_audited_services(runner, db):
    result = runner.invoke(args=["demo", "--subjects", "12"])
    assert result.exit_code == 0, result.output
    assert "DEMO logins" in result.output and "Demo-" in result.output
    codes = sorted(db.session.scalars(sa.select(Site.code)))
    assert codes == ["01", "02"]
    names = set(db.session.scalars(sa.select(Site.name)))
    assert all("DEMO" in n for n in names)
    subjects = db.session.scalars(sa.select(Subject)).all()
    assert len(subjects) == 12 and {s.site.code for s in subjects} == {"01", "02"}
    enrolments = audit_rows(action="subject.create", field="code")
    assert len(enrolments) == 12 and {r.username for r in enrolments} == {"demo-loader"}
    roles = {g.role for u in db.session.scalars(sa.select(User)) for g in u.grants}
    assert roles == {"investigator", "monitor", "data_manager", "auditor", "admin"}
    again = runner.invoke(args=["demo"])
    assert "already loaded" in again.output
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Subject)) == 12


def test_demo_refuses_to_run_in_a_production_configuration(runner, app, monkeypatch, db):
    monkeypatch.setitem(app.config, "ENV_NAME", "production")
    before = db.session.scalar(sa.select(sa.func.count()).select_from(AuditRecord))
    result = runner.invoke(args=["demo"])
    assert result.exit_code != 0 and "never loaded into a production" in result.output
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditRecord)) == before


def test_the_roles_table_is_printed_from_the_code(runner):
    result = runner.invoke(args=["access", "table"])
    assert "| `users.manage` |" in result.output and "investigator" in result.output


def test_ecrf_and_flask_app_wsgi_give_the_same_commands(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite'}",
           "ECRF_CONFIG": "development"}
    bin_dir = os.path.dirname(sys.executable)
    for command in ([f"{bin_dir}/ecrf"], [f"{bin_dir}/flask", "--app", "wsgi"]):
        out = subprocess.run([*command, "--help"], env=env, capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(__file__)), check=True).stdout
        for group in ("users", "demo", "audit", "db", "run", "sites"):
            assert f"  {group}" in out, (command, group)
    upgraded = subprocess.run([f"{bin_dir}/ecrf", "db", "upgrade"], env=env, capture_output=True,
                              text=True, check=False)
    assert upgraded.returncode == 0, upgraded.stderr
    verify = subprocess.run([f"{bin_dir}/ecrf", "audit", "verify"], env=env, capture_output=True,
                            text=True, check=False)
    assert verify.returncode == 0 and "Chain OK" in verify.stdout


def test_crf_values_entered_from_the_cli_get_the_same_checks_and_audit(runner, make, db):
    subject = make.subject("01")
    make.user("inv", role="investigator", site="01")
    bad = runner.invoke(args=["crf", "enter", subject.code, "D1", "toy_vitals", "weight=500",
                              "--as", "inv"])
    assert bad.exit_code == 1 and "must be between 1 and 400 kg; found 500" in bad.output
    soft = runner.invoke(args=["crf", "enter", subject.code, "D1", "toy_vitals", "weight=210",
                               "fever=N", "--as", "inv"])
    assert soft.exit_code == 1 and "TOY_VITALS-weight-RANGE" in soft.output
    done = runner.invoke(args=["crf", "enter", subject.code, "D1", "toy_vitals", "weight=210",
                               "fever=N", "devices=ECG,SPO2", "--confirm", "TOY_VITALS-weight-RANGE",
                               "--as", "inv"])
    assert done.exit_code == 0 and "saved" in done.output, done.output
    rows = audit_rows(action="item.create", subject=subject.code)
    assert {r.item for r in rows} >= {"weight", "fever", "devices"}
    assert all(r.username == "inv" and r.role == "investigator" for r in rows)
    change = runner.invoke(args=["crf", "enter", subject.code, "D1", "toy_vitals", "weight=80",
                                 "fever=N", "devices=ECG,SPO2", "--as", "inv"])
    assert change.exit_code == 1 and "needs --reason" in change.output
    monitor_refused = runner.invoke(args=["crf", "enter", subject.code, "D1", "toy_vitals",
                                          "weight=80", "--as", "nobody"])
    assert monitor_refused.exit_code != 0


def test_the_demo_also_does_review_work_through_the_review_services(runner, db):
    from ecrf.review.models import DelegationEntry, ItemVerification, Query, Signature

    result = runner.invoke(args=["demo", "--subjects", "16"])
    assert result.exit_code == 0, result.output
    states = set(db.session.scalars(sa.select(Query.state)))
    assert {"open", "answered", "closed"} & states and len(states) >= 2
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ItemVerification)) > 0
    pis = db.session.scalars(sa.select(DelegationEntry)).all()
    assert {(e.user.username, e.task) for e in pis} == {("investigator", "pi"), ("investigator02", "pi")}
    signed = db.session.scalars(sa.select(Signature)).all()
    assert signed and {s.signer.username for s in signed} <= {"investigator", "investigator02"}
    manual = db.session.scalars(sa.select(Query).where(Query.origin == "manual")).all()
    assert manual and {q.raised_by.username for q in manual} <= {"monitor", "monitor02"}
    system = db.session.scalars(sa.select(Query).where(Query.origin == "system")).all()
    assert all(q.check_id for q in system)  # soft checks the loader confirmed
