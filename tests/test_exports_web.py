"""Exports from the web: asked on a page, run as a background job (never inside the request),
followed on its page, downloaded; each request, file and download is an audit record with the
file's SHA-256; investigators export their own site only."""

from __future__ import annotations

import hashlib
import re
import time

import pytest
import sqlalchemy as sa

from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, save_form
from ecrf.exports import jobs
from ecrf.exports.models import ExportJob
from tests.factories import audit_rows


def _study(make):
    for site in ("01", "02"):
        assert save_form(system_actor(), make.subject(site), "toy_vitals", Slot("D1"),
                         Submitted({"weight": "70", "fever": "N"})).ok


@pytest.mark.requirement("P11-10e-3", "A11-17", "EMA-11", "E6-4.2.2a-iii", "ALCOA-available")
def test_a_data_manager_exports_the_audit_trail_and_downloads_it_with_its_digest(make, login_as,
                                                                                  client, db):
    _study(make)
    login_as("data_manager")
    page = client.get("/exports/").get_data(as_text=True)
    assert 'value="audit_jsonl"' in page
    asked = client.post("/exports/", data={"kind": "audit_jsonl", "site": ""})
    assert asked.status_code == 302
    job_page = client.get(asked.headers["Location"]).get_data(as_text=True)
    digest = re.search(r'<code id="sha256">([0-9a-f]{64})</code>', job_page).group(1)
    with client.get(re.search(r'href="(/exports/\d+/download)"', job_page).group(1)) as download:
        assert download.status_code == 200
        assert hashlib.sha256(download.data).hexdigest() == digest
    for action in ("export.requested", "export.done", "export.downloaded"):
        assert audit_rows(action=action), action
    assert digest in audit_rows(action="export.done")[-1].value.new_value


@pytest.mark.requirement("EMA-8")
def test_an_investigator_exports_only_their_site(make, login_as, client, db, monkeypatch):
    _study(make)
    monkeypatch.setitem(jobs.WRITERS, "odm_snapshot", lambda scope, out, progress, options:
                        out.write(scope.label.encode()))
    login_as("investigator", site="01")
    page = client.get("/exports/").get_data(as_text=True)
    assert 'value="odm_snapshot"' in page and 'value="audit_jsonl"' not in page
    assert '<option value="">' not in page  # not the whole study
    assert client.post("/exports/", data={"kind": "odm_snapshot", "site": "02"}).status_code == 404
    whole = client.post("/exports/", data={"kind": "odm_snapshot", "site": ""},
                        follow_redirects=True)
    assert "Choose one of your sites" in whole.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ExportJob)) == 0
    own = client.post("/exports/", data={"kind": "odm_snapshot", "site": "01"})
    assert own.status_code == 302
    job = db.session.scalars(sa.select(ExportJob)).one()
    assert (job.site_code, job.state) == ("01", "done")
    assert jobs.file_path(job).read_bytes() == b"site 01"


def test_a_study_wide_export_is_not_visible_to_a_site_user(make, login_as, client, db):
    _study(make)
    dm = make.user("dm", role="data_manager")
    from ecrf.access.grants import Access

    job = jobs.export_now(Access.for_user(dm, "audit.view").actor(), "audit_jsonl", jobs.Scope())
    login_as("investigator", site="01")
    assert client.get(f"/exports/{job.id}").status_code == 404
    assert client.get(f"/exports/{job.id}/download").status_code == 404


