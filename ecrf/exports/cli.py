"""``ecrf export ...``: the exports from the command line, through the same jobs as the web."""

from __future__ import annotations

import shutil
import sys

import click

from ecrf.access.grants import Access
from ecrf.auth import services as auth_services
from ecrf.exports import jobs

export_cli = click.Group("export", help="Export the data: CDISC ODM, analysis datasets, PDF casebooks.")

scope_options = [
    click.option("--site", "site_code", default=None, help="One site (default: the whole study)."),
    click.option("--subject", "subject_code", default=None, help="One subject."),
    click.option("--as", "as_user", metavar="USERNAME", required=True,
                 help="The user who exports (holding export.run on the scope)."),
    click.option("-o", "--output", "output", type=click.Path(dir_okay=False), required=True,
                 help="Where to write the file."),
]


def with_scope(f):
    for option in reversed(scope_options):
        f = option(f)
    return f


def run_export(kind: str, site_code, subject_code, as_user, output, options=None,
               permission: str = "export.run") -> None:
    """Check who asks and for what, run the export with a progress bar, copy the file out."""
    user = auth_services.get_user(as_user)
    if user is None or not user.is_active:
        raise click.ClickException(f"No active user {as_user!r}.")
    try:
        scope = jobs.Scope.from_codes(site_code, subject_code)
    except LookupError as e:
        raise click.ClickException(str(e)) from None
    access = Access.for_user(user, permission)
    if not access or not access.covers(scope.site_id):
        raise click.ClickException(f"{as_user} does not hold {permission} on {scope.label}.")
    with click.progressbar(length=100, label=f"Exporting {kind} ({scope.label})",
                           file=sys.stderr) as bar:
        shown = {"percent": 0}

        def progress(done: int, total: int) -> None:
            percent = int(100 * done / total) if total else 0
            if percent > shown["percent"]:
                bar.update(percent - shown["percent"])
                shown["percent"] = percent

        job = jobs.export_now(access.actor(scope.site_id), kind, scope, options=options,
                              progress=progress)
        bar.update(100 - shown["percent"])
    shutil.copyfile(jobs.file_path(job), output)
    click.echo(f"{output}: {job.size} bytes, sha256 {job.sha256} (export #{job.id})")


# --- the commands (the writers live in their own modules) -------------------------------------


@export_cli.command("odm")
@click.option("--snapshot/--transactional", "snapshot", default=True,
              help="The current values (default), or every change with its audit record.")
@with_scope
def odm(snapshot, site_code, subject_code, as_user, output):
    """CDISC ODM 1.3.2: the current data (Snapshot) or their whole history from the audit trail
    (Transactional), of the study, a site or a subject."""
    run_export("odm_snapshot" if snapshot else "odm_transactional", site_code, subject_code,
               as_user, output)


@export_cli.command("datasets")
@with_scope
def datasets(site_code, subject_code, as_user, output):
    """Analysis datasets: one table per CRF and a data dictionary, as CSV, SAS transport (.xpt v5),
    SPSS (.sav) and Stata (.dta), zipped with a manifest (rows and SHA-256 of each file)."""
    run_export("datasets", site_code, subject_code, as_user, output)


@export_cli.command("pdf")
@with_scope
def pdf(site_code, subject_code, as_user, output):
    """PDF casebooks: a ZIP of one PDF per subject (a subject, a site or the study)."""
    run_export("pdf", site_code, subject_code, as_user, output)


jobs.load_writers()


@export_cli.command("worker")
@click.option("--once", is_flag=True, help="Stop when the queue is empty (default: run until stopped).")
@click.option("--name", default=None, help="The worker's name in the logs.")
def worker(once, name):
    """Run the web exports queued on PostgreSQL (several workers may run, on any machine)."""
    from flask import current_app

    from ecrf.exports import queue

    app = current_app._get_current_object()
    if queue.backend(app) != "procrastinate":
        raise click.ClickException("Web exports run in the app server's threads on this database "
                                   "(EXPORTS_QUEUE); there is no queue to work on.")
    requeued = queue.run_worker(app, once=once, name=name)
    if requeued:
        click.echo(f"{requeued} export job(s) left by a stopped worker were run again.")
