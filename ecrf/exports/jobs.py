"""Running an export: one path for the CLI and the web, streamed to a file, recorded.

Each kind of export registers a *writer* (``@writer("odm_snapshot")``): a function that streams
the export of a scope into a binary file and reports its progress. ``export_now`` runs one in the
caller (the CLI, with a progress bar); ``request`` queues one for the web, never run inside the
request: a Procrastinate job on PostgreSQL, a background thread on SQLite (``ecrf.exports.queue``).
Either way the request and the finished file are audit records (who, what, which scope, when;
the file's size and SHA-256), and the file is kept in ``EXPORTS_DIR`` with its digest in
``export_job``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from flask import Flask, current_app

from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import Actor, unit_of_work
from ecrf.database import utcnow
from ecrf.exports import queue
from ecrf.exports.models import EXPORT_KINDS, ExportJob
from ecrf.extensions import db
from ecrf.study.models import Site, Subject

log = logging.getLogger(__name__)

#: progress(done, total): how far a writer is (total may be 0 when unknown)
Progress = Callable[[int, int], None]
#: writer(scope, out, progress, options): streams one export of the scope into ``out``; the
#: options carry the ``export_job`` id (who asked, when)
Writer = Callable[["Scope", IO[bytes], Progress, dict[str, Any]], None]

WRITERS: dict[str, Writer] = {}
#: the file name suffix of each kind
SUFFIX = {"odm_snapshot": ".xml", "odm_transactional": ".xml", "datasets": ".zip",
          "pdf": ".zip", "audit_jsonl": ".jsonl", "audit_csv": ".csv"}


def load_writers() -> None:
    """Import the modules whose writers register themselves."""
    import ecrf.audit.export
    import ecrf.exports.datasets
    import ecrf.exports.odm
    import ecrf.exports.pdf  # noqa: F401


def writer(kind: str):
    """Register the writer of one kind of export."""
    if kind not in EXPORT_KINDS:
        raise ValueError(f"unknown export kind {kind!r}")

    def register(fn: Writer) -> Writer:
        WRITERS[kind] = fn
        return fn

    return register


@dataclass(frozen=True)
class Scope:
    """The whole study, one site, or one subject."""

    site: Site | None = None
    subject: Subject | None = None

    @property
    def site_id(self) -> int | None:
        if self.subject is not None:
            return self.subject.site_id
        return self.site.id if self.site is not None else None

    def subjects(self) -> sa.Select:
        """The subjects in scope, in code order (stream them: ``db.session.scalars(...)``)."""
        stmt = sa.select(Subject).order_by(Subject.code)
        if self.subject is not None:
            return stmt.where(Subject.id == self.subject.id)
        if self.site is not None:
            return stmt.where(Subject.site_id == self.site.id)
        return stmt

    @property
    def label(self) -> str:
        if self.subject is not None:
            return f"subject {self.subject.code}"
        if self.site is not None:
            return f"site {self.site.code}"
        return "study"

    @classmethod
    def from_codes(cls, site_code: str | None = None, subject_code: str | None = None) -> Scope:
        """The scope named by codes; ``LookupError`` if one does not exist."""
        if subject_code:
            subject = db.session.scalar(sa.select(Subject).where(Subject.code == subject_code))
            if subject is None:
                raise LookupError(f"No subject {subject_code!r}.")
            return cls(subject=subject)
        if site_code:
            site = db.session.scalar(sa.select(Site).where(Site.code == site_code))
            if site is None:
                raise LookupError(f"No site {site_code!r}.")
            return cls(site=site)
        return cls()


def exports_dir() -> Path:
    folder = Path(current_app.config.get("EXPORTS_DIR") or Path(current_app.instance_path) / "exports")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _path(job: ExportJob) -> Path:
    return exports_dir() / job.file_name


def _record(uow, action: str, job: ExportJob, new: str | None = None) -> None:
    uow.record(action, "export", job.id, field=job.kind,
               path={"site": job.site_code, "subject": job.subject_code}, new=new)


def _new_job(actor: Actor, kind: str, scope: Scope, options: dict | None) -> ExportJob:
    if kind not in WRITERS:
        raise ValueError(f"no writer for export kind {kind!r}")
    site = scope.subject.site if scope.subject is not None else scope.site
    with unit_of_work(actor, Reason.system(f"export {kind}")) as uow:
        job = ExportJob(kind=kind, site_code=site.code if site is not None else None,
                        subject_code=scope.subject.code if scope.subject else None,
                        options=json.dumps(options, sort_keys=True) if options else None,
                        requested_by_id=actor.user_id)
        db.session.add(job)
        db.session.flush()
        job.file_name = f"{job.id:06d}-{kind}-{scope.label.replace(' ', '-')}{SUFFIX[kind]}"
        _record(uow, "export.requested", job, f"{kind} {scope.label}")
    return job


def _run(actor: Actor, job: ExportJob, scope: Scope, progress: Progress | None = None) -> ExportJob:
    """Write the file under a temporary name, digest it, then rename it: a failed export leaves
    no file that looks complete. The job's state (not clinical data, so not audited column by
    column) is written through the unit of work like everything else; its end is recorded in the
    same transaction as the audit record that says so."""
    reason = Reason.system(f"export {job.kind}")
    with unit_of_work(actor, reason):
        job.state, job.started_at = "running", utcnow()
    final = _path(job)
    partial = final.with_suffix(final.suffix + ".part")
    last = {"percent": -1, "at": 0.0}

    def report(done: int, total: int) -> None:
        """Written at most once a second: a commit per percent cost more than a small export.
        Progress is not clinical data, so PostgreSQL need not wait for the disk to keep it."""
        percent = min(99, int(100 * done / total)) if total else 0
        now = time.monotonic()
        if percent != last["percent"] and (last["percent"] < 0 or now - last["at"] >= 1.0):
            last.update(percent=percent, at=now)
            with unit_of_work(actor, reason):
                if db.session.get_bind().dialect.name == "postgresql":
                    db.session.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
                db.session.execute(sa.update(ExportJob).where(ExportJob.id == job.id)
                                   .values(progress=percent))
        if progress is not None:
            progress(done, total)

    try:
        with partial.open("wb") as out:
            options = {**(json.loads(job.options) if job.options else {}), "export_job": job.id}
            WRITERS[job.kind](scope, out, report, options)
        digest, size = hashlib.sha256(), 0
        with partial.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        partial.replace(final)
    except Exception as e:
        db.session.rollback()
        partial.unlink(missing_ok=True)
        with unit_of_work(actor, reason) as uow:
            job = db.session.get(ExportJob, job.id)
            job.state, job.finished_at, job.error = "failed", utcnow(), str(e)[:2000]
            _record(uow, "export.failed", job, str(e)[:500])
        raise
    with unit_of_work(actor, reason) as uow:
        job = db.session.get(ExportJob, job.id)
        job.state, job.progress, job.finished_at = "done", 100, utcnow()
        job.size, job.sha256 = size, digest.hexdigest()
        _record(uow, "export.done", job, f"{job.file_name} {size} bytes sha256:{job.sha256}")
    return job


def export_now(actor: Actor, kind: str, scope: Scope, *, options: dict | None = None,
               progress: Progress | None = None) -> ExportJob:
    """Run an export in the caller (the CLI); returns the finished job (its file in
    ``file_path(job)``)."""
    return _run(actor, _new_job(actor, kind, scope, options), scope, progress)


def job_scope(job: ExportJob) -> Scope:
    """The scope a job was asked for (a subject's job also names its site)."""
    if job.subject_code:
        return Scope.from_codes(None, job.subject_code)
    return Scope.from_codes(job.site_code, None)


def file_path(job: ExportJob) -> Path:
    return _path(job)


def request(actor: Actor, kind: str, scope: Scope, options: dict | None = None) -> ExportJob:
    """Queue an export from the web: on the job queue (PostgreSQL) or in a background thread of
    this process (SQLite). The job row is committed before it is queued."""
    job = _new_job(actor, kind, scope, options)
    app = current_app._get_current_object()
    if app.config.get("EXPORTS_RUN_INLINE"):  # tests: run it now, in the request's thread
        execute(actor, job.id)
        return db.session.get(ExportJob, job.id)
    if queue.backend(app) == "procrastinate":
        queue.defer(job.id, actor)
    else:
        threading.Thread(target=_run_queued, args=(app, actor, job.id), daemon=True,
                         name=f"export-{job.id}").start()
    return job


def _run_queued(app: Flask, actor: Actor, job_id: int) -> None:
    with app.app_context():
        try:
            execute(actor, job_id)
        finally:
            db.session.remove()


def execute(actor: Actor, job_id: int) -> None:
    """Run a queued job (from a worker or a thread). A job found already finished is left as it
    is; one found "running" was cut short (its worker stopped) and is run again from the start."""
    job = db.session.get(ExportJob, job_id)
    if job is None or job.state in ("done", "failed"):
        log.warning("export %s: nothing to run (%s)", job_id, job.state if job else "no such job")
        return
    try:
        _run(actor, job, job_scope(job))
    except Exception:
        log.exception("export %s failed", job_id)  # recorded on the job and in the audit trail
