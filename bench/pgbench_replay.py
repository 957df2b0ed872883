"""One audited save's SQL, captured from the PostgreSQL log and replayed by ``pgbench -f``.

Capture: statement logging (``log_statement = 'all'``, full parameters) is switched on for the
one connection the save runs on (a superuser ``SET``), between two marker statements; the
statements and their ``DETAIL: parameters:`` lines are read back from the server log for that
backend's pid.

Replay: the statements are written, in order and in one transaction, with their parameters as
literals (the script needs ``-M extended`` or ``-M prepared``, where pgbench variables are sent
as parameters), except the values that must differ from one transaction to the next or that the
database hands out during the transaction (see ``Replay.changes``). Nothing is dropped: every
SELECT, INSERT and UPDATE the save sent is sent again, against the same tables and indexes, with
the chain head taken ``FOR UPDATE`` and moved on exactly as the product does.
"""

from __future__ import annotations

import re
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

BEGIN_MARK = "ecrf-bench-capture-begin"
END_MARK = "ecrf-bench-capture-end"
_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] ")
_MESSAGE = re.compile(r"(LOG|DETAIL):  (.*)$", re.DOTALL)
_EXECUTE = re.compile(r"^(?:statement|execute [^:]+): (.*)$", re.DOTALL)
_PARAM = re.compile(r"\$(\d+) = (NULL|'(?:[^']|'')*')")
_PLACEHOLDER = re.compile(r"\$(\d+)")


@dataclass
class Statement:
    sql: str
    params: dict[int, str] = field(default_factory=dict)


# --- capture ------------------------------------------------------------------------------


def log_file(conn: sa.Connection, given: str | None = None) -> Path:
    """The server's log file: given, the collector's current file, or Debian's per-cluster file."""
    if given:
        return Path(given)
    current = conn.exec_driver_sql("SELECT pg_current_logfile()").scalar()
    if current:
        path = Path(current)
        if not path.is_absolute():
            path = Path(conn.exec_driver_sql("SHOW data_directory").scalar()) / path
        return path
    cluster = conn.exec_driver_sql("SHOW cluster_name").scalar() or ""
    version = conn.exec_driver_sql("SHOW server_version_num").scalar()
    name = cluster.replace("/", "-") or f"{int(version) // 10000}-main"
    return Path(f"/var/log/postgresql/postgresql-{name}.log")


def start_capture(conn: sa.Connection) -> int:
    """Log every statement of this connection, with its parameters; the backend's pid."""
    if "[%p]" not in conn.exec_driver_sql("SHOW log_line_prefix").scalar():
        raise RuntimeError("log_line_prefix must contain [%p] to tell this backend's lines apart")
    conn.exec_driver_sql("SET log_statement = 'all'")
    conn.exec_driver_sql("SET log_parameter_max_length = -1")
    conn.exec_driver_sql(f"SELECT '{BEGIN_MARK}'")
    return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()


def end_capture(conn: sa.Connection) -> None:
    conn.exec_driver_sql(f"SELECT '{END_MARK}'")
    conn.exec_driver_sql("RESET log_statement")
    conn.exec_driver_sql("RESET log_parameter_max_length")


def read_log(path: Path, offset: int, pid: int) -> list[Statement]:
    """The statements backend ``pid`` logged between the two markers, with their parameters."""
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", errors="replace")
    entries: list[list] = []  # [pid, kind, text]
    for line in text.splitlines():
        head = _LINE.match(line)
        if head is None:
            if entries:
                entries[-1][2] += "\n" + line
            continue
        found = _MESSAGE.search(line, head.end())
        entries.append([int(head.group(1)), found.group(1) if found else "", found.group(2) if found else ""])
    statements: list[Statement] = []
    inside = False
    for entry_pid, kind, body in entries:
        if entry_pid != pid:
            continue
        if kind == "LOG":
            executed = _EXECUTE.match(body)
            if executed is None:
                continue
            sql = executed.group(1)
            if BEGIN_MARK in sql:
                inside = True
                continue
            if END_MARK in sql:
                break
            if inside and "pg_backend_pid()" not in sql:
                statements.append(Statement(sql))
        elif kind == "DETAIL" and inside and statements and body.startswith("parameters: "):
            statements[-1].params = {int(n): v for n, v in _PARAM.findall(body)}
    if not inside:
        raise RuntimeError(f"no captured statements of backend {pid} in {path}")
    return statements


