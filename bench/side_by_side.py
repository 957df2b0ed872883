"""Side by side, in one run on one database: what the audit trail costs a save, against three peers.

(a) The audited save (``ecrf.casebook.services.save_form`` creating a new day's daily SOFA form,
    in-process, one transaction) against the same rows (its form_instance, item_value and
    submission rows, read back) written into mirror tables without audit (``mirror.py``), through
    the ORM and through Core, interleaved save by save; how long each save holds the audit chain
    head lock (the one lock every save of every app server takes); then where the audited save's
    time goes, from a sampling profile (pyinstrument) of a separate batch.
(b) Our audit capture against SQLAlchemy-Continuum versioning the same rows: our save creating
    a form then correcting three values (with a reason), against Continuum inserting the same
    form and item rows then updating the rows our correction changed (``continuum_peer.py``, in
    a process of its own), in alternating rounds.
(c) Our saves per second against ``pgbench -f`` replaying the SQL one save sends, captured from
    the server log (``pgbench_replay.py``), on a scratch copy of the database made right after
    the capture, with 1, 4 and 16 clients; ours in-process, one thread and one app context per
    client.

The run first brings the planner statistics up to date (ANALYZE: a restored dump has none). It
writes new forms into the database it is given (one per save: the free days D1-D14 of the
subjects, then repeats of those days once they are all taken), fills the per-subject SDV counts
if they are not yet (as the first visit to the SDV backlog would), and drops its mirror tables
and its scratch copy at the end. PostgreSQL's statement log is switched on for one connection
(a superuser ``SET``) for the capture only.

    python bench/side_by_side.py --database-url postgresql://127.0.0.1:5432/ecrf_bench_side --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from importlib import metadata
from itertools import count
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from bench import continuum_peer, mirror, pgbench_replay  # noqa: E402

DEFAULT_URL = "postgresql://127.0.0.1:5432/ecrf_bench_side"
CRF_KEY = "sofa_daily"
#: the values a correction changes (entered items; derived scores follow)
CORRECTED = ("platelets", "map", "gcs")
#: the issue's targets: audit overhead at most 1.5x the plain save, at least 25 % of pgbench
TARGET_RATIO = 1.5
TARGET_PGBENCH_SHARE = 0.25


# --- figures -----------------------------------------------------------------------------------


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "median": round(statistics.median(values), 3),
            "p95": round(p95(values), 3), "mean": round(statistics.fmean(values), 3)}


def over_repeats(per_repeat: list[list[float]]) -> dict:
    """Latencies: median and p95 of each repeat, their medians, and the pooled figures."""
    repeats = [summary(v) for v in per_repeat]
    pooled = summary([x for v in per_repeat for x in v])
    return {"median": round(statistics.median(r["median"] for r in repeats), 3),
            "p95": round(statistics.median(r["p95"] for r in repeats), 3),
            "pooled": pooled, "per_repeat": repeats}


def rates(runs: list[float]) -> dict:
    return {"median": round(statistics.median(runs), 2), "p95": round(p95(runs), 2),
            "runs": [round(r, 2) for r in runs]}


# --- the product side ----------------------------------------------------------------------


class Study:
    """The bench database's subjects, their investigators, and the daily SOFA slots still free."""

    def __init__(self, db):
        from flask import current_app

        from ecrf.access.models import Grant
        from ecrf.audit.unit_of_work import Actor
        from ecrf.auth.models import User
        from ecrf.casebook.models import FormInstance
        from ecrf.study import settings
        from ecrf.study.models import Subject

        self.actors = {}
        for username in ("investigator", "investigator02"):
            user = db.session.scalar(sa.select(User).where(User.username == username))
            grant = db.session.scalar(sa.select(Grant).where(Grant.user_id == user.id,
                                                             Grant.role == "investigator"))
            self.actors[grant.site_id] = Actor.of(user, grant)
        fi = FormInstance.__table__
        started = set(db.session.scalars(sa.select(fi.c.subject_id).where(
            fi.c.crf_key == CRF_KEY, fi.c.visit_key == "D0")))
        self.subjects = [(sid, site) for sid, site in db.session.execute(
            sa.select(Subject.id, Subject.site_id).order_by(Subject.id)) if sid in started]
        self.taken = set(db.session.execute(sa.select(fi.c.subject_id, fi.c.visit_key, fi.c.visit_repeat)
                                            .where(fi.c.crf_key == CRF_KEY)))
        self.days = settings.DAILY_FOLLOW_UP_DAYS
        self.free_days = sum(1 for d in range(1, self.days + 1) for s, _ in self.subjects
                             if (s, f"D{d}", 1) not in self.taken)
        self.on_repeats = 0
        crf = current_app.extensions["ecrf.registry"].current(CRF_KEY)
        self.entered = [i.key for i in crf.items if not i.derived]
        self._slots = self._free_slots()
        self._lock = threading.Lock()
        self._seed = count(1)

    def _free_slots(self):
        from ecrf.casebook.services import Slot

        for repeat in count(1):
            for day in range(1, self.days + 1):
                for sid, site in self.subjects:
                    if (sid, f"D{day}", repeat) not in self.taken:
                        yield sid, self.actors[site], Slot(f"D{day}", repeat), repeat

    def next_slot(self):
        """(subject id, actor, slot, values): a new day's form, with plausible values."""
        from ecrf.demo import _sofa_day

        with self._lock:
            sid, actor, slot, repeat = next(self._slots)
            seed = next(self._seed)
            self.on_repeats += repeat > 1
        rng = random.Random(seed)
        values = {key: "" for key in self.entered} | _sofa_day(rng, rng.uniform(0.3, 0.9))
        return sid, actor, slot, values


