"""Measurement helpers shared by the gen_durable worker and the peer scripts.

Only the standard library and psycopg are used here: every peer runs in its own
virtual environment (with its own psycopg), and imports this module by path.

What is measured, and how (the definitions ``docs/performance.md`` states):

- wall time of the timed window, taken inside the worker process with
  ``time.perf_counter`` — process start-up, imports, schema install and enqueueing
  the workload are outside it (the enqueue has its own figure);
- the worker process's CPU (``time.process_time`` over the same window);
- PostgreSQL's CPU: the ``utime + stime`` of the server backends connected to the
  scenario's own database, read from ``/proc/<pid>/stat`` at the start and the end of
  the window (each scenario has a fresh database, so these backends serve nobody
  else; server-wide processes — WAL writer, checkpointer — are not counted);
- commits: the ``xact_commit`` delta of the scenario's database in
  ``pg_stat_database``, read after the worker's connections closed (a backend flushes
  its counters when it exits).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo, sql

RESULT_MARK = "BENCH_RESULT "
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PEER_CHAIN_LENGTH = 3  # the job queues: 3 chained jobs; DBOS: a workflow of 3 steps
# Every scenario of bench/run.py, in report order; bench/gd_worker.py runs each.
SCENARIOS = (
    "chain",
    "jobs",
    "enqueue",
    "signals",
    "keys",
    "timers",
    "fanout",
    "latency",
    "memory",
    "limits",
)
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database (a URL stays a URL)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urllib.parse.urlsplit(dsn)
        return urllib.parse.urlunsplit(parts._replace(path="/" + dbname))
    return conninfo.make_conninfo(dsn, dbname=dbname)


def as_url(dsn: str) -> str:
    """A ``postgresql://`` URL for drivers that take nothing else."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return dsn
    params = conninfo.conninfo_to_dict(dsn)
    user = urllib.parse.quote(str(params.get("user", "")), safe="")
    password = params.get("password")
    auth = f"{user}:{urllib.parse.quote(str(password), safe='')}@" if password else f"{user}@"
    host = params.get("host", "localhost")
    port = params.get("port", 5432)
    return f"postgresql://{auth if user else ''}{host}:{port}/{params.get('dbname', '')}"


@contextmanager
def fresh_database(dsn: str, label: str) -> Iterator[str]:
    """CREATE DATABASE for one scenario run; DROP it (forcibly) afterwards."""
    name = f"gdbench_{label}_{uuid.uuid4().hex[:8]}".lower()
    # CREATE inside the try: a run stopped (SIGTERM, Ctrl-C) while the server creates
    # the database still drops it.
    try:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield with_dbname(dsn, name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _proc_cpu(pid: int) -> float | None:
    """utime + stime of one local process in seconds (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing paren.
    # A backend of a server on another host has no process here; a local process
    # that happens to carry the same pid is not a postgres one: both read as None.
    if text[text.index("(") + 1 : text.rindex(")")] != "postgres":
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class PgMeter:
    """PostgreSQL CPU and commits of one scenario database (see the module doc)."""

    def __init__(self, dsn: str) -> None:
        # Not autocommit: every read is rolled back, so the meter's own transactions
        # never show up in xact_commit (and each read sees fresh statistics).
        self._conn = psycopg.connect(dsn)
        self._start_cpu: dict[int, float] = {}
        self._start_commits = 0
        self._end_cpu: dict[int, float] = {}
        self.cpu_readable = True

    def _backends(self) -> dict[int, float]:
        rows = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
        self._conn.rollback()
        out: dict[int, float] = {}
        for (pid,) in rows:
            cpu = _proc_cpu(int(pid))
            if cpu is None:
                self.cpu_readable = False
                continue
            out[int(pid)] = cpu
        return out

    def _commits(self) -> int:
        row = self._conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        self._conn.rollback()
        assert row is not None
        return int(row[0])

    def _wait_quiet(self, timeout: float) -> None:
        """Wait until no other session is connected to this database."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self._conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            ).fetchone()
            self._conn.rollback()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.05)

    def start(self, quiet: bool = True) -> None:
        """Call when the timed window opens. ``quiet``: first wait until the setup
        sessions (schema install, enqueue) have gone, so their commits are counted
        before the window and not in it."""
        if quiet:
            self._wait_quiet(15.0)
        self._start_cpu = self._backends()
        self._start_commits = self._commits()

    def stop_cpu(self) -> None:
        """Call when the timed window closes, while the measured clients are connected."""
        self._end_cpu = self._backends()

    def finish(self, timeout: float = 15.0) -> dict[str, Any]:
        """Call after the measured clients disconnected: the PostgreSQL figures."""
        self._wait_quiet(timeout)
        commits = self._commits() - self._start_commits
        self._conn.close()
        cpu = sum(v - self._start_cpu.get(pid, 0.0) for pid, v in self._end_cpu.items())
        return {
            "pg_cpu_s": round(cpu, 4) if self.cpu_readable else None,
            "pg_commits": commits,
        }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def peak_rss_mb() -> float:
    """Current resident set size of this process in MiB (from /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Window:
    """The timed window: wall clock and this process's CPU."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.elapsed = 0.0
        self.cpu = 0.0

    def close(self) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0


