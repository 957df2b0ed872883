"""Where a web export runs: a Procrastinate job on PostgreSQL, a thread of the app on SQLite.

On PostgreSQL (production: several app servers, no local state) a web export is a Procrastinate
job kept in the same database. It outlives the app server that queued it and runs on whichever
worker (``ecrf export worker``) takes it first; a job whose worker died (no heartbeat) is run
again when a worker starts. The embedded SQLite default has no queue: the export runs in a
background thread of the app server that received the request.

``EXPORTS_QUEUE`` chooses: ``"auto"`` (Procrastinate on PostgreSQL, a thread on SQLite),
``"procrastinate"`` or ``"thread"``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import procrastinate
import sqlalchemy as sa
from flask import Flask, current_app

from ecrf.audit.unit_of_work import Actor
from ecrf.extensions import db

log = logging.getLogger(__name__)

QUEUE = "exports"
TASK = "ecrf.export"


def backend(app: Flask) -> str:
    """``"procrastinate"`` or ``"thread"``, as configured for this app's database."""
    chosen = app.config.get("EXPORTS_QUEUE", "auto")
    if chosen == "auto":
        with app.app_context():
            dialect = db.engine.dialect.name
        return "procrastinate" if dialect == "postgresql" else "thread"
    if chosen not in ("procrastinate", "thread"):
        raise ValueError(f"EXPORTS_QUEUE must be auto, procrastinate or thread, not {chosen!r}")
    return chosen


def conninfo(url: sa.URL) -> str:
    """The libpq connection string of the app's database (Procrastinate drives psycopg itself)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def procrastinate_app(app: Flask) -> procrastinate.App:
    """The Procrastinate app of a Flask app: its connector and the export task (built once)."""
    existing = app.extensions.get("procrastinate")
    if existing is not None:
        return existing
    with app.app_context():
        url = db.engine.url
    queue_app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=conninfo(url), min_size=1, max_size=2))

    @queue_app.task(name=TASK, queue=QUEUE)
    def run_export(job_id: int, actor: dict) -> None:
        from ecrf.exports import jobs

        with app.app_context():
            try:
                jobs.execute(Actor(**actor), job_id)
            finally:
                db.session.remove()

    app.extensions["procrastinate"] = queue_app
    return queue_app


def defer(job_id: int, actor: Actor) -> None:
    """Queue the export job ``job_id`` (already committed) to run as ``actor``."""
    app = current_app._get_current_object()
    queue_app = procrastinate_app(app)
    with queue_app.open():
        queue_app.tasks[TASK].defer(job_id=job_id, actor=dataclasses.asdict(actor))


def run_worker(app: Flask, *, once: bool = False, name: str | None = None) -> int:
    """Run export jobs until stopped (``once``: until the queue is empty). Jobs left "doing" by
    a worker that stopped sending its heartbeat are queued again first. Returns how many."""
    queue_app = procrastinate_app(app)

    async def work() -> int:
        async with queue_app.open_async():
            manager = queue_app.job_manager
            stalled = list(await manager.get_stalled_jobs())
            for job in stalled:
                log.warning("export job %s stalled on a stopped worker: queued again", job.id)
                await manager.retry_job(job)
            await queue_app.run_worker_async(queues=[QUEUE], wait=not once, name=name,
                                             install_signal_handlers=not once)
            return len(stalled)

    return asyncio.run(work())
