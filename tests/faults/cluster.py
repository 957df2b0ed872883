"""A PostgreSQL cluster of the fault test's own: ``initdb`` in a temporary folder, listening on
loopback only, on a free port, so that it can be stopped and restarted in the middle of a run
without touching any other server.

The binaries are PostgreSQL's own (``PG_BIN``, else the newest ``/usr/lib/postgresql/<v>/bin``,
else ``pg_config --bindir``, else the PATH). PostgreSQL refuses to run as root: run as root, the
cluster belongs to the ``postgres`` account and its commands run as that account.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL binaries here (or no account to run them as)."""


def find_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0])
    candidates += reversed(versions)
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise ClusterUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One PostgreSQL server: its data folder, its port, its log."""

    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir, self.root, self.port = bindir, root, port
        self.data, self.log = root / "data", root / "postgresql.log"
        self._as: dict = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterUnavailable("running as root and no postgres account") from None
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            os.chown(root, account.pw_uid, account.pw_gid)

    @classmethod
    def create(cls) -> Cluster:
        """initdb in a new temporary folder, then start it."""
        bindir = find_bindir()
        root = Path(tempfile.mkdtemp(prefix="ecrf-faults-pg-"))
        cluster = cls(bindir, root, free_port())
        try:
            cluster._run("initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust",
                         "-E", "UTF8", "--locale=C", "--no-sync")
            with (cluster.data / "postgresql.conf").open("a") as conf:
                conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {cluster.port}\n"
                           f"unix_socket_directories = '{root}'\nmax_connections = 60\n")
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([str(self.bindir / program), *args], capture_output=True,
                              text=True, timeout=timeout, cwd=self.root, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> None:
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: backends are terminated, a shutdown checkpoint is written; ``immediate``:
        every process quits at once, and the next start recovers from the WAL (as after a crash)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def running(self) -> bool:
        done = subprocess.run([str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)],
                              capture_output=True, cwd=self.root, **self._as)
        return done.returncode == 0

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