def test_a_failed_export_leaves_no_file_and_says_why(make, db, monkeypatch):
    dm = make.user("dm", role="data_manager")
    from ecrf.access.grants import Access

    def broken(scope, out, progress, options):
        out.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setitem(jobs.WRITERS, "audit_csv", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        jobs.export_now(Access.for_user(dm, "audit.view").actor(), "audit_csv", jobs.Scope())
    job = db.session.scalars(sa.select(ExportJob).order_by(ExportJob.id.desc())).first()
    assert (job.state, job.error, job.sha256) == ("failed", "disk full", None)
    assert not jobs.file_path(job).exists()
    assert not jobs.file_path(job).with_suffix(jobs.file_path(job).suffix + ".part").exists()
    assert audit_rows(action="export.failed")


def _wait_until_finished(job_id: int) -> ExportJob:
    from ecrf.extensions import db

    db.session.rollback()  # a reader holding SQLite's shared lock would block the job's commits
    for _ in range(200):
        state = db.session.get(ExportJob, job_id).state
        db.session.rollback()
        if state in ("done", "failed"):
            break
        time.sleep(0.05)
    return db.session.get(ExportJob, job_id)


def _request(app, username: str) -> ExportJob:
    from ecrf.access.grants import Access
    from tests.factories import Factories

    app.config["EXPORTS_RUN_INLINE"] = False
    dm = Factories().user(username, role="data_manager")
    return jobs.request(Access.for_user(dm, "audit.view").actor(), "audit_jsonl", jobs.Scope())


def test_on_sqlite_or_when_configured_the_web_export_runs_in_a_background_thread(fresh_app):
    """Not inside the request: the job is queued, then a thread of the app runs it."""
    fresh_app.config["EXPORTS_QUEUE"] = "thread"
    job = _request(fresh_app, "dm-thread")
    assert job.state == "queued"
    done = _wait_until_finished(job.id)
    assert done.state == "done" and done.sha256 and jobs.file_path(done).exists()


def _queue_rows() -> list[tuple]:
    from ecrf.extensions import db

    rows = db.session.execute(sa.text(
        "SELECT task_name, queue_name, status::text, args FROM procrastinate_jobs ORDER BY id")).all()
    db.session.rollback()
    return [tuple(r) for r in rows]


@pytest.mark.postgres_only
def test_on_postgresql_the_web_export_is_a_procrastinate_job_run_by_the_worker(fresh_app,
                                                                              engine_name):
    """The job is kept in the database, not in the app server: nothing runs it until a worker
    (any machine, ``ecrf export worker``) takes it from the queue."""
    if engine_name != "postgresql":
        pytest.skip("the job queue is PostgreSQL's")
    from ecrf.exports import queue

    assert queue.backend(fresh_app) == "procrastinate"
    job = _request(fresh_app, "dm-queue")
    [(task, queue_name, status, args)] = _queue_rows()
    assert (task, queue_name, status, args["job_id"]) == ("ecrf.export", "exports", "todo", job.id)
    time.sleep(0.5)
    from ecrf.extensions import db

    assert db.session.get(ExportJob, job.id).state == "queued"  # no thread of the app ran it
    db.session.rollback()
    result = fresh_app.test_cli_runner().invoke(args=["export", "worker", "--once"])
    assert result.exit_code == 0, result.output
    done = db.session.get(ExportJob, job.id)
    assert done.state == "done" and done.sha256 and jobs.file_path(done).exists()
    assert hashlib.sha256(jobs.file_path(done).read_bytes()).hexdigest() == done.sha256
    assert [r[2] for r in _queue_rows()] == ["succeeded"]
    assert [r.username for r in audit_rows(action="export.done")] == ["dm-queue"]


@pytest.mark.postgres_only
def test_an_export_cut_short_by_a_stopped_worker_is_run_again_by_the_next(fresh_app, engine_name):
    if engine_name != "postgresql":
        pytest.skip("the job queue is PostgreSQL's")
    from ecrf.extensions import db

    job = _request(fresh_app, "dm-stalled")
    # a worker took the job, marked the export running, then died: its heartbeat stopped an
    # hour ago
    with db.engine.begin() as conn:
        worker = conn.exec_driver_sql(
            "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') "
            "RETURNING id").scalar_one()
        conn.exec_driver_sql(f"UPDATE procrastinate_jobs SET status = 'doing', worker_id = {worker}")
        conn.exec_driver_sql(f"UPDATE export_job SET state = 'running' WHERE id = {job.id}")
    db.session.rollback()
    result = fresh_app.test_cli_runner().invoke(args=["export", "worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "1 export job(s) left by a stopped worker were run again" in result.output
    done = db.session.get(ExportJob, job.id)
    assert done.state == "done" and jobs.file_path(done).exists()
    assert [r[2] for r in _queue_rows()] == ["succeeded"]


def test_the_worker_refuses_when_exports_run_in_threads(fresh_app):
    fresh_app.config["EXPORTS_QUEUE"] = "thread"
    result = fresh_app.test_cli_runner().invoke(args=["export", "worker", "--once"])
    assert result.exit_code != 0 and "no queue to work on" in result.output


