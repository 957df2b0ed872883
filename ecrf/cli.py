"""The ``ecrf`` console script: a thin shell over the same audited services the views call.

Every write is attributed to a named user (``--as USERNAME``) or a named system account.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import FlaskGroup

from ecrf.access import services as access_services
from ecrf.access.grants import Access
from ecrf.access.models import Grant
from ecrf.access.roles import ROLES, markdown_table
from ecrf.audit import chain
from ecrf.audit.reasons import REASON_CODES, Reason
from ecrf.audit.unit_of_work import Actor
from ecrf.auth import services as auth_services
from ecrf.extensions import db
from ecrf.study import services as study_services
from ecrf.study.models import Site


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _actor(username: str | None, permission: str) -> Actor:
    if not username:
        _fail("Say who acts: --as USERNAME (a user holding " + permission + ").")
    user = auth_services.get_user(username)
    if user is None or not user.is_active:
        _fail(f"No active user {username!r}.")
    access = Access.for_user(user, permission)
    if not access:
        _fail(f"{username} does not hold the permission {permission}.")
    return access.actor()


def _user(username: str):
    user = auth_services.get_user(username)
    if user is None or user.is_system:
        _fail(f"No user {username!r}.")
    return user


def _site(code: str) -> Site:
    site = db.session.scalar(sa.select(Site).where(Site.code == code))
    if site is None:
        _fail(f"No site {code!r}.")
    return site


def _reason(code: str, text: str) -> Reason:
    try:
        return Reason(code, text)
    except ValueError as e:
        _fail(str(e))


as_option = click.option("--as", "as_user", metavar="USERNAME", help="The user who acts.")
reason_options = [
    click.option("--reason", "reason_code", type=click.Choice(list(REASON_CODES)),
                 default="administrative", show_default=True),
    click.option("--explain", "reason_text", default="", help="Free text for the reason."),
]


def with_reason(f):
    for option in reversed(reason_options):
        f = option(f)
    return f


# --- users ---------------------------------------------------------------------------------

users = click.Group("users", help="Accounts and role grants.")


def _has_active_admin() -> bool:
    return any(
        g.user.is_active for g in db.session.scalars(
            sa.select(Grant).where(Grant.role == "admin", Grant.revoked_at.is_(None)))
    )


@users.command("create")
@click.argument("username")
@click.option("--full-name", required=True)
@click.option("--email", default=None)
@click.option("--role", type=click.Choice(list(ROLES)), default=None)
@click.option("--site", "site_code", default=None, help="Site code for site-scoped roles.")
@as_option
def users_create(username, full_name, email, role, site_code, as_user):
    """Create an account with a temporary password (printed once).

    On a database without an active administrator, ``--role admin`` without ``--as`` creates the
    first administrator, attributed to the system account.
    """
    if as_user is None and role == "admin" and not _has_active_admin():
        actor = auth_services.system_actor()
    else:
        actor = _actor(as_user, "users.manage")
    site = _site(site_code) if site_code else None
    try:
        user, temp = auth_services.create_user(actor, username=username, full_name=full_name,
                                               email=email)
        if role:
            access_services.grant_role(actor, user, role, site)
    except (auth_services.AccountError, access_services.GrantError) as e:
        _fail(str(e))
    click.echo(f"Created {user.username}" + (f" as {role}" if role else "") + ".")
    click.echo(f"Temporary password (must be changed at first login): {temp}")


@users.command("list")
def users_list():
    """List accounts with their active grants."""
    from ecrf.access.grants import active_grants
    from ecrf.auth.models import User

    for user in db.session.scalars(sa.select(User).order_by(User.username)):
        grants = ", ".join(f"{g.role}@{g.site.code if g.site else 'study'}"
                           for g in active_grants(user))
        state = "system" if user.is_system else ("active" if user.is_active else "deactivated")
        lock = " LOCKED" if user.locked_at else ""
        click.echo(f"{user.username:24} {state}{lock:8} {grants}")


@users.command("deactivate")
@click.argument("username")
@with_reason
@as_option
def users_deactivate(username, reason_code, reason_text, as_user):
    """Deactivate an account (never deleted; the username is never reused)."""
    actor = _actor(as_user, "users.manage")
    try:
        auth_services.deactivate_user(actor, _user(username), _reason(reason_code, reason_text))
    except auth_services.AccountError as e:
        _fail(str(e))
    click.echo(f"{username} is deactivated.")


@users.command("unlock")
@click.argument("username")
@with_reason
@as_option
def users_unlock(username, reason_code, reason_text, as_user):
    """Unlock an account locked after failed logins."""
    actor = _actor(as_user, "users.manage")
    try:
        auth_services.unlock_user(actor, _user(username), _reason(reason_code, reason_text))
    except auth_services.AccountError as e:
        _fail(str(e))
    click.echo(f"{username} is unlocked.")


@users.command("reset-password")
@click.argument("username")
@with_reason
@as_option
def users_reset_password(username, reason_code, reason_text, as_user):
    """Force a password reset: a temporary password to be changed at next login."""
    actor = _actor(as_user, "users.manage")
    temp = auth_services.reset_password(actor, _user(username), _reason(reason_code, reason_text))
    click.echo(f"Temporary password for {username} (must be changed at login): {temp}")


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@users.command("grant")
@click.argument("username")
@click.argument("role", type=click.Choice(list(ROLES)))
@click.option("--site", "site_code", default=None)
@click.option("--valid-from", default=None, help="ISO 8601; UTC when no zone is given.")
@click.option("--valid-to", default=None, help="ISO 8601; UTC when no zone is given.")
@as_option
def users_grant(username, role, site_code, valid_from, valid_to, as_user):
    """Grant a role (on a site for investigators and monitors)."""
    actor = _actor(as_user, "users.manage")
    site = _site(site_code) if site_code else None
    try:
        grant = access_services.grant_role(actor, _user(username), role, site,
                                           valid_from=_when(valid_from), valid_to=_when(valid_to))
    except (access_services.GrantError, ValueError) as e:
        _fail(str(e))
    click.echo(f"Grant {grant.id}: {username} is {role}" + (f" at site {site_code}" if site else ""))


@users.command("revoke")
@click.argument("grant_id", type=int)
@with_reason
@as_option
def users_revoke(grant_id, reason_code, reason_text, as_user):
    """Revoke a grant (kept, with its end, in the trail)."""
    actor = _actor(as_user, "users.manage")
    grant = db.session.get(Grant, grant_id)
    if grant is None:
        _fail(f"No grant {grant_id}.")
    try:
        access_services.revoke_grant(actor, grant, _reason(reason_code, reason_text))
    except access_services.GrantError as e:
        _fail(str(e))
    click.echo(f"Grant {grant_id} is revoked.")


# --- sites ---------------------------------------------------------------------------------

sites = click.Group("sites", help="Study sites.")


@sites.command("create")
@click.argument("code")
@click.argument("name")
@click.option("--timezone", default="Europe/Paris", show_default=True)
@as_option
def sites_create(code, name, timezone, as_user):
    actor = _actor(as_user, "sites.manage")
    try:
        study_services.create_site(actor, code, name, timezone)
    except study_services.StudyError as e:
        _fail(str(e))
    click.echo(f"Site {code} created (not yet activated).")


@sites.command("activate")
@click.argument("code")
@as_option
def sites_activate(code, as_user):
    actor = _actor(as_user, "sites.manage")
    try:
        study_services.activate_site(actor, _site(code))
    except study_services.StudyError as e:
        _fail(str(e))
    click.echo(f"Site {code} is activated.")


# --- audit ---------------------------------------------------------------------------------

audit = click.Group("audit", help="The audit trail.")


def _parse_head(value: str | None) -> tuple[int, str] | None:
    if not value:
        return None
    seq, _, digest = value.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise click.BadParameter("expected SEQ:HASH, e.g. 1234:" + "ab" * 32)
    return int(seq), digest.lower()


@audit.command("verify")
@click.option("--expect-head", default=None, metavar="SEQ:HASH",
              help="A head published earlier: the chain must still contain it.")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Check an export (ecrf audit export) from the file alone.")
def audit_verify(expect_head, path):
    """Recompute the hash chain; exit non-zero naming the first bad seq."""
    if path:
        _verify_file(path, _parse_head(expect_head))
        return
    result = chain.verify_db(db.session, expect_head=_parse_head(expect_head))
    click.echo(f"Rows checked: {result.rows_checked}")
    click.echo(f"Head: {result.head_seq}:{result.head_hash}")
    if result.redacted:
        click.echo(f"Redacted values (masked by a recorded redaction): {len(result.redacted)}")
    if not result.ok:
        seq, why = result.problems[0]
        click.echo(f"FAILED at seq {seq}: {why}", err=True)
        sys.exit(1)
    click.echo("Chain OK")


def _verify_file(path: str, expect_head) -> None:
    from ecrf.audit.export import verify_file

    found = verify_file(path)
    result = found.result
    click.echo(f"Rows checked: {result.rows_checked} ({result.stubs} outside the export's scope, "
               "as stubs)")
    if found.head is not None:
        click.echo(f"Head stated: {found.head[0]}:{found.head[1]}")
    if found.ok and expect_head is not None and found.head != expect_head:
        found.problem = (1, f"the file's head is not the expected {expect_head[0]}:{expect_head[1]}")
    if not found.ok:
        line, why = found.problem
        click.echo(f"FAILED at line {line}: {why}", err=True)
        sys.exit(1)
    click.echo("Chain OK")


@audit.command("export")
@click.option("--site", "site_code", default=None, help="Rows of one site (others as stubs).")
@click.option("--from", "since", default=None, metavar="UTC-TIME", help="Rows recorded from then.")
@click.option("--to", "until", default=None, metavar="UTC-TIME", help="Rows recorded before then.")
@click.option("--as", "as_user", metavar="USERNAME", required=True, help="Who exports (audit.view).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True)
def audit_export(site_code, since, until, as_user, output):
    """The audit trail as JSON lines, checkable offline (ecrf audit verify --file)."""
    from ecrf.audit.export import filters_from
    from ecrf.exports.cli import run_export

    try:
        filters_from({"from": since, "to": until})
    except ValueError as e:
        _fail(f"Times are ISO 8601, e.g. 2026-11-25T08:00:00Z ({e}).")
    if site_code:
        _site(site_code)
    run_export("audit_jsonl", None, None, as_user, output,
               options={"site": site_code, "from": since, "to": until}, permission="audit.view")


# --- data entry ----------------------------------------------------------------------------

crf_cli = click.Group("crf", help="Case report forms.")


@crf_cli.command("list")
def crf_list():
    """The CRF definitions and their versions."""
    registry = current_app.extensions["ecrf.registry"]
    for key, versions in sorted(registry.crfs.items()):
        current = registry.current(key)
        click.echo(f"{key:24} {current.oid:24} v{','.join(map(str, sorted(versions)))}  "
                   f"{current.title}")


@crf_cli.command("enter")
@click.argument("subject_code")
@click.argument("visit")
@click.argument("crf_key")
@click.argument("values", nargs=-1, metavar="ITEM=VALUE...")
@click.option("--repeat", "form_repeat", type=int, default=1,
              help="Instance of a repeating form (0 = a new one).")
@click.option("--null", "nulls", multiple=True, metavar="ITEM=FLAVOR",
              help="A null flavor instead of a value: NI, UNK, NA or ASKU.")
@click.option("--confirm", "confirmed", multiple=True, metavar="CHECK_ID",
              help="Confirm a soft check.")
@click.option("--reason", "reason_code", type=click.Choice(list(REASON_CODES)), default=None)
@click.option("--explain", "reason_text", default="")
@as_option
def crf_enter(subject_code, visit, crf_key, values, form_repeat, nulls, confirmed, reason_code,
              reason_text, as_user):
    """Enter CRF values with the same parsing, checks and audit as the web form."""
    from ecrf.casebook import services as casebook
    from ecrf.study.models import Subject

    subject = db.session.scalar(sa.select(Subject).where(Subject.code == subject_code))
    if subject is None:
        _fail(f"No subject {subject_code!r}.")
    user = auth_services.get_user(as_user) if as_user else None
    actor_access = Access.for_user(user, "crf.enter") if user is not None else None
    if not actor_access or not actor_access.covers(subject.site_id):
        _fail("Say who enters the data: --as USERNAME, an investigator of the subject's site.")
    submitted = casebook.Submitted()
    for pair in values:
        key, sep, value = pair.partition("=")
        if not sep:
            _fail(f"Expected ITEM=VALUE, found {pair!r}.")
        if "," in value and key in _multi_items(crf_key):
            submitted.values[key] = value.split(",")
        else:
            submitted.values[key] = value
    for pair in nulls:
        key, _, flavor = pair.partition("=")
        submitted.null_flavors[key] = (flavor, "")
    reason = _reason(reason_code, reason_text) if reason_code else None
    result = casebook.save_form(actor_access.actor(subject.site_id), subject, crf_key,
                                casebook.Slot(visit, 1, form_repeat or None), submitted,
                                reason=reason, confirmed=set(confirmed))
    for key, messages in result.errors.items():
        for message in messages:
            click.echo(f"{key}: {message}", err=True)
    for finding in result.warnings:
        click.echo(f"to confirm ({finding.check_id}): {finding.message}", err=True)
    if result.outcome == "needs_reason":
        click.echo(f"Changing saved values ({', '.join(result.changed)}) needs --reason.", err=True)
    if not result.ok:
        sys.exit(1)
    click.echo(f"{result.outcome}: {subject_code} {visit} {crf_key} #{result.instance.form_repeat} "
               f"({result.instance.status})")


def _multi_items(crf_key: str) -> set[str]:
    crf = current_app.extensions["ecrf.registry"].current(crf_key)
    return {i.key for i in crf.items if i.type.multiple}


# --- access --------------------------------------------------------------------------------

access = click.Group("access", help="Roles and permissions.")


@access.command("table")
def access_table():
    """Print the roles x permissions table (Markdown), generated from the code."""
    click.echo(markdown_table(), nl=False)


# --- demo ----------------------------------------------------------------------------------


@click.command("demo")
@click.option("--subjects", "n_subjects", type=int, default=None,
              help="Synthetic subjects to add, spread over the sites (default 10 on first load).")
def demo(n_subjects):
    """Load the DEMO study (2 sites, one user per role) and synthetic subjects."""
    from ecrf.demo import load_demo

    if current_app.config.get("ENV_NAME") == "production":
        _fail("Refused: demo data are never loaded into a production configuration.")
    load_demo(n_subjects, echo=click.echo)


# --- freeze and lock -----------------------------------------------------------------------

closure_cli = click.Group("closure", help="Freeze and lock the study, a site or a subject.")


def _scope(site_code: str | None, subject_code: str | None):
    from ecrf.review.closure import Scope
    from ecrf.study.models import Subject

    if site_code and subject_code:
        _fail("Give --site or --subject, not both.")
    if subject_code:
        subject = db.session.scalar(sa.select(Subject).where(Subject.code == subject_code))
        if subject is None:
            _fail(f"No subject {subject_code!r}.")
        return Scope.of_subject(subject)
    if site_code:
        return Scope.of_site(_site(site_code))
    return Scope.study()


def _closure_command(action: str):
    @closure_cli.command(action)
    @click.option("--site", "site_code", default=None, help="A site (default: the whole study).")
    @click.option("--subject", "subject_code", default=None, help="A subject.")
    @with_reason
    @as_option
    def command(site_code, subject_code, reason_code, reason_text, as_user):
        from ecrf.review import closure

        actor = _actor(as_user, f"closure.{action}")
        scope = _scope(site_code, subject_code)
        try:
            closure.change(actor, scope, action, _reason(reason_code, reason_text)
                           if reason_text or action in ("freeze", "lock") else None)
        except closure.ClosureChangeError as e:
            _fail(str(e))
        click.echo(f"{action}: {scope.describe()}")

    command.__doc__ = {"freeze": "Freeze: no data change; queries, SDV and signing go on.",
                       "unfreeze": "Unfreeze (needs --explain).",
                       "lock": "Lock: nothing changes.",
                       "unlock": "Unlock (needs --explain)."}[action]
    return command


for _action in ("freeze", "unfreeze", "lock", "unlock"):
    _closure_command(_action)


@closure_cli.command("status")
def closure_status():
    """Every scope that is frozen or locked."""
    from ecrf.review import closure

    states = [s for s in closure.overview().values() if s.frozen or s.locked]
    for state in sorted(states, key=lambda s: s.scope):
        flags = [f for f in ("frozen", "locked") if getattr(state, f)]
        click.echo(f"{state.scope}: {', '.join(flags)}")
    if not states:
        click.echo("Nothing is frozen or locked.")


def register_commands(app) -> None:
    from ecrf.exports.cli import export_cli

    for command in (users, sites, audit, access, crf_cli, demo, closure_cli, export_cli):
        app.cli.add_command(command)
    # backup and restore (docs/backup.md)
    from ecrf.backup import backup_cli

    app.cli.add_command(backup_cli)
    # validation evidence (docs/compliance.md)
    from ecrf.validation.cli import validate

    app.cli.add_command(validate)


def _create_app():
    from ecrf import create_app

    return create_app()


cli = FlaskGroup(create_app=_create_app, help="ecrf: electronic case report forms.")


def main() -> None:
    cli.main(prog_name="ecrf")