def analyze(url: sa.URL) -> dict:
    """Up-to-date planner statistics first: a restored dump has none, and with autovacuum off
    (as on the bench server) nothing would gather them, leaving plans to default estimates."""
    engine = sa.create_engine(url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar()
            started = time.perf_counter()
            conn.exec_driver_sql("ANALYZE")
            return {"autovacuum": autovacuum, "analyze_s": round(time.perf_counter() - started, 1)}
    finally:
        engine.dispose()


#: the tables a save writes: their statistics go stale as the run adds rows
WRITTEN = ("form_instance", "item_value", "submission", "audit_trail", "audit_value", "audit_chain_head",
           "sdv_count", "data_query")


def refresh_statistics(url: sa.URL, database: str | None = None) -> None:
    """ANALYZE the tables the saves write, as autovacuum would between phases (it is off on the
    bench server, and a run can double the rows of a small study: stale estimates then send the
    SDV recount to a sequential scan of every item value)."""
    engine = sa.create_engine(url.set(drivername="postgresql+psycopg", database=database or url.database),
                              isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for table in WRITTEN:
                if conn.exec_driver_sql(f"SELECT to_regclass('public.{table}')").scalar():
                    conn.exec_driver_sql(f'ANALYZE "{table}"')
    finally:
        engine.dispose()


def fill_kept_counts() -> bool:
    """Fill the per-subject SDV counts if the product keeps them (the first visit to the SDV
    backlog does it), so that each save keeps them current as it does in use."""
    try:
        from ecrf.review.sdv import ensure_counts
    except ImportError:
        return False
    ensure_counts()
    return True


def _load_subject(db, sid):
    from ecrf.study.models import Subject

    return db.session.get(Subject, sid)


def _save(db, actor, sid, slot, values, **kwargs):
    """What a caller of the service does: load the subject, save, confirm the soft checks."""
    from ecrf.casebook.services import Submitted, save_form

    subject = _load_subject(db, sid)
    submitted = Submitted(values)
    result = save_form(actor, subject, CRF_KEY, slot, submitted, **kwargs)
    if result.outcome == "needs_confirmation":
        result = save_form(actor, subject, CRF_KEY, slot, submitted,
                           confirmed={w.check_id for w in result.warnings}, **kwargs)
    return result


def _timed_save(db, actor, sid, slot, values, **kwargs):
    started = time.perf_counter()
    result = _save(db, actor, sid, slot, values, **kwargs)
    elapsed = (time.perf_counter() - started) * 1000
    if result.outcome != "saved":
        raise RuntimeError(f"save of {slot} for subject {sid}: {result.outcome} {result.errors}")
    return elapsed, sa.inspect(result.instance).identity[0]


def audited_save(db, study: Study) -> tuple[float, int, str, int]:
    """One new day's form through the service, as the web form sends it (with its token)."""
    sid, actor, slot, values = study.next_slot()
    token = secrets.token_urlsafe(24)
    try:
        elapsed, form_id = _timed_save(db, actor, sid, slot, values, token=token)
    finally:
        db.session.remove()  # a request's teardown
    return elapsed, form_id, token, sid


def count_statements(engine: sa.Engine, action) -> int:
    """Statements the server runs while ``action`` runs (each row of an executemany is one; a
    multi-row INSERT is one), BEGIN and COMMIT left out."""
    sent = [0]

    def on_execute(_conn, _cursor, _statement, parameters, context, executemany):
        rows = executemany and context is not None and context.execute_style.name == "EXECUTEMANY"
        sent[0] += len(parameters) if rows else 1

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    try:
        action()
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
    return sent[0]


class ChainLockTimer:
    """How long saves wait for and then hold the audit chain head lock: from the SELECT ... FOR
    UPDATE of the head to the end of the COMMIT. Every save of every app server passes through
    this one lock, so 1000 / (median ms held) bounds the saves per second of the whole study."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.local = threading.local()
        self.waited: list[float] = []
        self.held: list[float] = []

    @staticmethod
    def _is_lock(statement: str) -> bool:
        return "FROM audit_chain_head" in statement and statement.rstrip().endswith("FOR UPDATE")

    def _before(self, _conn, _cursor, statement, *_args):
        if self._is_lock(statement):
            self.local.asked = time.perf_counter()

    def _after(self, _conn, _cursor, statement, *_args):
        if self._is_lock(statement):
            self.local.got = time.perf_counter()
            self.waited.append((self.local.got - self.local.asked) * 1000)

    def _committed(self, _session):
        got = getattr(self.local, "got", None)
        if got is not None:
            self.held.append((time.perf_counter() - got) * 1000)
            self.local.got = None

    def __enter__(self):
        sa.event.listen(self.engine, "before_cursor_execute", self._before)
        sa.event.listen(self.engine, "after_cursor_execute", self._after)
        sa.event.listen(sa.orm.Session, "after_commit", self._committed)
        return self

    def __exit__(self, *_exc):
        sa.event.remove(self.engine, "before_cursor_execute", self._before)
        sa.event.remove(self.engine, "after_cursor_execute", self._after)
        sa.event.remove(sa.orm.Session, "after_commit", self._committed)

    def figures(self) -> dict:
        if not self.held:
            return {}
        held = summary(self.held)
        return {"held_ms": held, "waited_ms": summary(self.waited),
                "ceiling_saves_per_s": round(1000 / held["median"], 1)}


# --- (a) audited vs plain ----------------------------------------------------------------------

#: innermost match wins: (category, ((path ending, function), ...))
CATEGORIES = [
    ("audit chain: SHA-256 row hashes, value digests, salts",
     (("ecrf/audit/chain.py", "row_hash"), ("ecrf/audit/chain.py", "value_digest"),
      ("secrets.py", "token_hex"))),
    ("audit chain: head lock, INSERT audit rows, UPDATE head", (("ecrf/audit/chain.py", "append"),)),
    ("audit capture: flush listeners (old/new values, paths)",
     (("ecrf/audit/capture.py", "_before_flush"), ("ecrf/audit/capture.py", "_after_flush"))),
    ("flush rules: freeze/lock, SDV clear-on-change, SDV counts noted",
     (("ecrf/review/closure.py", "enforce"), ("ecrf/review/sdv.py", "clear_on_change"),
      ("ecrf/review/sdv.py", "keep_counts"))),
    ("SDV counts recounted (after the audit append, under the chain lock)",
     (("ecrf/review/sdv.py", "_recount_touched"),)),
    ("system queries for soft checks", (("ecrf/review/queries.py", "after_form_saved"),)),
    ("COMMIT", (("sqlalchemy/orm/session.py", "commit"),)),
    ("ORM flush: INSERT/UPDATE form, items, token", (("sqlalchemy/orm/session.py", "flush"),)),
    ("parsing, derived values, edit checks, status",
     tuple(("ecrf/casebook/services.py", f) for f in ("parse", "derive", "run_checks", "form_status"))),
    ("form lookup, closure check", (("ecrf/casebook/services.py", "get_instance"),
                                    ("ecrf/review/closure.py", "refusal"))),
    ("load the subject", (("bench/side_by_side.py", "_load_subject"),)),
    ("save_form: token lookup, old/new values, the rest", (("ecrf/casebook/services.py", "save_form"),)),
]


def _category(frame) -> str | None:
    path = (frame.file_path or "").replace("\\", "/")
    for name, matches in CATEGORIES:
        for ending, function in matches:
            if frame.function == function and path.endswith(ending):
                return name
    return None


def breakdown(db, study: Study, saves: int) -> dict:
    """Where an audited save's time goes: a sampling profile over a batch, by category.

    Each sample's time goes to the innermost category on its stack (a lazy load made by the audit
    capture counts as audit capture); ``db_ms`` is the part spent in the driver (psycopg),
    i.e. waiting on PostgreSQL."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001)
    profiler.start()
    for _ in range(saves):
        audited_save(db, study)
    profiler.stop()
    totals: dict[str, list[float]] = {}

    def walk(frame, category, inside, in_driver):
        if frame.function == "_timed_save":
            inside = True
        category = _category(frame) or category
        in_driver = in_driver or "/psycopg/" in (frame.file_path or "")
        own = frame.time - sum(c.time for c in frame.children)
        if inside:
            slot = totals.setdefault(category or "other", [0.0, 0.0])
            slot[0] += own
            slot[1] += own if in_driver else 0.0
        for child in frame.children:
            walk(child, category, inside, in_driver)

    walk(profiler.last_session.root_frame(), None, False, False)
    total = sum(v[0] for v in totals.values())
    rows = sorted(({"category": k, "ms_per_save": round(v[0] * 1000 / saves, 2),
                    "db_ms_per_save": round(v[1] * 1000 / saves, 2), "share": round(v[0] / total, 3)}
                   for k, v in totals.items()), key=lambda r: -r["ms_per_save"])
    audit = sum(r["ms_per_save"] for r in rows if r["category"].startswith("audit"))
    return {"profiled_saves": saves, "ms_per_save_profiled": round(total * 1000 / saves, 2),
            "audit_ms_per_save": round(audit, 2), "audit_share": round(audit * saves / 1000 / total, 3),
            "categories": rows,
            "note": "sampling profiler (pyinstrument, 1 ms); the profiled saves run somewhat slower "
                    "than the timed ones, the shares are what counts"}


def part_a(app, db, study: Study, writer: mirror.PlainWriter, reader: mirror.RowReader, *, saves: int,
           repeats: int, warmup: int, profile_saves: int, refresh=lambda: None, log=print) -> dict:
    audited, orm, core, ratio_orm, ratio_core = [], [], [], [], []
    with app.app_context(), ChainLockTimer(db.engine) as lock:
        for r in range(repeats):
            refresh()
            lat = {"audited": [], "orm": [], "core": []}
            for i in range(warmup + saves):
                ms, form_id, _token, _sid = audited_save(db, study)
                rows = reader.read(form_id)
                started = time.perf_counter()
                writer.orm(rows)
                orm_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                writer.core(rows)
                core_ms = (time.perf_counter() - started) * 1000
                if i >= warmup:
                    lat["audited"].append(ms)
                    lat["orm"].append(orm_ms)
                    lat["core"].append(core_ms)
            audited.append(lat["audited"])
            orm.append(lat["orm"])
            core.append(lat["core"])
            ratio_orm.append(statistics.median(lat["audited"]) / statistics.median(lat["orm"]))
            ratio_core.append(statistics.median(lat["audited"]) / statistics.median(lat["core"]))
            log(f"(a) repeat {r + 1}: audited {statistics.median(lat['audited']):.1f} ms, plain ORM "
                f"{statistics.median(lat['orm']):.1f} ms, plain Core {statistics.median(lat['core']):.1f} ms "
                f"(medians of {saves})")
        one = {}
        sent = count_statements(db.engine, lambda: one.setdefault("form", audited_save(db, study)[1]))
        rows = reader.read(one["form"])
        statements = {"audited": sent,
                      "plain_orm": count_statements(db.engine, lambda: writer.orm(rows)),
                      "plain_core": count_statements(db.engine, lambda: writer.core(rows))}
        audit_rows = reader.audit_rows(one["form"])
        log(f"(a) profiling {profile_saves} audited saves")
        profile = breakdown(db, study, profile_saves)
    result = {
        "saves_per_repeat": saves, "repeats": repeats,
        "audited_ms": over_repeats(audited), "plain_orm_ms": over_repeats(orm),
        "plain_core_ms": over_repeats(core),
        "ratio_audited_over_plain_orm": {"median": round(statistics.median(ratio_orm), 2),
                                         "p95": round(p95(ratio_orm), 2),
                                         "per_repeat": [round(x, 2) for x in ratio_orm]},
        "ratio_audited_over_plain_core": {"median": round(statistics.median(ratio_core), 2),
                                          "p95": round(p95(ratio_core), 2),
                                          "per_repeat": [round(x, 2) for x in ratio_core]},
        "rows_per_save": {"form_instance": 1, "item_value": len(rows.items),
                          "submission": 1 if rows.submission else 0, **audit_rows},
        "statements_per_save": statements,
        "plain_save": "ORM (primary): mapped classes on the mirror tables, the form with its items as "
                      "a relationship, session.add + commit, as this application would save without "
                      "audit; Core: the same INSERTs without the unit of work (the floor)",
        "audited_save": "load the subject + save_form (parse, derive, edit checks, closure, the write, "
                        "audit capture, hash chain, commit), as the web form calls it with its token",
        "target_ratio": TARGET_RATIO,
        "chain_lock": lock.figures(),
        "breakdown": profile,
    }
    result["meets_target"] = result["ratio_audited_over_plain_orm"]["median"] <= TARGET_RATIO
    # what the ratio would be with the audit's own share (capture, chain) taken out of the save
    result["ratio_without_audit_share"] = round(
        result["ratio_audited_over_plain_orm"]["median"] * (1 - profile["audit_share"]), 2)
    return result


# --- (b) our audit vs SQLAlchemy-Continuum ---------------------------------------------------------


def _changed(values: dict) -> dict:
    new = dict(values)
    new["platelets"] = str(int(values["platelets"]) + 7)
    new["map"] = str(int(values["map"]) + 3)
    gcs = int(values["gcs"])
    new["gcs"] = str(gcs - 1 if gcs > 3 else gcs + 1)
    return new


def _diff(before: mirror.SavedRows, after: mirror.SavedRows) -> tuple[dict, dict]:
    form = {k: v for k, v in after.form.items() if before.form[k] != v and k != "row_version"}
    old = {i["item_key"]: i for i in before.items}
    items = {}
    for row in after.items:
        changed = {k: v for k, v in row.items() if old.get(row["item_key"], {}).get(k) != v}
        if changed:
            items[row["item_key"]] = changed
    return form, items


def product_pairs(db, study: Study, reader: mirror.RowReader, pairs: int) -> tuple[list, list, list]:
    """Our saves creating then correcting forms; their latencies and the rows for the peer."""
    from ecrf.audit.reasons import Reason

    reason = Reason("entry_error", "transcription error corrected")
    create_ms, update_ms, rows = [], [], []
    for _ in range(pairs):
        sid, actor, slot, values = study.next_slot()
        try:
            ms, form_id = _timed_save(db, actor, sid, slot, values, token=secrets.token_urlsafe(24))
        finally:
            db.session.remove()
        before = reader.read(form_id)
        try:
            ms2, _ = _timed_save(db, actor, sid, slot, _changed(values), reason=reason,
                                 row_version=before.form["row_version"], token=secrets.token_urlsafe(24))
        finally:
            db.session.remove()
        after = reader.read(form_id)
        form_update, item_updates = _diff(before, after)
        create_ms.append(ms)
        update_ms.append(ms2)
        enc = continuum_peer.encode
        rows.append({"form": {k: enc(v) for k, v in before.form.items()},
                     "items": [{k: enc(v) for k, v in i.items()} for i in before.items],
                     "form_update": {k: enc(v) for k, v in form_update.items()},
                     "item_updates": {key: {k: enc(v) for k, v in cols.items()}
                                      for key, cols in item_updates.items()}})
    return create_ms, update_ms, rows


def part_b(app, db, study: Study, reader: mirror.RowReader, url: str, work: Path, *, pairs: int,
           rounds: int, warmup: int, log=print) -> dict:
    ours = {"create": [], "update": []}
    theirs = {"create": [], "update": []}
    peer = {}
    changed_rows = []
    for r in range(rounds):
        with app.app_context():
            create_ms, update_ms, rows = product_pairs(db, study, reader, warmup + pairs)
        ours["create"].append(create_ms[warmup:])
        ours["update"].append(update_ms[warmup:])
        changed_rows += [len(p["item_updates"]) for p in rows]
        rows_file = work / f"continuum-rows-{r}.json"
        rows_file.write_text(json.dumps(rows))
        done = subprocess.run([sys.executable, str(Path(__file__).with_name("continuum_peer.py")),
                               "--database-url", url, "--rows", str(rows_file), "--warmup", str(warmup)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"continuum_peer failed:\n{done.stderr[-3000:]}")
        peer = json.loads(done.stdout)
        theirs["create"].append(peer["create_ms"])
        theirs["update"].append(peer["update_ms"])
        log(f"(b) round {r + 1}: ours create {statistics.median(create_ms[warmup:]):.1f} / correct "
            f"{statistics.median(update_ms[warmup:]):.1f} ms; Continuum insert "
            f"{statistics.median(peer['create_ms']):.1f} / update "
            f"{statistics.median(peer['update_ms']):.1f} ms")

    def side(lat):
        flat = [x for run in lat["create"] + lat["update"] for x in run]
        per_round = [len(c) + len(u) for c, u in zip(lat["create"], lat["update"], strict=True)]
        seconds = [(sum(c) + sum(u)) / 1000 for c, u in zip(lat["create"], lat["update"], strict=True)]
        return {"create_ms": over_repeats(lat["create"]), "update_ms": over_repeats(lat["update"]),
                "all_ms": summary(flat),
                "saves_per_s": rates([n / s for n, s in zip(per_round, seconds, strict=True)])}

    result = {"pairs_per_round": pairs, "rounds": rounds,
              "continuum_version": peer.get("continuum_version"),
              "sqlalchemy_version": peer.get("sqlalchemy_version"),
              "continuum_version_rows_last_round": peer.get("version_rows"),
              "item_rows_changed_per_correction": summary(changed_rows),
              "ours": side(ours), "continuum": side(theirs)}
    result["ratio_ours_over_continuum"] = {
        "create_median_ms": round(result["ours"]["create_ms"]["median"]
                                  / result["continuum"]["create_ms"]["median"], 2),
        "update_median_ms": round(result["ours"]["update_ms"]["median"]
                                  / result["continuum"]["update_ms"]["median"], 2),
        "saves_per_s": round(result["ours"]["saves_per_s"]["median"]
                             / result["continuum"]["saves_per_s"]["median"], 2)}
    result["differences"] = [
        "ours: save_form parses the submitted text, derives the 7 SOFA scores, runs the edit "
        "checks, checks freeze/lock and the form's row version, looks up the token and any system "
        "query; Continuum is given the final rows",
        "ours: one audit_trail row and one audit_value row per changed value (old and new value "
        "with a salted digest, who, role, site, reason), SHA-256 hash-chained under a row lock on "
        "the chain head; Continuum: one version row per changed object (a copy of all its columns) "
        "plus one transaction row, no chain, no lock, no reason, no user",
        "ours: a correction needs a reason for change and the form's row version (conflict check)",
        "Continuum runs with its defaults (validity strategy: an update also closes the previous "
        "version row), ORM-level, in its own interpreter (its listeners are global)",
    ]
    return result


# --- (c) our saves/s vs pgbench -------------------------------------------------------------------


def capture_one_save(db, study: Study, pg_log: str | None) -> tuple[list, dict]:
    """One audited save with statement logging on for its connection; its statements."""
    db.session.remove()
    db.engine.dispose()  # one fresh connection, the one the save will use
    conn = db.session.connection()
    path = pgbench_replay.log_file(conn, pg_log)
    offset = path.stat().st_size
    pid = pgbench_replay.start_capture(conn)
    db.session.commit()
    try:
        ms, form_id, token, sid = audited_save(db, study)
    finally:
        conn = db.session.connection()
        same = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
        pgbench_replay.end_capture(conn)
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    if not same:
        raise RuntimeError("the save ran on another connection than the logged one")
    for _ in range(50):  # the log is written as the server goes; give it a moment
        try:
            statements = pgbench_replay.read_log(path, offset, pid)
            break
        except RuntimeError:
            time.sleep(0.1)
    else:
        statements = pgbench_replay.read_log(path, offset, pid)
    return pgbench_replay.one_transaction(statements), {
        "form_id": form_id, "token": token, "subject_id": sid, "log_file": str(path),
        "latency_ms": round(ms, 2)}


def threaded_saves(app, db, study: Study, clients: int, seconds: float) -> dict:
    """Saves per second with ``clients`` threads, each in its own app context, for ``seconds``."""
    barrier = threading.Barrier(clients + 1)
    stop = threading.Event()
    done: list[list[tuple[float, float]]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        with app.app_context():
            try:
                audited_save(db, study)  # a connection, warm caches
                barrier.wait()
                while not stop.is_set():
                    ms = audited_save(db, study)[0]
                    done[k].append((time.perf_counter(), ms))
            except BaseException as e:  # noqa: BLE001  (reported by the main thread)
                errors.append(e)
                barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    with ChainLockTimer(db.engine) as lock:
        for t in threads:
            t.start()
        barrier.wait()
        started = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    end = started + seconds
    inside = [ms for per in done for finished, ms in per if finished <= end]
    return {"saves_per_s": len(inside) / seconds, "saves": len(inside),
            "latency_ms": summary(inside) if inside else None, "chain_lock": lock.figures()}


def part_c(app, db, study: Study, url: sa.URL, scratch: str, work: Path, *, clients: list[int],
           seconds: float, repeats: int, mode: str, pg_log: str | None, log=print) -> dict:
    with app.app_context():
        statements, captured = capture_one_save(db, study, pg_log)
        first, last, n = db.session.execute(sa.text("SELECT min(id), max(id), count(*) FROM subject")).one()
        db.session.remove()
        db.engine.dispose()  # a template copy needs the source to itself
    # copied after the capture, so that the rows the captured statements name (the new item
    # values the SDV recount looks up) are there too
    copied = pgbench_replay.copy_database(url, scratch)
    log(f"(c) scratch copy {scratch}: {copied}")
    raw = work / "one-save.log.sql"
    raw.write_text("\n".join(f"{s.sql}\n  -- parameters: {s.params}" for s in statements) + "\n")
    replay = pgbench_replay.build_script(
        statements, form_id=captured["form_id"], token=captured["token"],
        subject_id=captured["subject_id"], subject_ids=(first, last) if last - first + 1 == n else None)
    script = work / "one-save.pgbench.sql"
    script.write_text(replay.script)
    check = pgbench_replay.check_script(url, scratch, script, mode)
    log(f"(c) captured {replay.statements} statements of one save; the replay adds {check}")
    pgbench_runs: dict[str, list[dict]] = {}
    our_runs: dict[str, list[dict]] = {}
    for c in clients:
        for r in range(repeats):
            refresh_statistics(url, scratch)
            run = pgbench_replay.run_pgbench(url, scratch, script, c, seconds, mode)
            pgbench_runs.setdefault(str(c), []).append(run)
            refresh_statistics(url)
            with app.app_context():
                ours = threaded_saves(app, db, study, c, seconds)
            our_runs.setdefault(str(c), []).append(ours)
            log(f"(c) {c:2} clients, repeat {r + 1}: pgbench {run['tps']:.0f} tps, ours "
                f"{ours['saves_per_s']:.1f} saves/s")
    pg = {c: rates([r["tps"] for r in runs]) for c, runs in pgbench_runs.items()}
    us = {c: rates([r["saves_per_s"] for r in runs]) for c, runs in our_runs.items()}
    ratio = {c: round(us[c]["median"] / pg[c]["median"], 3) for c in pg}
    return {
        "captured": {**captured, "statements": replay.statements, "audit_rows": replay.audit_rows,
                     "raw_statements_file": str(raw)},
        "script_file": str(script), "pgbench_mode": mode, "seconds_per_run": seconds,
        "repeats": repeats, "scratch_database": scratch, "scratch_copy": copied,
        "changes_from_the_captured_sql": replay.changes,
        "replay_rows_per_transaction": check,
        "pgbench_tps": {c: v["median"] for c, v in pg.items()},
        "pgbench": {c: {**pg[c], "failed": sum(r["failed"] for r in pgbench_runs[c]),
                        "latency_avg_ms": [r["latency_avg_ms"] for r in pgbench_runs[c]]} for c in pg},
        "ours_saves_per_s": {c: v["median"] for c, v in us.items()},
        "ours": {c: {**us[c], "latency_ms": [r["latency_ms"] for r in our_runs[c]],
                     "chain_lock_held_ms": [r["chain_lock"].get("held_ms") for r in our_runs[c]],
                     "chain_lock_waited_ms": [r["chain_lock"].get("waited_ms") for r in our_runs[c]]}
                 for c in us},
        "ours_how": "in-process, one thread per client, each in its own app context, new day's "
                    "form per save (load subject + save_form with token); Python's GIL runs one "
                    "thread at a time, so the threads share one core",
        "ratio_ours_over_pgbench": ratio,
        "target_share": TARGET_PGBENCH_SHARE,
        "meets_target": {c: v >= TARGET_PGBENCH_SHARE for c, v in ratio.items()},
    }


# --- the run ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--parts", default="a,b,c", help="which comparisons: a, b, c")
    parser.add_argument("--saves", type=int, default=60, help="(a) saves per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="(a) repeats")
    parser.add_argument("--profile-saves", type=int, default=60, help="(a) saves profiled")
    parser.add_argument("--pairs", type=int, default=40, help="(b) create+correct pairs per round")
    parser.add_argument("--rounds", type=int, default=3, help="(b) rounds, ours then Continuum")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="(c)")
    parser.add_argument("--seconds", type=float, default=10, help="(c) length of each run")
    parser.add_argument("--pgbench-repeats", type=int, default=3, help="(c) runs per client count")
    parser.add_argument("--pgbench-mode", default="prepared", choices=["extended", "prepared"],
                        help="(c) pgbench protocol; psycopg prepares repeated statements, as 'prepared'")
    parser.add_argument("--scratch-database", help="(c) the copy pgbench writes to (default <db>_pgbench)")
    parser.add_argument("--keep-scratch", action="store_true", help="(c) keep the copy afterwards")
    parser.add_argument("--pg-log", help="(c) the server log file, if it cannot be found")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ecrf-bench/side_by_side"))
    parser.add_argument("--quick", action="store_true", help="small sizes (under 2 minutes)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.saves, args.repeats, args.profile_saves = 15, 3, 15
        args.pairs, args.rounds = 8, 2
        args.seconds, args.pgbench_repeats = 3, 2
    parts = set(args.parts.split(","))
    warmup = 3
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ECRF_INSTANCE_DIR", tempfile.mkdtemp(prefix="ecrf-side-"))
    url = sa.make_url(args.database_url)
    scratch = args.scratch_database or f"{url.database}_pgbench"
    packages = ("SQLAlchemy", "psycopg", "Flask-SQLAlchemy", "SQLAlchemy-Continuum", "pyinstrument")
    results: dict = {"database": url.database, "quick": args.quick,
                     "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                     "load_average_at_start": os.getloadavg(),
                     "versions": {p: metadata.version(p) for p in packages}}
    results.update(analyze(url))
    results["statistics"] = ("ANALYZE of the whole database first, then of the tables the saves write "
                             "before each phase and each throughput run")

    from ecrf import create_app
    from ecrf.extensions import db

    app = create_app("development", DATABASE_URL=args.database_url, SQLALCHEMY_ENGINE_OPTIONS={
        "pool_pre_ping": True, "pool_size": max(args.clients) + 2, "max_overflow": 4})
    log = lambda text: print(text, flush=True)  # noqa: E731
    try:
        with app.app_context():
            results["sdv_counts_kept"] = fill_kept_counts()
            study = Study(db)
            results["subjects"] = db.session.scalar(sa.text("SELECT count(*) FROM subject"))
            results["free_new_days_at_start"] = study.free_days
            db.session.remove()
            mirror.create_schema(db.engine)
            for prefix in mirror.PREFIXES:
                mirror.create_mirror_tables(db.engine, prefix)
            writer, reader = mirror.PlainWriter(db.engine), mirror.RowReader(db.engine)
        if "a" in parts:
            results["a_audit_vs_plain"] = part_a(app, db, study, writer, reader, saves=args.saves,
                                                 repeats=args.repeats, warmup=warmup,
                                                 profile_saves=args.profile_saves,
                                                 refresh=lambda: refresh_statistics(url), log=log)
        if "b" in parts:
            refresh_statistics(url)
            results["b_continuum"] = part_b(app, db, study, reader, args.database_url, args.work,
                                            pairs=args.pairs, rounds=args.rounds, warmup=warmup, log=log)
        if "c" in parts:
            refresh_statistics(url)
            results["c_pgbench"] = part_c(app, db, study, url, scratch, args.work, clients=args.clients,
                                          seconds=args.seconds, repeats=args.pgbench_repeats,
                                          mode=args.pgbench_mode, pg_log=args.pg_log, log=log)
    finally:
        with app.app_context():
            db.session.remove()
            mirror.drop_schema(db.engine)
            db.engine.dispose()
        if "c" in parts and not args.keep_scratch:
            pgbench_replay.drop_database(url, scratch)
    results["saves_on_repeated_visits"] = study.on_repeats
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["load_average_at_end"] = os.getloadavg()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def report(results: dict) -> None:
    a, b, c = (results.get(k) for k in ("a_audit_vs_plain", "b_continuum", "c_pgbench"))
    if a:
        print(f"(a) audited save {a['audited_ms']['median']} ms (p95 {a['audited_ms']['p95']}), plain ORM "
              f"{a['plain_orm_ms']['median']} ms (p95 {a['plain_orm_ms']['p95']}), plain Core "
              f"{a['plain_core_ms']['median']} ms: ratio {a['ratio_audited_over_plain_orm']['median']}x ORM, "
              f"{a['ratio_audited_over_plain_core']['median']}x Core (target <= {TARGET_RATIO})")
        print(f"    audit capture + chain: {a['breakdown']['audit_share']:.0%} of the profiled save; "
              f"without it the ratio would be about {a['ratio_without_audit_share']}x")
        if a.get("chain_lock"):
            lock = a["chain_lock"]
            print(f"    chain head lock held {lock['held_ms']['median']} ms (p95 {lock['held_ms']['p95']}) "
                  f"per save: at most {lock['ceiling_saves_per_s']} saves/s for the whole study")
        for row in a["breakdown"]["categories"]:
            print(f"    {row['ms_per_save']:6.2f} ms {row['share']:6.1%}  {row['category']} "
                  f"(driver {row['db_ms_per_save']:.2f} ms)")
    if b:
        o, t = b["ours"], b["continuum"]
        print(f"(b) ours create {o['create_ms']['median']} / correct {o['update_ms']['median']} ms, "
              f"{o['saves_per_s']['median']} saves/s; Continuum {t['create_ms']['median']} / "
              f"{t['update_ms']['median']} ms, {t['saves_per_s']['median']} saves/s; ratio "
              f"{b['ratio_ours_over_continuum']}")
    if c:
        for k in c["pgbench_tps"]:
            print(f"(c) {k:>2} clients: pgbench {c['pgbench_tps'][k]} tps, ours {c['ours_saves_per_s'][k]} "
                  f"saves/s: {c['ratio_ours_over_pgbench'][k]:.1%} (target >= {TARGET_PGBENCH_SHARE:.0%})")


if __name__ == "__main__":
    sys.exit(main())
