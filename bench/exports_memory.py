"""Peak memory of the exports as the study grows: the exports stream, so the peak must stay flat.

For each study size, a DEMO study is built once (``ecrf demo --subjects N``, cached under
``--work``), then each export runs in a process of its own, whose peak resident memory is read
from the operating system (``getrusage`` of the finished child). The benchmark fails when the
largest study's peak exceeds the smallest one's by more than ``--tolerance`` (20 %).

    python bench/exports_memory.py --subjects 50 2000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ECRF = str(Path(sys.executable).with_name("ecrf"))
KINDS = {
    "odm_snapshot": ["export", "odm", "--snapshot"],
    "odm_transactional": ["export", "odm", "--transactional"],
    "datasets": ["export", "datasets"],
    "pdf": ["export", "pdf", "--site", "01"],
    "audit_jsonl": ["audit", "export"],
}


def _env(work: Path, n: int) -> dict[str, str]:
    return {**os.environ, "ECRF_INSTANCE_DIR": str(work / f"study-{n}"),
            "DATABASE_URL": f"sqlite:///{work / f'study-{n}' / 'ecrf.sqlite'}",
            "ECRF_CONFIG": "development"}


def build(work: Path, n: int) -> None:
    if (work / f"study-{n}" / "built").exists():
        return
    env = _env(work, n)
    (work / f"study-{n}").mkdir(parents=True, exist_ok=True)
    subprocess.run([ECRF, "db", "upgrade"], env=env, check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run([ECRF, "demo", "--subjects", str(n)], env=env, check=True, capture_output=True)
    print(f"built a study of {n} subjects in {time.perf_counter() - started:.0f} s", flush=True)
    (work / f"study-{n}" / "built").touch()


def peak_of(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak resident MB, seconds) of one command run in a child process."""
    started = time.perf_counter()
    # a fresh interpreter between the benchmark and the export, so ru_maxrss is the export's own
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    done = subprocess.run([sys.executable, "-c", code, *command], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[50, 2000])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/ecrf-bench"))
    parser.add_argument("--tolerance", type=float, default=0.20)
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    results: dict[str, dict[int, tuple[float, float]]] = {k: {} for k in kinds}
    for n in args.subjects:
        build(args.work, n)
        env = _env(args.work, n)
        for kind in kinds:
            out = args.work / f"study-{n}" / f"out-{kind}"
            results[kind][n] = peak_of([ECRF, *KINDS[kind], "--as", "datamanager", "-o", str(out)],
                                       env)
            peak, seconds = results[kind][n]
            print(f"{kind:18} {n:6} subjects  peak {peak:7.1f} MB  {seconds:7.1f} s", flush=True)
    failed = False
    small, large = min(args.subjects), max(args.subjects)
    for kind in kinds:
        growth = results[kind][large][0] / results[kind][small][0] - 1
        verdict = "ok" if growth <= args.tolerance else "NOT FLAT"
        failed |= growth > args.tolerance
        print(f"{kind:18} peak {small} -> {large} subjects: {growth:+.0%} ({verdict})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