def one_transaction(statements: list[Statement]) -> list[Statement]:
    """What the save sent: after the COMMIT that closes the marker's transaction, up to the save's
    own COMMIT (the marker at the end opens a transaction of its own)."""
    commits = [i for i, st in enumerate(statements) if st.sql.strip().upper() == "COMMIT"]
    if len(commits) < 2:
        raise RuntimeError("the capture does not hold a whole transaction")
    return statements[commits[0] + 1:commits[-1] + 1]


# --- turning them into a pgbench script --------------------------------------------------------


def _split_top(text: str) -> list[str]:
    """Split on the commas outside parentheses (``NUMERIC(24, 8)`` stays whole)."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if current:
        parts.append("".join(current).strip())
    return parts


def _tuples_after(sql: str, start: int) -> list[str]:
    """The parenthesised tuples following ``start`` (a VALUES list), as their inner text."""
    tuples, i = [], start
    while True:
        while i < len(sql) and sql[i] in " ,":
            i += 1
        if i >= len(sql) or sql[i] != "(":
            return tuples
        depth, j = 0, i
        while j < len(sql):
            depth += {"(": 1, ")": -1}.get(sql[j], 0)
            if depth == 0:
                break
            j += 1
        tuples.append(sql[i + 1:j])
        i = j + 1


def bound_columns(sql: str) -> dict[int, tuple[str, str, int]]:
    """Placeholder number -> (table, column, row of a multi-row VALUES) it is bound to."""
    where: dict[int, tuple[str, str, int]] = {}
    insert = re.match(r"INSERT INTO (\w+) \(([^)]*)\)", sql)
    if insert:
        table, columns = insert.group(1), [c.strip() for c in insert.group(2).split(",")]
        values = sql.find("VALUES (")
        rows = _tuples_after(sql, values + len("VALUES ")) if values >= 0 else []
        for i, row in enumerate(rows):
            for column, part in zip(columns, _split_top(row), strict=False):
                found = _PLACEHOLDER.match(part)
                if found:
                    where[int(found.group(1))] = (table, column, i)
    update = re.match(r"UPDATE (\w+) SET (.*?) WHERE ", sql, re.DOTALL)
    if update:
        for column, n in re.findall(r"(\w+)=\$(\d+)", update.group(2)):
            where[int(n)] = (update.group(1), column, 0)
    for table, column, n in re.findall(r"(\w+)\.(\w+) = \$(\d+)", sql):
        where.setdefault(int(n), (table, column, 0))
    for n, table, column in re.findall(r"\$(\d+)(?:::[A-Z ]+)? = (\w+)\.(\w+)", sql):
        where.setdefault(int(n), (table, column, 0))
    for table, column, inside in re.findall(r"(\w+)\.(\w+) IN \(([^)]*)\)", sql):
        for n in _PLACEHOLDER.findall(inside):
            where.setdefault(int(n), (table, column, 0))
    return where


@dataclass
class Replay:
    """A pgbench script replaying one save, and what it changed from the captured statements."""

    script: str
    statements: int
    changes: list[str]
    audit_rows: int


_VARIABLE_LIKE = re.compile(r":[A-Za-z_\u0080-\U0010ffff]")


def _literal(value: str) -> str:
    """A logged literal as pgbench may send it: pgbench takes any ``:name``, even one inside
    quotes, for a variable, so such colons are written ``\\x3a`` in an escape string (the same
    constant once parsed)."""
    if not value.startswith("'") or not _VARIABLE_LIKE.search(value):
        return value
    return "E" + value.replace("\\", "\\\\").replace(":", "\\x3a")


def _unquote(literal: str) -> str:
    return literal[1:-1].replace("''", "'") if literal.startswith("'") else literal


def build_script(statements: list[Statement], *, form_id: int, token: str | None, subject_id: int,
                 subject_ids: tuple[int, int] | None) -> Replay:
    """The pgbench script; ``subject_ids`` (first, last) when the subjects' ids are contiguous."""
    audit_seqs = sorted(int(_unquote(st.params[n])) for st in statements
                        if st.sql.startswith("INSERT INTO audit_trail")
                        for n, (_t, c, _r) in bound_columns(st.sql).items() if c == "seq")
    if not audit_seqs:
        raise RuntimeError("the captured save wrote no audit_trail rows")
    base = audit_seqs[0] - 1
    seq = "(CAST(:h_last_seq AS bigint) + {})"
    counts = {"sid": 0, "slot": 0, "form": 0, "token": 0, "seq": 0, "hash": 0, "clock": 0}

    def replace(table: str, column: str, value: str, row_seq: int | None) -> str | None:
        plain = _unquote(value)
        if table == "form_instance" and column in ("visit_repeat", "form_repeat"):
            counts["slot"] += 1
            return "CAST(:vr AS integer)" if column == "visit_repeat" else "CAST(:fr AS integer)"
        if subject_ids and plain == str(subject_id) and (
                column == "subject_id" or (table == "subject" and column == "id")):
            counts["sid"] += 1
            return "CAST(:sid AS integer)"
        if plain == str(form_id) and (column == "form_instance_id" or (
                table == "form_instance" and column == "id") or (
                table == "audit_trail" and column == "entity_id")):
            counts["form"] += 1
            return "CAST(:f_id AS integer)" if column != "entity_id" else "CAST(:f_id AS text)"
        if token is not None and column == "token" and plain == token:
            counts["token"] += 1
            return "md5(CAST(:tok AS text))"
        if column == "seq" and table in ("audit_trail", "audit_value") or (
                table == "audit_chain_head" and column == "last_seq"):
            counts["seq"] += 1
            return seq.format(int(plain) - base)
        if table == "audit_trail" and column == "row_hash":
            counts["hash"] += 1
            return "(md5('r' || {0}) || md5('h' || {0}))".format(seq.format(row_seq - base))
        if (table, column) in (("audit_trail", "recorded_at"), ("audit_chain_head", "last_recorded_at")):
            counts["clock"] += 1
            return "CAST(:h_clock_timestamp_1 AS timestamptz)"
        return None

    lines = []
    if subject_ids:
        lines.append(f"\\set sid random({subject_ids[0]}, {subject_ids[1]})")
    lines += ["\\set vr random(2, 2147483647)", "\\set fr random(1, 2147483647)",
              "\\set tok random(1, 9223372036854775806)"]
    texts = [" ".join(st.sql.split()) for st in statements]
    pipelines = 0
    for i, st in enumerate(statements):
        sql = texts[i]
        # a run of one INSERT is psycopg's executemany, which pipelines its rows: so does pgbench
        repeated = sql.startswith("INSERT") and (i + 1 < len(texts) and texts[i + 1] == sql)
        if repeated and (i == 0 or texts[i - 1] != sql):
            lines.append("\\startpipeline")
            pipelines += 1
        if sql in ("", ";"):
            lines.append("-- the connection pool's pre-ping (an empty query pgbench would skip)")
            lines.append("SELECT 1;")
            continue
        columns = bound_columns(sql)
        #: the seq of each row of this statement, for the row_hash of the same row
        row_seqs = {r: int(_unquote(st.params[n])) for n, (t, c, r) in columns.items()
                    if t == "audit_trail" and c == "seq"}

        def substitute(found: re.Match, columns=columns, st=st, row_seqs=row_seqs) -> str:
            n = int(found.group(1))
            value = st.params.get(n, "NULL")
            if n in columns:
                table, column, row = columns[n]
                replaced = replace(table, column, value, row_seqs.get(row))
                if replaced is not None:
                    return replaced
            return _literal(value)

        sql = _PLACEHOLDER.sub(substitute, sql)
        if "FROM audit_chain_head" in sql and sql.endswith("FOR UPDATE"):
            lines.append(sql + " \\gset h_")
        elif sql.startswith("INSERT INTO form_instance") and sql.endswith("RETURNING form_instance.id"):
            lines.append(sql + " \\gset f_")
        else:
            lines.append(sql + ";")
        if i > 0 and texts[i - 1] == texts[i] and texts[i].startswith("INSERT") and (
                i + 1 == len(texts) or texts[i + 1] != texts[i]):
            lines.append("\\endpipeline")
    changes = [
        f"form_instance.visit_repeat and form_repeat ({counts['slot']} places) are random "
        "(visit_repeat >= 2) so that each transaction creates a new form, as each save does",
        f"the new form's id ({counts['form']} places: its item values, token, status update, "
        "queries lookup, audit entity id) is the one its INSERT ... RETURNING gives (\\gset)",
        f"the submission token ({counts['token']} places) is md5 of a random number: a new "
        "32-character token each time, as the web form sends",
        f"audit seq numbers ({counts['seq']} places) are last_seq + k, last_seq read by the "
        "same SELECT ... FOR UPDATE of the chain head (\\gset), as the product assigns them",
        f"row_hash ({counts['hash']} rows) is md5(seq) || md5(seq): unique (the column is) and "
        "random-looking like a SHA-256; the SHA-256 chain itself is computed in Python by the "
        "product, not by the database",
        "literals holding ':name' (which pgbench would take for a variable) are written as "
        "escape strings with the colon as \\x3a: the same constants",
        f"recorded_at/last_recorded_at ({counts['clock']} places) are the clock_timestamp() read "
        "with the chain lock, as in the product",
    ]
    if subject_ids:
        changes.insert(0, f"the subject ({counts['sid']} places) is random among all subjects, "
                          "as the saves are spread over subjects")
    changes.append("the pool's pre-ping (an empty query) is sent as SELECT 1: one round trip")
    changes.append(f"{pipelines} runs of one INSERT repeated (psycopg's executemany, which sends "
                   "them in pipeline mode) are sent between \\startpipeline and \\endpipeline")
    return Replay("\n".join(lines) + "\n", len(statements), changes, len(audit_seqs))


