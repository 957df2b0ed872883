"""Saves and pages measured through real HTTP against gunicorn on loopback, one server and two.

The app runs under gunicorn (sync workers, as the README deploys it) in the development
configuration on the given PostgreSQL database; simulated users (bench/httpclient.py, on
requests) log in as the DEMO users and work as a browser would. Measured, each over repeats:

- the save of a daily SOFA form: POST latency with one client (the GET of the form page apart);
- saves per second with 1, 4 and 16 concurrent clients, each client saving into subjects of its
  own (forms opened beforehand, so the window holds saves only);
- page latency of the casebook grid, the query list, the SDV backlog, an item's history, the
  subject list, the study home and the audit viewer, each as the role that uses it (after the
  saves, as in a study where data entry goes on after visits are signed);
- scale-out: two gunicorn servers on one database; a session opened on either works on the
  other, concurrent enrolments on both give no duplicate subject code, the same save load split
  over both (combined saves/s beside the single server's), then ``ecrf audit verify``.

Every request that does not get the expected answer is a counted failure (exit status 1).
The CPU used by this client, the gunicorn processes, the database's backends and the rest of the
machine is recorded for each save window: the client must stay far below one core.
The database is written to: run it on a copy (``createdb`` + ``pg_restore``).

    python bench/http_load.py --database-url postgresql://127.0.0.1:5432/ecrf_bench_http --quick
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpclient import Client, Failures, OpenForm, form_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAYS = range(1, 15)  # D1..D14: the daily SOFA visits after inclusion day (D0 decides eligibility)
INVESTIGATORS = {"01": "investigator", "02": "investigator02"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
_READY_HOOK = '''
import os
def post_worker_init(worker):
    """A worker has loaded the app: say so, so that measuring waits for every worker."""
    open(os.path.join({folder!r}, "ready-%d" % worker.pid), "w").close()
'''


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- figures -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p95_ms": round(percentile(ms, 95), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "max_ms": round(max(ms), 2)}


def spread(values: list[float], digits: int = 2) -> dict:
    """A figure over repeats: its median and p95 (and the extremes)."""
    values = [v for v in values if v == v]  # without NaN
    if not values:
        return {}
    return {"median": round(statistics.median(values), digits),
            "p95": round(percentile(values, 95), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


def over_repeats(repeats: list[dict], prefix: str = "") -> dict:
    """p50 and p95 latencies of each repeat, summarised as median and p95 over the repeats."""
    return {f"{prefix}p50_ms": spread([r[f"{prefix}p50_ms"] for r in repeats if f"{prefix}p50_ms" in r]),
            f"{prefix}p95_ms": spread([r[f"{prefix}p95_ms"] for r in repeats if f"{prefix}p95_ms" in r])}


# --- CPU: who used the two cores ---------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot, all cores."""
    with open("/proc/stat") as f:
        ticks = [int(t) for t in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    total = sum(ticks[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


class Meter:
    """CPU seconds spent during a window by this client process, the gunicorn processes, the
    PostgreSQL backends serving the database, and the machine as a whole (the rest is others'
    work on the shared machine): shows whether the client could be the bottleneck."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.server_pids: list[int] = []

    def close(self) -> None:
        self.conn.close()

    def _backends(self) -> list[int]:
        return [pid for (pid,) in self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")]

    def snapshot(self) -> dict:
        app = [p for master in self.server_pids for p in (master, *_children(master))]
        backends = self._backends()
        usage = os.times()
        busy, total = _machine()
        return {"at": time.perf_counter(), "client": usage.user + usage.system,
                "app": {p: _proc_cpu(p) for p in app}, "db": {p: _proc_cpu(p) for p in backends},
                "busy": busy, "total": total}

    def measure(self, before: dict) -> dict:
        after = self.snapshot()
        wall = after["at"] - before["at"]

        def used(kind: str) -> float:
            return sum(v - before[kind].get(p, 0.0) for p, v in after[kind].items())

        client, app, db = after["client"] - before["client"], used("app"), used("db")
        machine = after["busy"] - before["busy"]
        cores = (after["total"] - before["total"]) / wall if wall else 0
        share = {k: round(v / wall, 3) if wall else None for k, v in
                 (("client", client), ("app", app), ("db", db),
                  ("others", max(0.0, machine - client - app - db)), ("machine", machine))}
        return {"wall_s": round(wall, 3), "cores": round(cores, 1), "cpu_cores_used": share}


# --- the server ----------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    pid: int
    workers: int
    log_path: Path
    #: exceptions the app logged (filled when the server stops): exception line -> count
    errors: dict[str, int] = field(default_factory=dict)

    def worker_pids(self) -> list[int]:
        return _children(self.pid)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the gunicorn child before exec: end with the benchmark even if it is killed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def app_env(database_url: str, instance_dir: Path) -> dict[str, str]:
    return {**os.environ, "ECRF_CONFIG": "development", "DATABASE_URL": database_url,
            "ECRF_INSTANCE_DIR": str(instance_dir)}


@contextlib.contextmanager
def serve(database_url: str, port: int, workers: int = 4, *, worker_class: str = "sync",
          threads: int = 1, startup_timeout: float = 90.0,
          keep_log: Path | None = None, extra_config: str = "") -> Iterator[Server]:
    """gunicorn serving the app (development config) on 127.0.0.1:``port`` until the block ends.

    Returns once every worker has loaded the app and /health answers; stops the whole process
    group afterwards (SIGTERM, then SIGKILL), even when the block raises. The exceptions the
    app logged are then in ``Server.errors``; ``keep_log`` keeps a copy of gunicorn's log.
    ``extra_config`` is appended to gunicorn's configuration file (other server hooks)."""
    if not _port_free(port):
        raise RuntimeError(f"port {port} is in use: another server would be measured")
    folder = Path(tempfile.mkdtemp(prefix=f"ecrf-http-{port}-"))
    (folder / "hooks.py").write_text(_READY_HOOK.format(folder=str(folder)) + extra_config)
    log_path = folder / "gunicorn.log"
    command = [str(BIN / "gunicorn"), "--config", str(folder / "hooks.py"), "--workers", str(workers),
               "--worker-class", worker_class, "--threads", str(threads),
               "--bind", f"127.0.0.1:{port}", "--no-control-socket", "--graceful-timeout", "10",
               "--error-logfile", str(log_path), "--chdir", str(REPO), "wsgi:app"]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=app_env(database_url, folder), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)  # started before any client thread
    server = Server(f"http://127.0.0.1:{port}", proc.pid, workers, log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn on port {port} exited with {proc.returncode}:\n"
                                   + log_path.read_text()[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn on port {port} not ready in {startup_timeout:.0f} s")
            if len(list(folder.glob("ready-*"))) >= workers:
                with contextlib.suppress(requests.RequestException):
                    if requests.get(server.url + "/health", timeout=5).status_code == 200:
                        break
            time.sleep(0.2)
        yield server
    finally:
        _stop(proc)
        with contextlib.suppress(OSError):
            server.errors = logged_errors(log_path.read_text(errors="replace"))
            if keep_log is not None:
                shutil.copy(log_path, keep_log)
        shutil.rmtree(folder, ignore_errors=True)


def logged_errors(text: str) -> dict[str, int]:
    """The exception line of each traceback in a gunicorn log, counted."""
    found: dict[str, int] = {}
    for chunk in text.split("Traceback (most recent call last):")[1:]:
        line = next((x for x in chunk.splitlines()[1:] if x and not x[0].isspace()
                     and not x.startswith(("[", "The above", "During handling"))), "?")
        found[line[:300]] = found.get(line[:300], 0) + 1
    return found


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):  # workers left behind, or a master that hangs
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


# --- where to save: days not yet entered, each subject owned by one client --------------------


class SlotPool:
    """Empty daily SOFA days (D1..D14) per site. A client takes whole subjects, so concurrent
    clients never write the same casebook; what a client leaves unused goes back at release."""

    def __init__(self, free: dict[str, list[tuple[str, list[int]]]]) -> None:
        self._lock = threading.Lock()
        self.free = free

    @classmethod
    def from_database(cls, database_url: str, seed: int) -> SlotPool:
        rows = _query(database_url, """
            SELECT si.code, s.code, s.status = 'included', array(
                SELECT d FROM generate_series(1, 14) AS d WHERE NOT EXISTS (
                    SELECT 1 FROM form_instance f WHERE f.subject_id = s.id
                    AND f.crf_key = 'sofa_daily' AND f.visit_key = 'D' || d))
            FROM subject s JOIN site si ON si.id = s.site_id
            WHERE s.status IN ('screening', 'included') AND NOT EXISTS (
                SELECT 1 FROM closure_state c WHERE (c.frozen OR c.locked) AND (
                    c.level = 'study' OR c.site_id = s.site_id AND c.subject_id IS NULL
                    OR c.subject_id = s.id))
            ORDER BY s.code""")
        rng = random.Random(seed)
        rng.shuffle(rows)
        rows.sort(key=lambda row: row[2])  # included subjects first (taken from the end)
        free: dict[str, list[tuple[str, list[int]]]] = {}
        for site, code, _included, days in rows:
            if days:
                free.setdefault(site, []).append((code, list(days)))
        return cls(free)

    def add(self, site: str, code: str, days: list[int]) -> None:
        with self._lock:
            self.free.setdefault(site, []).insert(0, (code, days))

    def take(self, site: str) -> tuple[str, list[int]] | None:
        with self._lock:
            subjects = self.free.get(site) or []
            return subjects.pop() if subjects else None

    def size(self) -> dict[str, int]:
        with self._lock:
            return {site: sum(len(d) for _c, d in subjects) for site, subjects in self.free.items()}


@dataclass
class Saver:
    """A simulated investigator who saves daily SOFA forms into subjects of their own."""

    client: Client
    site: str
    pool: SlotPool
    held: list[tuple[str, list[int]]] = field(default_factory=list)

    def slots(self, n: int, phase: str) -> list[tuple[str, str]]:
        """``n`` (subject code, visit key) to save into; enrols a subject when the pool is dry."""
        out: list[tuple[str, str]] = []
        while len(out) < n:
            if not self.held:
                got = self.pool.take(self.site)
                if got is None:
                    token, sites = self.client.enrol_form()
                    code = self.client.enrol(phase + ":enrol", token, sites[self.site])
                    if code is None:
                        raise RuntimeError(f"no empty day left at site {self.site}, and enrolling "
                                           "a subject failed")
                    got = (code, list(DAYS))
                self.held.append(got)
            code, days = self.held[0]
            while days and len(out) < n:
                out.append((code, f"D{days.pop(0)}"))
            if not days:
                self.held.pop(0)
        return out

    def release(self) -> None:
        for code, days in self.held:
            if days:
                self.pool.add(self.site, code, days)
        self.held = []


def schema_problem(database_url: str) -> str | None:
    """Why the database does not match the code's migrations (the app would fail on it), if so."""
    revisions, parents = set(), set()
    for path in (REPO / "migrations" / "versions").glob("*.py"):
        text = path.read_text()
        revisions |= set(re.findall(r"^revision\b[^=]*=\s*['\"](\w+)['\"]", text, re.M))
        for line in re.findall(r"^down_revision\b[^=]*=(.*)$", text, re.M):
            parents |= set(re.findall(r"['\"](\w+)['\"]", line))
    heads = revisions - parents
    current = {v for (v,) in _query(database_url, "SELECT version_num FROM alembic_version")}
    if current != heads:
        return (f"the database is at migration {sorted(current)}, the code at {sorted(heads)}: "
                "run `ecrf db upgrade` on this copy first")
    return None


def _query(database_url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


def _threads(targets: list[Callable[[], None]]) -> None:
    """Run callables in threads; re-raise the first exception one of them raised."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as e:  # reported to the caller below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# --- the measurements --------------------------------------------------------------------------


def save_latency(saver: Saver, repeats: int, per_repeat: int, warmup: int) -> dict:
    """One client: open an empty day's form, then save it; the two are timed apart."""
    phase = "save_latency"
    for code, visit in saver.slots(warmup, phase):
        form, _s = saver.client.open_form(phase + ":warmup", code, visit)
        if form is not None:
            saver.client.save(phase + ":warmup", form)
    out = []
    for _ in range(repeats):
        gets, posts, confirmations = [], [], 0
        started = time.perf_counter()
        for code, visit in saver.slots(per_repeat, phase):
            form, seconds = saver.client.open_form(phase, code, visit)
            if form is None:
                continue
            gets.append(seconds)
            done = saver.client.save(phase, form)
            if done.ok:
                posts.append(done.post_seconds)
                confirmations += done.posts - 1
        wall = time.perf_counter() - started
        rep = {**latency(posts), **{f"form_get_{k}": v for k, v in latency(gets).items()},
               "confirmations": confirmations, "saves_per_s_with_get": round(len(posts) / wall, 2)}
        out.append(rep)
    return {"repeats": out, **over_repeats(out), **over_repeats(out, "form_get_")}


def _throughput_once(savers: list[Saver], per_client: int, phase: str, meter: Meter) -> dict:
    """Each client opens ``per_client`` forms, then all save together; the rate is taken over
    the time every client was still saving (until the first one ran out)."""
    opened: dict[int, list[OpenForm]] = {}

    def prepare(i: int, saver: Saver) -> Callable[[], None]:
        def run() -> None:
            forms = []
            for code, visit in saver.slots(per_client, phase):
                form, _s = saver.client.open_form(phase, code, visit)
                if form is not None:
                    forms.append(form)
            opened[i] = forms
        return run

    _threads([prepare(i, s) for i, s in enumerate(savers)])
    gate = threading.Barrier(len(savers) + 1)
    results: dict[int, list] = {}

    def work(i: int, saver: Saver) -> Callable[[], None]:
        def run() -> None:
            gate.wait()
            results[i] = [saver.client.save(phase, form, keep_flash=False) for form in opened[i]]
        return run

    threads = [threading.Thread(target=work(i, s), daemon=True) for i, s in enumerate(savers)]
    for t in threads:
        t.start()
    before = meter.snapshot()
    started = time.perf_counter()
    gate.wait()
    for t in threads:
        t.join()
    cpu = meter.measure(before)
    outcomes = [o for r in results.values() for o in r]
    saved = [o for o in outcomes if o.ok]
    ends = [r[-1].finished_at for r in results.values() if r]
    steady_end = min(ends) if ends else started
    steady = [o for o in saved if o.finished_at <= steady_end]
    total_window = (max(ends) if ends else started) - started
    rep = {"clients": len(savers), "saves": len(saved), "failed": len(outcomes) - len(saved),
           "confirmations": sum(o.posts - 1 for o in saved),
           "saves_per_s": round(len(steady) / (steady_end - started), 2) if steady else 0.0,
           "saves_per_s_whole_window": round(len(saved) / total_window, 2) if total_window else 0.0,
           "window_s": round(total_window, 3), **latency([o.post_seconds for o in saved]), **cpu}
    # CPU per save hardly depends on what else the machine runs, unlike the rates
    rep["cpu_ms_per_save"] = {k: round(1000 * cpu["cpu_cores_used"][k] * cpu["wall_s"] / len(saved), 2)
                              for k in ("client", "app", "db")} if saved else {}
    return rep


def save_throughput(savers: list[Saver], repeats: int, per_client: int, phase: str,
                    meter: Meter, warmup: bool = True) -> dict:
    if warmup:
        _throughput_once(savers, 1, phase + ":warmup", meter)
    out = [_throughput_once(savers, per_client, phase, meter) for _ in range(repeats)]
    return {"clients": len(savers), "saves_per_client": per_client, "repeats": out,
            "saves_per_s": spread([r["saves_per_s"] for r in out]), **over_repeats(out),
            "client_core_share": spread([r["cpu_cores_used"]["client"] for r in out], 3),
            "others_core_share": spread([r["cpu_cores_used"]["others"] for r in out], 3),
            "cpu_ms_per_save": {k: spread([r["cpu_ms_per_save"].get(k, float("nan")) for r in out])
                                for k in ("client", "app", "db")}}


def pick_pages(database_url: str) -> dict[str, tuple[str, str]]:
    """Page name -> (user, path), on subjects of site 01 that have data."""
    (code,) = _query(database_url, """
        SELECT s.code FROM subject s JOIN site si ON si.id = s.site_id
        JOIN form_instance f ON f.subject_id = s.id
        WHERE si.code = '01' GROUP BY s.code ORDER BY count(*) DESC, s.code LIMIT 1""")[0]
    # the item with the longest history (a corrected value, in the DEMO study)
    history = _query(database_url, """
        SELECT subject, form, item FROM audit_trail
        WHERE entity_type = 'item' AND site = '01' AND visit = 'D0' AND form NOT LIKE '%%#%%'
        GROUP BY subject, form, item ORDER BY count(*) DESC, subject, form, item LIMIT 1""")
    subject, crf_key, item = history[0] if history else (code, "sofa_daily", "pao2")
    return {
        "casebook grid (investigator)": ("investigator", f"/subjects/{code}/casebook"),
        "form page, saved day (investigator)": ("investigator", form_path(code, "D0")),
        "item history (investigator)": (
            "investigator", form_path(subject, "D0", crf_key) + f"/items/{item}/history"),
        "subject list (investigator)": ("investigator", "/subjects/"),
        "subject list (data manager)": ("datamanager", "/subjects/"),
        "query list (monitor)": ("monitor", "/queries/"),
        "query list (data manager)": ("datamanager", "/queries/"),
        "SDV backlog (monitor)": ("monitor", "/sdv/"),
        "study home (data manager)": ("datamanager", "/"),
        "audit viewer (auditor)": ("auditor", "/audit/"),
    }


def page_latency(clients: dict[str, Client], pages: dict[str, tuple[str, str]], repeats: int,
                 loads: int) -> dict:
    out: dict[str, dict] = {}
    for name, (user, path) in pages.items():
        client = clients[user]
        client.page("pages:warmup", path)
        reps = []
        for _ in range(repeats):
            started = time.perf_counter()
            seconds = [s for s in (client.page("pages", path) for _ in range(loads)) if s is not None]
            reps.append({**latency(seconds),
                         "pages_per_s": round(len(seconds) / (time.perf_counter() - started), 2)})
        out[name] = {"user": user, "path": path, "repeats": reps, **over_repeats(reps)}
        log(f"  {name:38} p50 {out[name]['p50_ms'].get('median', float('nan')):7.1f} ms"
            f"  p95 {out[name]['p95_ms'].get('median', float('nan')):7.1f} ms")
    return out


# --- scale-out -----------------------------------------------------------------------------------


def cross_sessions(a: Server, b: Server, failures: Failures) -> dict:
    """A session opened (logged in) on one server is honoured by the other."""
    checks = {}
    for first, second, name in ((a, b, "A->B"), (b, a, "B->A")):
        login = Client(first.url, "investigator", failures)
        login.login()
        other = Client(second.url, "investigator", failures)
        other.use_cookie(login.cookie)
        page_ok = other.page("scaleout:sessions", "/subjects/") is not None
        checks[f"page {name}"] = page_ok
        login.close()
        other.close()
    return checks


def cross_save(a: Server, b: Server, pool: SlotPool, failures: Failures) -> dict:
    """A form opened on server A (its CSRF and submission tokens) is saved through server B."""
    checks = {}
    for first, second, name in ((a, b, "A->B"), (b, a, "B->A")):
        opener = Client(first.url, "investigator", failures)
        opener.login()
        saver = Saver(opener, "01", pool)
        code, visit = saver.slots(1, "scaleout:sessions")[0]
        form, _s = opener.open_form("scaleout:sessions", code, visit)
        poster = Client(second.url, "investigator", failures)
        poster.http.cookies = opener.http.cookies.copy()
        checks[f"save {name}"] = form is not None and poster.save("scaleout:sessions", form).ok
        saver.release()
        opener.close()
        poster.close()
    return checks


def concurrent_enrolments(servers: list[Server], clients: int, each: int, database_url: str,
                          failures: Failures, pool: SlotPool) -> dict:
    """Investigators of both sites enrol at the same time through both servers; then the
    database must hold every new subject once, with codes that follow each other per site."""
    phase = "scaleout:enrol"
    before = dict(_query(database_url, "SELECT si.code, count(*) FROM subject s "
                                       "JOIN site si ON si.id = s.site_id GROUP BY si.code"))
    counters = dict(_query(database_url, "SELECT si.code, c.last_number FROM subject_counter c "
                                         "JOIN site si ON si.id = c.site_id"))
    enrolers = []
    for i in range(clients):
        site = "01" if i % 2 == 0 else "02"
        c = Client(servers[(i // 2) % len(servers)].url, INVESTIGATORS[site], failures, seed=i)
        c.login()
        token, sites = c.enrol_form()
        enrolers.append((c, token, sites[site]))
    gate = threading.Barrier(clients)
    codes: list[str] = []
    lock = threading.Lock()

    def work(c: Client, token: str, site_id: str) -> Callable[[], None]:
        def run() -> None:
            gate.wait()
            for _ in range(each):
                code = c.enrol(phase, token, site_id)
                if code is not None:
                    with lock:
                        codes.append(code)
        return run

    started = time.perf_counter()
    _threads([work(*e) for e in enrolers])
    seconds = time.perf_counter() - started
    for c, _t, _s in enrolers:
        c.close()
    duplicates = _query(database_url, "SELECT code, count(*) FROM subject GROUP BY code "
                                      "HAVING count(*) > 1")
    numbers = _query(database_url, "SELECT site_id, number, count(*) FROM subject "
                                   "GROUP BY site_id, number HAVING count(*) > 1")
    after = dict(_query(database_url, "SELECT si.code, count(*) FROM subject s "
                                      "JOIN site si ON si.id = s.site_id GROUP BY si.code"))
    found = {c for (c,) in _query(database_url, "SELECT code FROM subject WHERE code = ANY(%s)",
                                  (codes,))}
    expected = {f"{site}-{n:03d}" for site in counters
                for n in range(counters[site] + 1, counters[site] + 1 + after[site] - before[site])}
    for code in codes:
        pool.add(code.split("-")[0], code, list(DAYS))
    return {"attempted": clients * each, "enrolled": len(codes), "seconds": round(seconds, 3),
            "duplicate_codes_in_db": [list(r) for r in duplicates],
            "duplicate_site_numbers_in_db": [list(r) for r in numbers],
            "codes_returned_distinct": len(set(codes)) == len(codes),
            "codes_all_in_db": found == set(codes),
            "new_subjects_in_db": sum(after.values()) - sum(before.values()),
            "codes_consecutive_per_site": set(codes) == expected,
            "ok": (not duplicates and not numbers and len(set(codes)) == len(codes) == clients * each
                   and found == set(codes) and set(codes) == expected)}


def audit_verify(database_url: str) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="ecrf-http-verify-"))
    try:
        started = time.perf_counter()
        done = subprocess.run([str(BIN / "ecrf"), "audit", "verify"], cwd=REPO, capture_output=True,
                              text=True, env=app_env(database_url, folder))
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"ok": done.returncode == 0 and "Chain OK" in done.stdout, "exit_status": done.returncode,
            "seconds": round(seconds, 2),
            "output": (done.stdout + done.stderr).strip().splitlines()[-6:]}


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Plan:
    repeats: int
    latency_saves: int
    clients: list[int]
    saves_per_client: dict[int, int]
    page_loads: int
    enrol_clients: int
    enrolments_each: int
    #: one save per client before each throughput run (--quick relies on the earlier phases)
    warmup: bool = True

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        clients = [int(c) for c in args.clients.split(",") if c]
        quick = args.quick
        repeats = args.repeats or (3 if quick else 5)
        per = {c: args.saves_per_client or max(2 if quick else 8, (12 if quick else 48) // c)
               for c in clients}
        return cls(repeats, args.latency_saves or (8 if quick else 20), clients, per,
                   args.page_loads or (2 if quick else 12), 4 if quick else 8, 2 if quick else 3,
                   warmup=not quick)


def make_savers(urls: list[str], n: int, pool: SlotPool, failures: Failures,
                seed: int) -> list[Saver]:
    """``n`` investigators, alternately of site 01 and 02 (and of each server in ``urls``),
    logged in concurrently."""
    savers = [Saver(Client(urls[(i // 2) % len(urls)], INVESTIGATORS["01" if i % 2 == 0 else "02"],
                           failures, seed=seed + i), "01" if i % 2 == 0 else "02", pool)
              for i in range(n)]
    _threads([s.client.login for s in savers])
    return savers


class Timer:
    """Wall seconds of each phase, for the record (and to keep --quick quick)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 1)


def run(args: argparse.Namespace, results: dict) -> None:
    """Every measurement asked for, into ``results`` (filled as it goes: a run that stops on an
    error still says what it measured)."""
    plan = Plan.of(args)
    phases = set(args.phases.split(","))
    failures = Failures()
    timer = Timer()
    pool = SlotPool.from_database(args.database_url, args.seed)
    servers: list[Server] = []
    savers: list[Saver] = []
    users: dict[str, Client] = {}
    results.update({"meta": {
        "database": args.database_url.rsplit("/", 1)[-1], "workers": args.workers,
        "worker_class": args.worker_class, "threads": args.threads, "quick": args.quick,
        "plan": plan.__dict__, "empty_days_at_start": pool.size(), "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
        "client": f"requests {requests.__version__}", "phase_seconds": timer.seconds,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}})
    log(f"empty SOFA days per site: {pool.size()}; plan {plan}")
    meter = Meter(args.database_url)
    serve_opts = {"worker_class": args.worker_class, "threads": args.threads}

    def keep(port: int) -> Path | None:
        return args.logs / f"gunicorn-{port}.log" if args.logs else None

    try:
        with contextlib.ExitStack() as stack:
            with timer.phase("start"):
                server = stack.enter_context(serve(args.database_url, args.port, args.workers,
                                                   keep_log=keep(args.port), **serve_opts))
                servers.append(server)
                meter.server_pids = [server.pid]
                log(f"gunicorn {args.worker_class} x{args.workers} on {server.url}")
                savers = make_savers([server.url], max(plan.clients + [1]), pool, failures,
                                     args.seed)
                users = {"investigator": savers[0].client}
                for user in ("monitor", "datamanager", "auditor"):
                    users[user] = Client(server.url, user, failures)
                    users[user].login()
                pages = pick_pages(args.database_url)
                # what the app fills on first read (the SDV counts, which every save then keeps
                # current) is filled before measuring, as in a study in use
                for user, path in pages.values():
                    users[user].page("prime", path)
            single_server(plan, phases, savers, users, pages, meter, timer, results)
            if "scaleout" in phases:
                with timer.phase("scale_out"), serve(args.database_url, args.port + 1, args.workers,
                                                     keep_log=keep(args.port + 1), **serve_opts) as second:
                    servers.append(second)
                    results["scale_out"] = scale_out(server, second, savers, args, plan, pool,
                                                     failures, meter)
        if "scaleout" in phases:
            with timer.phase("audit_verify"):
                log("ecrf audit verify")
                verified = audit_verify(args.database_url)
                log(f"  {verified['output']}")
            so = results["scale_out"]
            so["audit_verify"] = verified
            so["ok"] = all(so["sessions"].values()) and so["enrolment"]["ok"] and verified["ok"]
    finally:
        meter.close()
        for client in [s.client for s in savers] + list(users.values()):
            client.close()
        results["failures"] = failures.as_list()
        results["failed_requests"] = failures.total()
        results["server_errors"] = {s.url: s.errors for s in servers if s.errors}


def single_server(plan: Plan, phases: set[str], savers: list[Saver], users: dict[str, Client],
                  pages: dict[str, tuple[str, str]], meter: Meter, timer: Timer,
                  results: dict) -> None:
    if "latency" in phases:
        with timer.phase("save_latency"):
            log("save latency, one client")
            results["save_latency"] = got = save_latency(savers[0], plan.repeats, plan.latency_saves, 3)
            log(f"  POST p50 {got['p50_ms']}  p95 {got['p95_ms']}")
    if "throughput" in phases:
        results["save_throughput"] = {}
        for n in plan.clients:
            with timer.phase(f"save_throughput_{n}"):
                log(f"save throughput, {n} clients")
                got = save_throughput(savers[:n], plan.repeats, plan.saves_per_client[n],
                                      f"save_throughput_{n}", meter, plan.warmup)
                results["save_throughput"][str(n)] = got
                log(f"  saves/s {got['saves_per_s']}  client cores {got['client_core_share']}")
    if "pages" in phases:
        with timer.phase("pages"):
            log("page latency")
            results["pages"] = page_latency(users, pages, plan.repeats, plan.page_loads)


def scale_out(a: Server, b: Server, savers: list[Saver], args, plan: Plan, pool: SlotPool,
              failures: Failures, meter: Meter) -> dict:
    """The single server (A) and a second one (B) on the same database; the single server's
    clients, every other one now working through B with the session it opened on A."""
    log(f"scale-out: a second server on {b.url}")
    out: dict = {"workers_per_server": args.workers, "servers": [a.url, b.url]}
    meter.server_pids = [a.pid, b.pid]
    out["sessions"] = {**cross_sessions(a, b, failures), **cross_save(a, b, pool, failures)}
    log(f"  sessions across servers: {out['sessions']}")
    out["enrolment"] = concurrent_enrolments([a, b], plan.enrol_clients, plan.enrolments_each,
                                             args.database_url, failures, pool)
    log(f"  concurrent enrolments: {out['enrolment']['enrolled']} ok={out['enrolment']['ok']}")
    n = max(plan.clients)
    for saver in savers[1:n:2]:
        saver.client.base_url = b.url
    try:
        got = save_throughput(savers[:n], plan.repeats, plan.saves_per_client[n], f"scale_out_{n}",
                              meter, plan.warmup)
    finally:
        for saver in savers[1:n:2]:
            saver.client.base_url = a.url
        meter.server_pids = [a.pid]
    out["save_throughput"] = got
    log(f"  combined saves/s {got['saves_per_s']} ({n} clients split over two servers)")
    return out


def summary(results: dict) -> list[str]:
    lines = []
    if "save_latency" in results:
        r = results["save_latency"]
        lines.append(f"save POST, one client: p50 {r['p50_ms'].get('median')} ms, "
                     f"p95 {r['p95_ms'].get('median')} ms (median over repeats); form page GET "
                     f"p50 {r['form_get_p50_ms'].get('median')} ms")
    single = results.get("save_throughput", {})
    for n, r in single.items():
        lines.append(f"saves/s with {n:>2} clients: median {r['saves_per_s'].get('median')} "
                     f"(p95 over repeats {r['saves_per_s'].get('p95')}); POST p95 "
                     f"{r['p95_ms'].get('median')} ms; CPU ms per save: "
                     + ", ".join(f"{k} {v.get('median')}" for k, v in r["cpu_ms_per_save"].items())
                     + f" (client: "
                     f"{r['client_core_share'].get('median')} of a core; others on the machine: "
                     f"{r['others_core_share'].get('median')} cores)")
    for name, r in results.get("pages", {}).items():
        lines.append(f"{name:38} p50 {r['p50_ms'].get('median')} ms  p95 {r['p95_ms'].get('median')} ms")
    if "scale_out" in results:
        s = results["scale_out"]
        got = s["save_throughput"]
        alone = single.get(str(got["clients"]), {}).get("saves_per_s", {}).get("median")
        lines.append(f"scale-out: {got['clients']} clients over two servers: median "
                     f"{got['saves_per_s'].get('median')} saves/s (one server: {alone}); sessions "
                     f"{'ok' if all(s['sessions'].values()) else 'FAILED'}; enrolments "
                     f"{'ok' if s['enrolment']['ok'] else 'FAILED'}; audit verify "
                     f"{'ok' if s['audit_verify']['ok'] else 'FAILED'}")
    lines.append(f"failed requests: {results['failed_requests']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="a PostgreSQL copy of a DEMO study (it is written to)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers per server")
    parser.add_argument("--worker-class", default="sync", choices=["sync", "gthread"])
    parser.add_argument("--threads", type=int, default=1, help="threads per gthread worker")
    parser.add_argument("--port", type=int, default=8100,
                        help="the single server's port; scale-out uses the next two")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients to measure")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--latency-saves", type=int, default=0, help="saves per repeat, one client")
    parser.add_argument("--saves-per-client", type=int, default=0,
                        help="saves per client per repeat in the throughput runs")
    parser.add_argument("--page-loads", type=int, default=0, help="loads of each page per repeat")
    parser.add_argument("--phases", default="latency,throughput,pages,scaleout")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--quick", action="store_true", help="a short run (under 2 minutes)")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--logs", type=Path, help="keep gunicorn's logs in this folder")
    args = parser.parse_args(argv)
    if not args.database_url or not args.database_url.startswith(("postgresql://", "postgres://")):
        parser.error("--database-url postgresql://... is required (the app's PostgreSQL copy)")

    def stop(_signum, _frame):
        raise SystemExit(143)  # so that the servers are stopped on the way out

    signal.signal(signal.SIGTERM, stop)
    problem = schema_problem(args.database_url)
    if problem:
        parser.error(problem)
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {}
    try:
        run(args, results)
    except Exception:
        results["error"] = traceback.format_exc()
        raise
    finally:
        results.setdefault("meta", {})["seconds"] = round(time.perf_counter() - started, 1)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    for line in summary(results):
        print(line)
    for f in results["failures"]:
        print(f"FAILED {f['count']}x {f['phase']}: {f['kind']} e.g. {f['examples'][0]}")
    for url, errors in results["server_errors"].items():
        for line, n in errors.items():
            print(f"SERVER ERROR {n}x on {url}: {line}")
    ok = (results["failed_requests"] == 0 and not results["server_errors"]
          and results.get("scale_out", {}).get("ok", True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