def rates(
    window: Window, pg: dict[str, Any], units: int, unit: str, **extra: Any
) -> dict[str, Any]:
    """The figures every scenario reports, per ``unit`` (a step or a job)."""
    out: dict[str, Any] = {
        "elapsed_s": round(window.elapsed, 4),
        f"{unit}s": units,
        f"{unit}s_per_s": round(units / window.elapsed, 1) if window.elapsed else None,
        "worker_cpu_s": round(window.cpu, 4),
        f"worker_cpu_ms_per_{unit}": round(1000 * window.cpu / units, 4) if units else None,
        **pg,
    }
    if pg.get("pg_cpu_s") is not None and units:
        out[f"pg_cpu_ms_per_{unit}"] = round(1000 * pg["pg_cpu_s"] / units, 4)
    if units:
        out[f"commits_per_{unit}"] = round(pg["pg_commits"] / units, 3)
    out.update(extra)
    return out


def peer_rates(
    scenario: str, window: Window, pg: dict[str, Any], n: int, ran: int, enqueue_s: float
) -> dict[str, Any]:
    """A peer's figures: ``jobs`` per job; ``chain`` per step (3 per instance)."""
    total = n if scenario == "jobs" else n * PEER_CHAIN_LENGTH
    if ran != total:
        raise SystemExit(f"{ran} jobs/steps ran, expected {total}")
    extra: dict[str, Any] = {"enqueue_rows_per_s": round(n / enqueue_s, 1)}
    if scenario == "chain":
        extra["instances"] = n
        extra["instances_per_s"] = round(n / window.elapsed, 1)
    return rates(window, pg, total, "job" if scenario == "jobs" else "step", **extra)


def enqueue_rates(window: Window, pg: dict[str, Any], n: int, **extra: Any) -> dict[str, Any]:
    """The ``enqueue`` scenario's figures: one batch call of ``n`` rows."""
    return rates(window, pg, n, "row", **extra)


PeerRun = Callable[[str, str, int, dict[str, Any]], dict[str, Any]]


def peer_main(
    run: PeerRun,
    configure: Callable[[bool, int | None], dict[str, Any]],
    scenarios: tuple[str, ...] = ("jobs", "chain", "enqueue"),
) -> None:
    """Command line of a peer script:
    ``{jobs,chain,enqueue} --dsn DSN --n N [--defaults] [--concurrency N]``.

    ``configure(defaults, concurrency)`` gives the peer's settings: its tuned ones
    (neither flag), its library defaults (``--defaults``), or ``concurrency`` jobs in
    flight with what that needs (``--concurrency`` wins over ``--defaults``)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=scenarios)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--defaults", action="store_true", help="the library's defaults")
    parser.add_argument("--concurrency", type=int, help="jobs/steps in flight")
    args = parser.parse_args()
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    settings = configure(args.defaults, args.concurrency)
    result = run(args.scenario, args.dsn, args.n, settings)
    result["settings"] = settings
    emit(result)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a synchronous condition until true, or fail loudly at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout}s")
        time.sleep(0.01)


def emit(result: dict[str, Any]) -> None:
    """Print the one result line the orchestrator parses."""
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


def parse_result(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            value: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return value
    raise ValueError("the benchmark process printed no result line")