# --- scratch copy and runs ------------------------------------------------------------------


def _admin_url(url: sa.URL) -> sa.URL:
    return url.set(database="postgres")


def copy_database(url: sa.URL, target: str) -> str:
    """A scratch copy of ``url``'s database: a template copy, or a dump and restore if in use."""
    source = url.database
    if not target.startswith("ecrf_bench_") or target in (source, "ecrf_bench_5000"):
        raise SystemExit(f"refusing to use {target!r} as a scratch database")
    admin = sa.create_engine(_admin_url(url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{target}"')
            try:
                conn.exec_driver_sql(f'CREATE DATABASE "{target}" TEMPLATE "{source}"')
                return "template"
            except sa.exc.DBAPIError:  # the source has other sessions: dump and restore
                conn.exec_driver_sql(f'CREATE DATABASE "{target}"')
        args = _conn_args(url)
        dump = subprocess.Popen(["pg_dump", *args, "-Fc", source], stdout=subprocess.PIPE)
        subprocess.run(["pg_restore", *args, "-d", target], stdin=dump.stdout, check=True)
        if dump.wait() != 0:
            raise SystemExit(f"pg_dump of {source} failed")
        copy = sa.create_engine(url.set(database=target), isolation_level="AUTOCOMMIT")
        with copy.connect() as conn:  # a restore has no planner statistics
            conn.exec_driver_sql("ANALYZE")
        copy.dispose()
        return "dump and restore, then ANALYZE"
    finally:
        admin.dispose()


def drop_database(url: sa.URL, target: str) -> None:
    if not target.startswith("ecrf_bench_") or target in (url.database, "ecrf_bench_5000"):
        raise SystemExit(f"refusing to drop {target!r}")
    admin = sa.create_engine(_admin_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{target}"')
    admin.dispose()


def _conn_args(url: sa.URL) -> list[str]:
    args = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432)]
    return args + (["-U", url.username] if url.username else [])


_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_DONE = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)


