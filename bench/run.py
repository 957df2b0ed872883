"""The performance benchmarks in one run, on PostgreSQL, against DEMO studies (`make bench`).

For each study size a DEMO database is generated once by ``ecrf demo --subjects N`` (timed: the
demo generation rate) and kept as a pg_dump under ``--cache``; every run restores a fresh working
copy from it, so runs that write (saves, exports) never measure a database changed by an earlier
run. Then, side by side in the same run:

- the command-line work: the ODM snapshot and transactional exports (ItemData per second, peak
  memory), the analysis datasets, ``ecrf audit verify`` (rows per second), at every size, so the
  exports' peak memory can be compared between the smallest and the largest study;
- real HTTP against gunicorn on the largest study (``bench/http_load.py``): save latency and
  throughput, page latencies, two app servers on one database;
- the cost of the audit trail against a plain write, SQLAlchemy-Continuum and pgbench running the
  statements of one save (``bench/side_by_side.py``).

Each figure is the median and the 95th percentile over repeats. The results go to a JSON file and
to ``docs/performance.md`` (with the command, the machine and the date).

    python bench/run.py                    # the full run: 500 and 5,000 subjects
    python bench/run.py --quick            # a short run: 50 and 100 subjects, fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
ECRF = str(BIN / "ecrf")
sys.path.insert(0, str(BENCH))

from exports_memory import peak_of  # noqa: E402  (a sibling script, not a package)
from report import render  # noqa: E402


def percentiles(values: list[float]) -> dict[str, float]:
    """Median and 95th percentile (nearest rank) of a list of measurements."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"median": statistics.median(ordered), "p95": p95, "n": len(ordered)}


# --- the databases -----------------------------------------------------------------------------