def run_pgbench(url: sa.URL, database: str, script: Path, clients: int, seconds: float,
                mode: str = "prepared") -> dict:
    command = ["pgbench", *_conn_args(url), "-n", "-f", str(script), "-c", str(clients),
               "-j", str(min(2, clients)), "-T", str(max(1, round(seconds))), "-M", mode, database]
    done = subprocess.run(command, capture_output=True, text=True)
    out = done.stdout + done.stderr
    tps = _TPS.search(out)
    if done.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{out[-3000:]}")
    failed = _FAILED.search(out)
    latency = _LATENCY.search(out)
    return {"tps": float(tps.group(1)), "transactions": int(_DONE.search(out).group(1)),
            "failed": int(failed.group(1)) if failed else 0,
            "latency_avg_ms": float(latency.group(1)) if latency else None}


def check_script(url: sa.URL, database: str, script: Path, mode: str = "prepared") -> dict[str, int]:
    """Run the script once and count the rows it added per table (the same as one save's)."""
    tables = ("form_instance", "item_value", "submission", "audit_trail", "audit_value")
    engine = sa.create_engine(url.set(database=database))
    try:
        with engine.connect() as conn:
            before = {t: conn.scalar(sa.text(f'SELECT count(*) FROM "{t}"')) for t in tables}  # noqa: S608
        done = subprocess.run(["pgbench", *_conn_args(url), "-n", "-f", str(script), "-c", "1",
                               "-t", "1", "-M", mode, database], capture_output=True, text=True)
        if done.returncode != 0 or "failed transactions: 0 " not in done.stdout:
            raise RuntimeError(f"the replay script does not run:\n{(done.stdout + done.stderr)[-3000:]}")
        with engine.connect() as conn:
            return {t: conn.scalar(sa.text(f'SELECT count(*) FROM "{t}"')) - before[t]  # noqa: S608
                    for t in tables}
    finally:
        engine.dispose()


def median_tps(runs: list[dict]) -> float:
    return statistics.median(r["tps"] for r in runs)