class Server:
    """The PostgreSQL server the benchmark runs on (libpq tools on the PATH)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def database_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(["psql", "-X", "-q", "-At", "-d", self.database_url(database), "-c", sql],
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()

    def recreate(self, name: str) -> None:
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._psql(f'CREATE DATABASE "{name}"')

    def query(self, name: str, sql: str) -> str:
        return self._psql(sql, name)

    def version(self) -> str:
        return self._psql("SHOW server_version")


def ecrf_env(database_url: str, instance: Path) -> dict[str, str]:
    instance.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "ECRF_CONFIG": "development", "DATABASE_URL": database_url,
            "ECRF_INSTANCE_DIR": str(instance), "ECRF_EXPORTS_QUEUE": "thread"}


def build_dump(server: Server, cache: Path, n: int) -> dict:
    """The dump of an n-subject DEMO study, generated once (the generation is timed)."""
    dump, info_file = cache / f"demo-{n}.dump", cache / f"demo-{n}.json"
    if dump.exists() and info_file.exists():
        return json.loads(info_file.read_text())
    name = f"ecrf_bench_build_{n}"
    server.recreate(name)
    env = ecrf_env(server.database_url(name), cache / f"instance-{n}")
    subprocess.run([ECRF, "db", "upgrade"], env=env, check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run([ECRF, "demo", "--subjects", str(n)], env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump), server.database_url(name)], check=True)
    info = {"subjects": n, "seconds": round(seconds, 1), "subjects_per_minute": round(60 * n / seconds, 1),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds")}
    info_file.write_text(json.dumps(info, indent=2))
    server._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"generated {n} subjects in {seconds:.0f} s ({info['subjects_per_minute']} per minute)",
          flush=True)
    return info


def working_copy(server: Server, cache: Path, n: int) -> str:
    """A fresh database restored from the dump; its URL."""
    name = f"ecrf_bench_run_{n}"
    server.recreate(name)
    subprocess.run(["pg_restore", "--no-owner", "-d", server.database_url(name),
                    str(cache / f"demo-{n}.dump")], check=True)
    # a dump made before a newer migration is brought to the code's schema first
    subprocess.run([ECRF, "db", "upgrade"], env=ecrf_env(server.database_url(name), cache / name),
                   check=True, capture_output=True)
    subprocess.run(["psql", "-X", "-q", "-d", server.database_url(name), "-c", "VACUUM ANALYZE"],
                   check=True)
    return name


COUNTS = {
    "subjects": "SELECT count(*) FROM subject",
    "form_instances": "SELECT count(*) FROM form_instance",
    "item_values": "SELECT count(*) FROM item_value",
    "audit_rows": "SELECT count(*) FROM audit_trail",
    "changed_values": "SELECT count(*) FROM audit_trail WHERE action = 'item.update'",
    "queries": "SELECT count(*) FROM data_query",
    "sdv_marks": "SELECT count(*) FROM item_verification",
    "signatures": "SELECT count(*) FROM signature",
}


def counts(server: Server, name: str) -> dict[str, int]:
    return {key: int(server.query(name, sql)) for key, sql in COUNTS.items()}


# --- the command-line work ---------------------------------------------------------------------


def cli_bench(server: Server, name: str, work: Path, repeats: int, audit_rows: int) -> dict:
    env = ecrf_env(server.database_url(name), work / name)
    out: dict[str, dict] = {}
    for kind, args in (("odm_snapshot", ["export", "odm", "--snapshot"]),
                       ("odm_transactional", ["export", "odm", "--transactional"]),
                       ("datasets", ["export", "datasets"])):
        seconds, peaks, rates = [], [], []
        target = work / f"{name}-{kind}.out"
        for _ in range(repeats):
            peak, wall = peak_of([ECRF, *args, "--as", "datamanager", "-o", str(target)], env)
            seconds.append(wall)
            peaks.append(peak)
            if kind.startswith("odm"):
                rates.append(_count_item_data(target) / wall)
        out[kind] = {"seconds": percentiles(seconds), "peak_mb": percentiles(peaks),
                     "bytes": target.stat().st_size}
        if rates:
            out[kind]["item_data_per_second"] = percentiles(rates)
            out[kind]["item_data"] = _count_item_data(target)
        target.unlink()
        print(f"  {kind}: {statistics.median(seconds):.1f} s, peak {max(peaks):.0f} MB", flush=True)
    rates, walls = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([ECRF, "audit", "verify"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0 or "Chain OK" not in done.stdout:
            raise SystemExit(f"ecrf audit verify failed on {name}:\n{done.stdout}{done.stderr}")
        checked = int(re.search(r"Rows checked: (\d+)", done.stdout).group(1))
        rates.append(checked / wall)
        walls.append(wall)
    out["audit_verify"] = {"rows": checked, "seconds": percentiles(walls),
                           "rows_per_second": percentiles(rates)}
    print(f"  audit verify: {checked} rows in {statistics.median(walls):.1f} s", flush=True)
    return out


def _count_item_data(path: Path) -> int:
    """``<ItemData`` elements in a file, read in blocks (the file may be large)."""
    found, tail = 0, b""
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            chunk = tail + block
            found += chunk.count(b"<ItemData ") + chunk.count(b"<ItemData>")
            tail = chunk[-10:]
            found -= tail.count(b"<ItemData ") + tail.count(b"<ItemData>")
    return found + tail.count(b"<ItemData ") + tail.count(b"<ItemData>")


def demo_rate(server: Server, work: Path, n: int, repeats: int) -> dict:
    """Demo generation, repeated at a small size (the large build is timed once, when cached)."""
    rates = []
    for i in range(repeats):
        name = f"ecrf_bench_demo_{i}"
        server.recreate(name)
        env = ecrf_env(server.database_url(name), work / name)
        subprocess.run([ECRF, "db", "upgrade"], env=env, check=True, capture_output=True)
        started = time.perf_counter()
        subprocess.run([ECRF, "demo", "--subjects", str(n)], env=env, check=True, capture_output=True)
        rates.append(60 * n / (time.perf_counter() - started))
        server._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {"subjects": n, "subjects_per_minute": percentiles(rates)}


# --- the other benchmark scripts ---------------------------------------------------------------


def script(name: str, database_url: str, work: Path, quick: bool, extra: list[str] = ()) -> dict:
    """Run ``bench/<name>.py`` on a database; its JSON results."""
    out = work / f"{name}.json"
    command = [sys.executable, str(BENCH / f"{name}.py"), "--database-url", database_url,
               "--json", str(out), *(["--quick"] if quick else []), *extra]
    print(f"$ {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def machine() -> dict:
    memory = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), None)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"cores": os.cpu_count(), "memory_mb": memory, "cpu": cpu, "python": platform.python_version(),
            "commit": commit, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small studies, fewer repeats")
    parser.add_argument("--sizes", type=int, nargs="+", help="study sizes (default 500 5000)")
    parser.add_argument("--server", default=os.environ.get("ECRF_BENCH_PG", "postgresql://127.0.0.1:5432"),
                        help="the PostgreSQL server (no database name)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ecrf-bench/pg"),
                        help="where the generated studies' dumps are kept between runs")
    parser.add_argument("--repeats", type=int, help="repeats of each command-line measurement")
    parser.add_argument("--only", default="cli,http,side,demo", help="parts to run")
    parser.add_argument("--json", type=Path, default=Path("/tmp/ecrf-bench/results.json"))
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md",
                        help="the page to write (none: --docs '')")
    args = parser.parse_args()
    sizes = args.sizes or ([50, 100] if args.quick else [500, 5000])
    repeats = args.repeats or (1 if args.quick else 3)
    parts = set(args.only.split(","))
    for tool in ("psql", "pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (PostgreSQL's client tools)")
    server, work = Server(args.server), args.cache / "work"
    args.cache.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": " ".join(["python bench/run.py", *sys.argv[1:]]), "machine": machine(),
                     "postgresql": server.version(), "sizes": {}, "quick": args.quick}
    largest = None
    for n in sizes:
        build = build_dump(server, args.cache, n)
        name = working_copy(server, args.cache, n)
        entry = {"build": build, "counts": counts(server, name)}
        print(f"study of {n} subjects: {entry['counts']}", flush=True)
        if "cli" in parts:
            entry["cli"] = cli_bench(server, name, work, repeats, entry["counts"]["audit_rows"])
        results["sizes"][str(n)] = entry
        largest = name
    url = server.database_url(largest)
    if "http" in parts:
        results["http"] = script("http_load", url, work, args.quick)
    if "side" in parts:
        results["side_by_side"] = script("side_by_side", url, work, args.quick)
    if "demo" in parts:
        results["demo"] = demo_rate(server, work, 20 if args.quick else 100, repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"results: {args.json}")
    if str(args.docs):
        args.docs.write_text(render(results))
        print(f"written: {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
