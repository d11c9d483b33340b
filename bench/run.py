"""The side-by-side benchmark: gen_durable and its peers, one invocation, one server.

::

    make bench                      # full sizes, 3 runs per scenario, peers included
    make bench-quick                # reduced sizes, 1 run (marked so in the report)
    python bench/run.py --scenarios chain,jobs --peers pgqueuer,dbos
    python bench/run.py --quick --peers none --scenarios chain --size tiny
    python bench/run.py --baseline main --scenarios chain,jobs --peers none

Every scenario run gets a fresh database (``CREATE DATABASE`` on the server named by
``--dsn`` / ``GEN_DURABLE_DSN``, dropped afterwards) and its own process: gen_durable
runs in ``bench/gd_worker.py``, each peer in ``bench/peers/<peer>_bench.py`` under the
peer's own virtualenv (``bench/.venvs/<peer>``, created here with pinned versions).
Runs are interleaved — run 1 of every system, then run 2 … — so background noise
spreads over all of them. The report (``docs/performance.md`` by default) is fully
generated from the run: the machine, the settings, the command, the medians, the
spreads and the gen_durable / peer ratios. Raw results go to ``bench/results/``.

``--baseline REV`` adds an earlier revision of this repository as one more system,
``gen_durable@<short rev>``: ``git archive REV src bench`` is unpacked into a temporary
directory (removed afterwards, also when the run fails or is interrupted) and that
revision's own ``bench/gd_worker.py`` runs with ``PYTHONPATH=<checkout>/src:<checkout>/bench``,
so it imports its own ``gen_durable`` ahead of this tree's editable install; the same
interpreter, server, sizes and event loop, interleaved run by run like the peers. Before
the first run the baseline's worker must parse every command line this script will give
it and import the checkout's ``gen_durable``, else the run stops with the reason; each
run then reports the package it imported, and one of this tree's counts as failed. The
report and the JSON gain "this tree vs gen_durable@<rev>": medians, min–max spreads,
the ratio this tree / baseline and a verdict per figure — *within noise* when the
spreads overlap or the ratio is within ±5 %, else faster or slower.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import matrix  # noqa: E402
from common import DEFAULT_DSN, SCENARIOS, fresh_database, median, parse_result  # noqa: E402

PEERS: dict[str, list[str]] = {
    "pgqueuer": ["pgqueuer[asyncpg]==1.6.0", "psycopg[binary]>=3.2"],
    "procrastinate": ["procrastinate==3.10.0", "psycopg[binary]>=3.2"],
    "dbos": ["dbos==3.4.0", "psycopg[binary]>=3.2"],
}
# The scenarios each peer runs (DBOS has no batch enqueue for `enqueue`).
PEER_SCENARIOS: dict[str, tuple[str, ...]] = {
    "pgqueuer": ("chain", "jobs", "enqueue"),
    "procrastinate": ("chain", "jobs", "enqueue"),
    "dbos": ("chain", "jobs"),
}

# Workload sizes. "full" is the definition in docs/performance.md; "quick" keeps
# `make bench-quick` near two minutes with the peers; "tiny" only proves the script runs.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "chain": {"n": 2000},
        "jobs": {"n": 10_000, "single": 2000},
        "enqueue": {"n": 100_000},
        "signals": {"n": 2000},
        "keys": {"n": 2000},
        "timers": {"n": 10_000},
        "fanout": {"n": 200},
        "latency": {"n": 200, "spacing": 0.05},
        "memory": {"n": 100_000},
        "limits": {"n": 10_000},
    },
    "quick": {
        "chain": {"n": 500},
        "jobs": {"n": 2000, "single": 300},
        "enqueue": {"n": 20_000},
        "signals": {"n": 500},
        "keys": {"n": 500},
        "timers": {"n": 2000},
        "fanout": {"n": 50},
        "latency": {"n": 50, "spacing": 0.03},
        "memory": {"n": 100_000},
        "limits": {"n": 2000},
    },
    "tiny": {
        "chain": {"n": 50},
        "jobs": {"n": 200, "single": 50},
        "enqueue": {"n": 1000},
        "signals": {"n": 50},
        "keys": {"n": 50},
        "timers": {"n": 100},
        "fanout": {"n": 10},
        "latency": {"n": 10, "spacing": 0.02},
        "memory": {"n": 2000},
        "limits": {"n": 200},
    },
}
RUN_TIMEOUT = 900
BASELINE_PREFIX = "gen_durable@"
# Two medians closer than this are one result, whatever the spreads say.
NOISE = 0.05
# --gd-args: extra worker options for every gen_durable system (this tree and a
# baseline), e.g. "--prefetch 0", given after (so on top of) each setting's own.
GD_EXTRA: list[str] = []


# -- environments -------------------------------------------------------------------


def peer_python(peer: str, log: Any) -> str:
    """The peer's virtualenv python, created (or re-created) with the pinned versions."""
    venv = HERE / ".venvs" / peer
    python = venv / "bin" / "python"
    stamp = venv / ".bench-spec"
    spec = " ".join(PEERS[peer])
    if python.exists() and stamp.exists() and stamp.read_text() == spec:
        return str(python)
    log(f"creating {venv} ({spec})")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    done = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *PEERS[peer],
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"installing {spec} failed:\n{done.stdout}\n{done.stderr}")
    stamp.write_text(spec)
    return str(python)


def peer_version(python: str, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


# -- running ------------------------------------------------------------------------


def is_gen_durable(system: str) -> bool:
    """This tree's gen_durable or a baseline revision's (``gen_durable@<rev>``)."""
    return system == "gen_durable" or system.startswith(BASELINE_PREFIX)


def command_for(
    system: str,
    scenario: str,
    dsn: str,
    size: dict[str, Any],
    python: str,
    loop: str,
    bench: Path = HERE,
    setting: str = "best",
) -> list[str]:
    """The command of one run; ``loop`` is gen_durable's event loop (``--loop``);
    ``bench`` is the ``bench/`` directory whose worker runs (a baseline's own);
    ``setting`` one of ``matrix.SETTINGS``."""
    if is_gen_durable(system):
        cmd = [python, str(bench / "gd_worker.py"), scenario, "--dsn", dsn, "--loop", loop]
        cmd += matrix.setting_args(setting, gen_durable=True) + GD_EXTRA
    else:
        cmd = [python, str(bench / "peers" / f"{system}_bench.py"), scenario, "--dsn", dsn]
        cmd += matrix.setting_args(setting, gen_durable=False)
    for key, value in size.items():
        if is_gen_durable(system) or key == "n":
            cmd += [f"--{key}", str(value)]
    return cmd


class Plan:
    """The runs of one invocation, in their interleaved order: per scenario, per
    setting (``matrix.settings_for``), every system that runs the scenario."""

    def __init__(
        self,
        size_name: str,
        scenarios: list[str],
        chosen: list[str],
        peers: list[str],
        baseline: str | None,
        loop: str,
    ) -> None:
        self.size_name, self.scenarios, self.chosen = size_name, scenarios, chosen
        self.peers, self.baseline, self.loop = peers, baseline, loop
        # (scenario, setting) pairs the baseline's worker refuses: skipped for it.
        self.refused: set[tuple[str, str]] = set()

    def groups(self) -> Iterator[tuple[str, str]]:
        for scenario in self.scenarios:
            for setting in matrix.settings_for(scenario, self.chosen):
                yield scenario, setting

    def runs(self) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        """(scenario, setting, system, size) of every run of one round."""
        for scenario, setting in self.groups():
            systems = ["gen_durable"]
            if self.baseline and (scenario, setting) not in self.refused:
                systems.append(self.baseline)
            systems += [p for p in self.peers if scenario in PEER_SCENARIOS[p]]
            base = SIZES[self.size_name][scenario]
            for system in systems:
                size = matrix.sized(self.size_name, scenario, setting, system, base)
                yield scenario, setting, system, size

    def baseline_lines(self) -> dict[tuple[str, str], list[list[str]]]:
        """Per group, the command line the baseline's worker will get (after the
        interpreter and the script), for ``probe_baseline``."""
        assert self.baseline is not None
        out = {}
        for scenario, setting in self.groups():
            size = SIZES[self.size_name][scenario]
            cmd = command_for(self.baseline, scenario, "DSN", size, "", self.loop, setting=setting)
            out[(scenario, setting)] = [cmd[2:]]
        return out


def run_one(
    system: str,
    scenario: str,
    dsn: str,
    size: dict[str, Any],
    python: str,
    loop: str,
    checkout: Path | None = None,
    setting: str = "best",
) -> dict[str, Any]:
    """One scenario run in its own process; ``checkout``: a baseline's, whose own
    worker and package run instead of this tree's."""
    bench = checkout / "bench" if checkout else HERE
    with fresh_database(dsn, f"{system[:8]}_{scenario}") as db:
        started = time.monotonic()
        done = subprocess.run(
            command_for(system, scenario, db, size, python, loop, bench, setting),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=baseline_env(checkout) if checkout else None,
        )
        wall = time.monotonic() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        raise RuntimeError(f"{system} {scenario} exited {done.returncode}: " + " | ".join(tail))
    result = parse_result(done.stdout)
    result["process_wall_s"] = round(wall, 2)
    settings = result.get("settings", {})
    if "package" in settings:
        settings["package"] = package_origin(settings["package"], checkout)
        # Checked on every run, not only by the probe: a run of the other package
        # would put this tree's figures in the baseline's column.
        if checkout and not settings["package"].startswith("baseline checkout:"):
            raise RuntimeError(f"{system} imported gen_durable from {settings['package']}")
    return result


def profile_chain(dsn: str, size: dict[str, Any], loop: str, top: int = 15) -> list[dict[str, Any]]:
    """One extra, untimed-for-the-table chain run under cProfile: the top functions."""
    import pstats
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, fresh_database(dsn, "gd_profile") as db:
        out = os.path.join(tmp, "chain.prof")
        cmd = [
            *command_for("gen_durable", "chain", db, size, sys.executable, loop),
            "--profile",
            out,
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=RUN_TIMEOUT)
        st = pstats.Stats(out)
    total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    picked: list[dict[str, Any]] = []
    for (path, line, name), (_cc, calls, tottime, cumtime, _callers) in rows[:top]:
        path = re.sub(r"^.*/(site-packages|src|lib/python3\.\d+)/", "", path)
        where = f"{path}:{line}({name})" if line else name
        picked.append(
            {
                "function": where,
                "calls": calls,
                "tottime_s": round(tottime, 4),
                "cumtime_s": round(cumtime, 4),
                "share": round(tottime / total, 4) if total else 0.0,
            }
        )
    return picked


# -- a baseline revision ----------------------------------------------------------------


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip() or 'failed'}")
    return done.stdout.strip()


def resolve_baseline(rev: str) -> tuple[str, str]:
    """The full and the short commit id of ``rev``, or a clear exit."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise SystemExit(f"--baseline {rev}: not a commit of this repository")
    full = found.stdout.strip()
    return full, git("rev-parse", "--short", full)


@contextmanager
def baseline_checkout(commit: str) -> Iterator[Path]:
    """``src/`` and ``bench/`` of ``commit`` in a temporary directory, removed on exit."""
    for needed in ("bench/gd_worker.py", "src/gen_durable/__init__.py"):
        there = subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}:{needed}"], capture_output=True
        )
        if there.returncode != 0:
            raise SystemExit(f"--baseline {commit[:12]}: the revision has no {needed}")

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    # A plain SIGTERM would skip the clean-up below (and the runs' DROP DATABASE).
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with tempfile.TemporaryDirectory(prefix="gd-baseline-") as tmp:
            archive = subprocess.Popen(
                ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src", "bench"],
                stdout=subprocess.PIPE,
            )
            assert archive.stdout is not None
            untar = subprocess.run(["tar", "-x", "-C", tmp], stdin=archive.stdout)
            archive.stdout.close()
            if archive.wait() != 0 or untar.returncode != 0:
                raise SystemExit(f"--baseline {commit[:12]}: git archive | tar -x failed")
            yield Path(tmp)
    finally:
        signal.signal(signal.SIGTERM, previous)


def baseline_env(checkout: Path) -> dict[str, str]:
    """The environment of a baseline process: its own package and bench modules first.

    ``PYTHONPATH`` entries come before site-packages, so they win over this tree's
    editable install (a ``.pth`` line pointing at this tree's ``src``)."""
    env = dict(os.environ)
    own = [str(checkout / "src"), str(checkout / "bench")]
    env["PYTHONPATH"] = os.pathsep.join(own + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def package_origin(path: str, checkout: Path | None) -> str:
    """Where an imported ``gen_durable`` lives, without the machine's paths."""
    file = Path(path).resolve()
    for label, base in (("baseline checkout", checkout), ("this tree", ROOT)):
        if base is not None and file.is_relative_to(base.resolve()):
            return f"{label}: {file.relative_to(base.resolve()).as_posix()}"
    return f"elsewhere: {file}"


# Run in the baseline's environment: the worker's own argument parser takes each
# command line this script will pass (and nothing runs: the first successful parse
# is kept, then stops the script), then says where its `gen_durable` came from.
PROBE = """
import argparse, json, os, runpy, sys
worker, lines = sys.argv[1], json.loads(sys.stdin.read())
sys.path[0] = os.path.dirname(worker)  # as when the worker runs as a script
parse, found = argparse.ArgumentParser.parse_args, []
class Parsed(Exception):
    pass
def capture(self, args=None, namespace=None):
    found.append(self)
    raise Parsed
argparse.ArgumentParser.parse_args = capture
sys.argv = [worker]
try:
    runpy.run_path(worker, run_name="__main__")
except Parsed:
    pass
argparse.ArgumentParser.parse_args = parse
if not found:
    sys.exit("its bench/gd_worker.py parsed no command line with argparse")
for line in lines:
    def refuse(message, line=line):
        sys.exit(f"its bench/gd_worker.py refuses `{' '.join(line)}`: {message}")
    found[0].error = refuse
    found[0].parse_args(line)
import gen_durable
print("BENCH_RESULT " + json.dumps({"package": gen_durable.__file__}))
"""


def check_baseline(checkout: Path, commands: list[list[str]]) -> str:
    """Fail clearly unless the baseline's worker takes ``commands`` (argv after the
    script) and imports the checkout's package; returns where that package is."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(checkout / "bench" / "gd_worker.py")],
        input=json.dumps(commands),
        capture_output=True,
        text=True,
        timeout=120,
        env=baseline_env(checkout),
    )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit {done.returncode}"
        raise SystemExit(
            f"--baseline: the revision cannot run under this bench/run.py: {reason} "
            "(run that revision's own bench/run.py instead)"
        )
    origin = package_origin(parse_result(done.stdout)["package"], checkout)
    if not origin.startswith("baseline checkout:"):
        raise SystemExit(f"--baseline: the baseline imports gen_durable from {origin}")
    return origin


def probe_baseline(
    checkout: Path, plan: dict[tuple[str, str], list[list[str]]]
) -> tuple[str, dict[tuple[str, str], str]]:
    """``check_baseline`` per (scenario, setting) of ``plan``: where the baseline's
    package is, and the groups its worker refuses, each with the reason (an older
    worker lacks newer scenarios and options: those runs are skipped for it, said so
    in the report). A failure that is not a refusal, or refusing everything, stops."""
    every = [line for lines in plan.values() for line in lines]
    try:
        return check_baseline(checkout, every), {}
    except SystemExit as exc:
        if "refuses `" not in str(exc):
            raise
    package, skipped = "", {}
    for group, lines in plan.items():
        try:
            package = check_baseline(checkout, lines)
        except SystemExit as exc:
            if "refuses `" not in str(exc):
                raise
            skipped[group] = str(exc).split(": ", 2)[-1].split(" (run that")[0]
    if not package:
        raise SystemExit(
            f"--baseline: its worker refuses every run: {next(iter(skipped.values()))}"
        )
    return package, skipped


# Per scenario, the figures compared with a baseline; the first is its headline.
# Rates (``*_per_s``) are better higher, every other figure (costs, latencies) lower.
COMPARED: dict[str, list[str]] = {
    "chain": [
        "steps_per_s",
        "instances_per_s",
        "worker_cpu_ms_per_step",
        "pg_cpu_ms_per_step",
        "commits_per_step",
        "statements_per_step",
    ],
    "enqueue": ["rows_per_s", "worker_cpu_ms_per_row", "pg_cpu_ms_per_row"],
    "jobs": [
        "jobs_per_s",
        "insert_all_one_call_rows_per_s",
        "insert_all_batched_rows_per_s",
        "insert_single_rows_per_s",
        "worker_cpu_ms_per_job",
        "pg_cpu_ms_per_job",
        "commits_per_job",
    ],
    "signals": ["wakeups_per_s_from_first_signal", "p50_ms", "p99_ms", "worker_cpu_ms_per_wakeup"],
    "timers": ["wakeups_per_s_after_deadline", "p50_late_ms", "p99_late_ms"],
    "fanout": ["children_per_s", "worker_cpu_ms_per_step"],
    "latency": ["p50_ms", "p99_ms"],
    "memory": ["jobs_per_s", "peak_rss_mb"],
    "limits": [
        "k1_100_keys_jobs_per_s",
        "k1_hot_key_jobs_per_s",
        "k8_hot_key_jobs_per_s",
        "rate_observed_per_s",
    ],
}


def judged(key: str) -> tuple[str, tuple[str, str]]:
    """Which way ``key`` is better, and the words for a real difference (better, worse)."""
    better = "higher" if key.endswith("_per_s") else "lower"
    if key.startswith(("commits_", "statements_")):
        return better, ("fewer", "more")
    if key.endswith("rss_mb"):
        return better, ("smaller", "larger")
    return better, ("faster", "slower")


def verdict(
    ours: tuple[float, float, float],
    theirs: tuple[float, float, float],
    better: str,
    words: tuple[str, str],
) -> tuple[float | None, str]:
    """The ratio of the medians (this tree / baseline) and what it means."""
    (mid, low, high), (b_mid, b_low, b_high) = ours, theirs
    r = mid / b_mid if b_mid else None
    if (low <= b_high and b_low <= high) or (r is not None and abs(r - 1) <= NOISE):
        return r, "within noise"
    if r is None:  # a zero baseline median, and spreads apart: this tree's is above it
        return None, words[1] if better == "lower" else words[0]
    return r, words[0] if (r > 1) == (better == "higher") else words[1]


def compare_baseline(
    results: dict[str, dict[str, list[dict[str, Any]]]], system: str
) -> dict[str, list[dict[str, Any]]]:
    """Per scenario both ran: each compared figure of this tree and of the baseline."""
    out: dict[str, list[dict[str, Any]]] = {}
    for scenario, figures in COMPARED.items():
        ours = results.get("gen_durable", {}).get(scenario, [])
        theirs = results.get(system, {}).get(scenario, [])
        rows = []
        for key in figures:
            a, b = stats(ours, key), stats(theirs, key)
            if a is None or b is None:
                continue
            better, words = judged(key)
            r, said = verdict(a, b, better, words)
            rows.append(
                {
                    "figure": key,
                    "better": better,
                    "current": {"median": a[0], "min": a[1], "max": a[2], "runs": len(ours)},
                    "baseline": {"median": b[0], "min": b[1], "max": b[2], "runs": len(theirs)},
                    "ratio": round(r, 4) if r is not None else None,
                    "verdict": said,
                }
            )
        if rows:
            out[scenario] = rows
    return out


# -- the machine ------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info(dsn: str) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    mem_kb = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    settings = (
        "synchronous_commit",
        "fsync",
        "shared_buffers",
        "max_connections",
        "wal_level",
        "full_page_writes",
        "commit_delay",
        "max_wal_size",
        "work_mem",
        "shared_preload_libraries",
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT version()").fetchone()
        version = row[0] if row else "?"
        pg = {name: (conn.execute(f"SHOW {name}").fetchone() or ("?",))[0] for name in settings}
    packages = {}
    for name in ("gen_durable", "psycopg", "psycopg-pool", "pydantic"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "?"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if commit and dirty:
        commit += ", with uncommitted changes in src/"
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgres": version,
        "postgres_settings": pg,
        "packages": packages,
        "commit": commit or "?",
        "loadavg_start": _read("/proc/loadavg").split()[:3],
    }


# -- the report -------------------------------------------------------------------------


def stats(runs: list[dict[str, Any]], key: str) -> tuple[float, float, float] | None:
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    if not values:
        return None
    return median(values), min(values), max(values)


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(runs: list[dict[str, Any]], key: str) -> str:
    s = stats(runs, key)
    if s is None:
        return "—"
    mid, low, high = s
    if len(runs) == 1:
        return fmt(mid)
    return f"{fmt(mid)} ({fmt(low)}–{fmt(high)})"


def ratio(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str) -> str:
    a, b = stats(ours, key), stats(theirs, key)
    if a is None or b is None or b[0] == 0:
        return "—"
    r = a[0] / b[0]
    return f"{r:,.0f}×" if r >= 10 else f"{r:.2g}×"


SIDE_ROWS = [
    ("chain", "steps_per_s", "steps/s", "higher"),
    ("chain", "instances_per_s", "instances/s", "higher"),
    ("chain", "worker_cpu_ms_per_step", "worker CPU ms / step", "lower"),
    ("chain", "pg_cpu_ms_per_step", "PostgreSQL CPU ms / step", "lower"),
    ("chain", "commits_per_step", "commits / step", "lower"),
    ("jobs", "jobs_per_s", "jobs/s drained", "higher"),
    ("jobs", "enqueue_rows_per_s", "enqueue rows/s (batch API)", "higher"),
    ("jobs", "worker_cpu_ms_per_job", "worker CPU ms / job", "lower"),
    ("jobs", "pg_cpu_ms_per_job", "PostgreSQL CPU ms / job", "lower"),
    ("jobs", "commits_per_job", "commits / job", "lower"),
]

GD_ROWS = [
    ("chain", "steps_per_s", "steps/s"),
    ("chain", "instances_per_s", "instances/s"),
    ("jobs", "jobs_per_s", "jobs/s drained"),
    ("jobs", "insert_all_one_call_rows_per_s", "`insert_all`, one call: rows/s"),
    ("jobs", "insert_all_batched_rows_per_s", "`insert_all`, batches of 1,000: rows/s"),
    ("jobs", "insert_single_rows_per_s", "`insert`, one at a time: rows/s"),
    ("enqueue", "rows_per_s", "`insert_all`, one call of `n` rows: rows/s"),
    ("signals", "wakeups_per_s_from_first_signal", "wake-ups/s (first signal → last wake)"),
    ("signals", "sender_signals_per_s", "signals/s sent (second process)"),
    ("signals", "p50_ms", "`signal` returned → woken step started, p50 ms"),
    ("signals", "p99_ms", "`signal` returned → woken step started, p99 ms"),
    ("keys", "by_id_p50_ms", "`signal(id)` round trip, p50 ms"),
    ("keys", "by_key_p50_ms", "`signal(key)` round trip, p50 ms"),
    ("keys", "by_key_p99_ms", "`signal(key)` round trip, p99 ms"),
    ("keys", "key_over_id_p50", "`signal(key)` / `signal(id)`, p50"),
    ("timers", "wakeups_per_s_after_deadline", "wake-ups/s (shared deadline → last wake)"),
    ("timers", "p50_late_ms", "deadline → woken step started, p50 ms"),
    ("timers", "p99_late_ms", "deadline → woken step started, p99 ms"),
    ("fanout", "children_per_s", "children/s (with the join)"),
    ("fanout", "steps_per_s", "steps/s (parents' 2 steps + children)"),
    ("latency", "p50_ms", "`insert` returned → first step started, p50 ms"),
    ("latency", "p99_ms", "`insert` returned → first step started, p99 ms"),
    ("memory", "jobs_per_s", "jobs/s drained (all `n` queued first)"),
    ("memory", "peak_rss_mb", "engine process peak RSS, MiB"),
    ("limits", "k1_100_keys_jobs_per_s", "jobs/s, `partition_key` over 100 keys (K = 1)"),
    ("limits", "k1_hot_key_jobs_per_s", "jobs/s, one hot key (K = 1)"),
    ("limits", "k8_hot_key_jobs_per_s", "jobs/s, one hot key with `partition_limit=8`"),
    ("limits", "rate_observed_per_s", "jobs/s through a 5,000/s rate limit (observed)"),
    ("limits", "rate_error_pct", "observed rate vs the limit, %"),
]

LABELS: dict[tuple[str, str], str] = {
    **{(scenario, key): label for scenario, key, label, _ in SIDE_ROWS},
    **{(scenario, key): label for scenario, key, label in GD_ROWS},
    ("chain", "statements_per_step"): "statements / step (engine)",
    ("signals", "worker_cpu_ms_per_wakeup"): "worker CPU ms / wake-up",
    ("fanout", "worker_cpu_ms_per_step"): "worker CPU ms / step",
    ("memory", "jobs_per_s"): "jobs/s drained (all `n` queued first)",
    ("enqueue", "worker_cpu_ms_per_row"): "worker CPU ms / row",
    ("enqueue", "pg_cpu_ms_per_row"): "PostgreSQL CPU ms / row",
}

COST_UNIT = {
    "chain": "step",
    "jobs": "job",
    "enqueue": "row",
    "signals": "wakeup",
    "keys": "signal",
    "timers": "wakeup",
    "fanout": "step",
    "latency": "probe",
    "memory": "job",
    "limits": "job",
}


def spread(figure: dict[str, Any]) -> str:
    if figure["runs"] == 1:
        return fmt(figure["median"])
    return f"{fmt(figure['median'])} ({fmt(figure['min'])}–{fmt(figure['max'])})"


def render_baseline(report: dict[str, Any], w: Any) -> None:
    """The "this tree vs baseline" section: a table and a verdict line per scenario."""
    base = report["baseline"]
    name, here = base["system"], f"this tree ({report['machine']['commit']})"
    w(f"## This tree vs {name}")
    w("")
    w(
        f"`--baseline {base['rev']}`: commit {base['commit'][:12]}, its own "
        f"`bench/gd_worker.py` and `gen_durable` (imported from the checkout's "
        f"`{base['package'].split(': ', 1)[-1]}`), run as one more system in the same "
        "interleaved runs, on the same server, sizes and event loop. Ratio = this tree / "
        f"baseline, of the medians. A figure is *within noise* when the min–max spreads "
        f"overlap or the ratio is within ±{NOISE:.0%}"
        + (
            "; with one run per scenario there is no spread, only that ratio."
            if report["runs"] == 1
            else "."
        )
    )
    w("")
    if base.get("settings_differ"):
        w(f"The baseline's `Engine(...)` settings differ from this tree's: `{base['settings']}`.")
        w("")
    # The best settings first (as the side-by-side table), then each other setting.
    compared = [(scenario, rows) for scenario, rows in base["comparison"].items()]
    for setting, comparison in (base.get("comparison_at") or {}).items():
        compared += [(f"{scenario} at {setting}", rows) for scenario, rows in comparison.items()]
    if not compared:
        w("No scenario has figures from both (see the failed runs).")
        w("")
        return
    for scenario, rows in compared:
        scenario_name = scenario.split(" at ")[0]
        head = rows[0]
        label = LABELS.get((scenario_name, head["figure"]), head["figure"])
        r = f", {head['ratio']:.2f}×" if head["ratio"] is not None else ""
        if head["verdict"] == "within noise":
            w(f"- **{scenario}**: within noise of {name} ({label}{r}).")
        else:
            w(f"- **{scenario}**: this tree is **{head['verdict']}** than {name} ({label}{r}).")
    w("")
    w(f"| scenario | figure | {here} | {name} | this tree / baseline | verdict |")
    w("|---|---|---|---|---|---|")
    for scenario, rows in compared:
        for row in rows:
            label = LABELS.get((scenario.split(" at ")[0], row["figure"]), row["figure"])
            r = f"{row['ratio']:.2f}×" if row["ratio"] is not None else "—"
            w(
                f"| {scenario} | {label} ({row['better']} is better) | {spread(row['current'])} "
                f"| {spread(row['baseline'])} | {r} | {row['verdict']} |"
            )
    w("")


def render_howto(w: Any) -> None:
    """How to run each part of this report (the top of the generated page)."""
    w("## Running it")
    w("")
    w("- Everything, full sizes, 3 runs, peers included: `make bench` (about half an hour).")
    w(
        "- A short check of the whole report: `make bench-quick` (reduced sizes, 1 run), or "
        "`python bench/run.py --quick --size tiny --peers none` (seconds)."
    )
    w(
        "- The settings matrix (defaults, equal concurrency 10/32/500, best) and the cost "
        "per step and per job: `python bench/run.py --scenarios chain,jobs` — "
        "`--settings defaults,c10,c32,c500,best` picks the rows (all by default; every "
        "other scenario runs at `best` only)."
    )
    w(
        "- The enqueue comparison (one batch call of 100,000 rows): "
        "`python bench/run.py --scenarios enqueue`."
    )
    w(
        "- One system or scenario: `--peers none` or `--peers pgqueuer`, `--scenarios "
        "latency`; extra gen_durable worker options on top of every setting: "
        '`--gd-args "--prefetch 0"`.'
    )
    w(
        "- Against an earlier revision: `--baseline REV` (see *How it is measured*); a "
        "revision whose worker lacks a scenario or an option skips those runs and says so."
    )
    w("")


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    res: dict[str, dict[str, list[dict[str, Any]]]] = report["results"]
    gd = res.get("gen_durable", {})
    ran = [res, *report.get("matrix", {}).values()]
    peers = [p for p in PEERS if any(p in table for table in ran)]
    base = (report.get("baseline") or {}).get("system")
    systems = ["gen_durable", *([base] if base else []), *peers]
    quick = report["mode"] != "full"
    out: list[str] = []
    w = out.append
    w("# Performance")
    w("")
    w("<!-- Generated by bench/run.py: edit the script, not this file. -->")
    w("")
    w(
        f"Measured {report['finished']} with `{report['command']}` "
        f"(mode **{report['mode']}**, {report['runs']} run(s) per scenario"
        + (", reduced sizes — a quick run, not the full benchmark" if quick else "")
        + "). Re-run with `make bench` (full) or `make bench-quick`; this file is "
        "regenerated from scratch each time."
    )
    w("")
    w(
        "Figures are the median of the runs, with the lowest and highest in parentheses "
        "when there was more than one run. Ratios compare medians of the same invocation, "
        "on the same server, in interleaved runs."
    )
    w("")
    render_howto(w)
    if report.get("baseline"):
        render_baseline(report, w)
    if peers and any(res.get(p) for p in peers):
        w("## Side by side, each at its best settings")
        w("")
        header = "| scenario | figure | gen_durable | " + " | ".join(peers)
        header += " | " + " | ".join(f"gen_durable / {p}" for p in peers) + " |"
        w(header)
        w("|" + "---|" * (2 + 1 + 2 * len(peers)))
        for scenario, key, label, better in SIDE_ROWS:
            ours = gd.get(scenario, [])
            if not ours and not any(res.get(p, {}).get(scenario) for p in peers):
                continue
            theirs = [res.get(p, {}).get(scenario, []) for p in peers]
            cells = [cell(ours, key)] + [cell(t, key) for t in theirs]
            ratios = [ratio(ours, t, key) for t in theirs]
            w(f"| {scenario} | {label} ({better} is better) | " + " | ".join(cells + ratios) + " |")
        w("")
        w(
            "`enqueue rows/s (batch API)`: gen_durable `insert_all` of the whole workload in "
            "one call; PgQueuer `enqueue` with lists; Procrastinate `batch_defer_async`; "
            "DBOS has no batch call, so `DBOSClient.enqueue` once per workflow from 8 threads."
        )
        w("")
    matrix.render_matrix(report, systems, peers, w)
    matrix.render_costs(report, systems, w)
    matrix.render_enqueue(report, systems, w)
    if gd:
        w("## gen_durable scenarios")
        w("")
        w("| scenario | figure | value |")
        w("|---|---|---|")
        for scenario, key, label in GD_ROWS:
            runs = gd.get(scenario, [])
            if runs and stats(runs, key) is not None:
                w(f"| {scenario} | {label} | {cell(runs, key)} |")
        w("")
        w("### What each unit of work costs")
        w("")
        w(
            "| scenario | unit | engine CPU ms | PostgreSQL CPU ms | statements (engine) "
            "| commits (PostgreSQL) |"
        )
        w("|---|---|---|---|---|---|")
        for scenario in SCENARIOS:
            runs = gd.get(scenario, [])
            if not runs:
                continue
            unit = COST_UNIT[scenario]
            w(
                f"| {scenario} | {unit} | {cell(runs, f'worker_cpu_ms_per_{unit}')} | "
                f"{cell(runs, f'pg_cpu_ms_per_{unit}')} | {cell(runs, 'statements_per_step')} | "
                f"{cell(runs, f'commits_per_{unit}')} |"
            )
        w("")
    if report.get("profile"):
        w("## Where gen_durable's time goes (chain, cProfile)")
        w("")
        w(
            "One more `chain` run of the same size with cProfile on the engine's event loop "
            "over the timed window (profiling slows it down; it is not in the tables above). "
            "Functions by own time; `select.epoll.poll` is the loop waiting for the database."
        )
        w("")
        w("| function | calls | own s | share of own time | cumulative s |")
        w("|---|---|---|---|---|")
        for r in report["profile"]:
            w(
                f"| `{r['function']}` | {r['calls']:,} | {r['tottime_s']:.3f} | "
                f"{100 * r['share']:.1f}% | {r['cumtime_s']:.3f} |"
            )
        w("")
    if report["failures"]:
        w("## Runs that failed")
        w("")
        for line in report["failures"]:
            w(f"- {line}")
        w("")
    w("## Workloads")
    w("")
    sizes = report["sizes"]
    w(
        f"Sizes in this run ({report['mode']}): "
        + "; ".join(
            f"`{s}` "
            + ", ".join(
                f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in sizes[s].items()
            )
            for s in report["scenarios"]
        )
        + "."
    )
    w("")
    w(
        "- **chain** — `n` instances, each three trivial `Next` steps then `Done`. A *step* is "
        "one step execution, the final `Done` included: 4 steps per gen_durable instance. "
        "The job queues run each instance as 3 chained jobs (job k enqueues job k+1 before "
        "it returns), DBOS as one workflow of 3 `@DBOS.step` calls: 3 steps per instance "
        "for the peers. `instances/s` is the like-for-like figure (gen_durable does one "
        "more step per instance than the peers)."
    )
    w(
        "- **jobs** — `n` no-op jobs enqueued in one batch call, then drained. Afterwards, "
        "on the same database, `insert_all` in batches of 1,000 (`n` rows) and `single` "
        "sequential `insert` calls, into a queue nobody serves."
    )
    w(
        "- **enqueue** — one batch call of `n` no-op jobs without unique keys into a queue "
        "nobody serves, the client's connection opened before the timed call: gen_durable "
        "`insert_all`, PgQueuer `Queries.enqueue` with lists, Procrastinate "
        "`batch_defer_async` (DBOS has none). The rows are counted in SQL afterwards."
    )
    w(
        '- **signals** — `n` instances park on `Await("go")`; once all are parked, a second '
        "process sends one signal to each (8 concurrent senders). The woken step records "
        "`time.time()` in its result; the sender records when each `signal` call returned. "
        "Both processes run on this machine, so their clocks agree."
    )
    w(
        "- **keys** — `n` instances holding a unique key each, nobody serving their queue; "
        "one client calls `signal` `2n` times, one at a time, alternating by id and by key "
        "(SPEC §20) over the instances in a shuffled order, and times each call's round trip."
    )
    w(
        "- **fanout** — `n` parents; each schedules 10 no-op children with `ScheduleChilds` "
        "and, once they are all terminal, finishes. Steps = 2 per parent + 1 per child."
    )
    w(
        "- **latency** — an idle engine; `n` sequential `insert` calls `spacing` seconds "
        "apart, each waiting for its step to start before the next."
    )
    w(
        "- **memory** — `n` no-op jobs enqueued by a separate process, then drained; the "
        "engine process's RSS is sampled every 50 ms."
    )
    w(
        "- **limits** — flow control (SPEC §23), four parts drained one after another, each "
        "by a fresh engine: `n` no-op jobs over 100 partition keys (K = 1, the headline); "
        "`n`/10 on one hot key (K = 1); `n`/10 on one key with `partition_limit=8`; `n` "
        "jobs through a rate limit of 5,000/s with burst 100, whose observed rate is the "
        "step starts after the burst over the time they took (it should be within 5% of "
        "the limit)."
    )
    w("")
    w("## How it is measured")
    w("")
    w(
        "- Each scenario run: a fresh database, a fresh process. The timed window opens when "
        "the workers start on a fully enqueued workload and closes when the last outcome is "
        "committed (gen_durable counts a step after its outcome's commit returned; PgQueuer's "
        "drain-mode consumers have returned; Procrastinate's worker has stopped after the "
        "last job; every DBOS workflow is recorded `SUCCESS`). Process start-up, imports, "
        "schema installation and enqueueing are outside it. Starting the workers (opening "
        "their connections; for DBOS, `launch`) is inside it: there is no separate warm-up, "
        "so small runs understate everyone's steady-state rate."
    )
    w(
        "- After the window, the work is checked in SQL (e.g. every chain instance `done`); "
        "a run that did not do the work fails instead of reporting a figure."
    )
    w("- **Worker/engine CPU**: `time.process_time()` of the worker process over the window.")
    w(
        "- **PostgreSQL CPU**: `utime + stime` from `/proc/<pid>/stat` of the server backends "
        "connected to the scenario's database, at the start and end of the window "
        "(`pg_stat_statements` is not loaded on this server). Server-wide processes (WAL "
        "writer, checkpointer) and backends that disconnected inside the window are not "
        "counted; in `signals` the sender's sessions may have gone before the window closed."
    )
    w(
        "- **Commits**: the `xact_commit` delta of the scenario's database in "
        "`pg_stat_database`, read after the worker's sessions closed. It includes every "
        "transaction the system ran (polls, heartbeats, listeners), not only its writes."
    )
    w(
        "- **Statements (engine)**: gen_durable's own counters (`engine.stats`: statements "
        "the engine sent per step)."
    )
    w("")
    w(
        "- **Profiling**: `python bench/gd_worker.py chain --dsn <an empty database> --n 2000 "
        "--profile chain.prof` writes a cProfile of the event loop over the timed window "
        "(read it with `python -m pstats chain.prof`)."
    )
    w(
        "- **Against an earlier revision**: `python bench/run.py --baseline REV` (e.g. "
        '`make bench BENCH_ARGS="--baseline main --scenarios chain,jobs --peers none"`) '
        "unpacks REV's `src/` and `bench/` (`git archive`) into a temporary directory, "
        "removed afterwards, and runs that revision's own `bench/gd_worker.py` with "
        "`PYTHONPATH=<checkout>/src:<checkout>/bench` as the system `gen_durable@<rev>`, "
        "interleaved with this tree run by run. Before the first run its worker must "
        "accept every command line this script passes, and must import the checkout's "
        "`gen_durable`; otherwise the run stops and says why. The section *This tree vs* "
        "then compares the two."
    )
    w("")
    w("## Settings")
    w("")
    settings = report["settings"]
    if "gen_durable" in settings:
        gd_settings = dict(settings["gen_durable"])
        loop = gd_settings.pop("loop", "asyncio")
        gd_settings.pop("package", None)
        w(
            f"- **gen_durable** `Engine(...)`: `{gd_settings}`; steps are `async def`; the "
            f"worker process runs on {loop} (`gen-durable worker --loop {loop}`; "
            "`bench/run.py --loop asyncio` measures the standard loop)."
        )
    for peer in peers:
        w(f"- **{peer} {report['versions'].get(peer, '?')}**: `{settings.get(peer, {})}`.")
    w(
        "- PgQueuer: the shape of its own drain benchmark (several consumers, one asyncpg "
        "connection each, `batch_size=10`, uvloop). Procrastinate: async tasks on one worker "
        "with `concurrency` async sub-workers (its concurrency how-to; 10 measured faster "
        "than 30 for no-op jobs on 2 cores) and LISTEN/NOTIFY. DBOS: a queue with "
        "`polling_interval_sec=0.01` (default 1 s)."
    )
    w("")
    w("## Machine")
    w("")
    w(f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']} GiB; {m['os']}")
    w(
        f"- Load average at start: {' '.join(m['loadavg_start'])}; at end: "
        f"{' '.join(report['loadavg_end'])} (other work on the machine shows up here)"
    )
    w(f"- {m['postgres']}")
    w(
        "- PostgreSQL settings: "
        + ", ".join(f"`{k}={v}`" for k, v in m["postgres_settings"].items())
    )
    w(
        f"- Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f" (commit {m['commit']})"
    )
    w(
        "- Peers, each in its own virtualenv: "
        + ", ".join(f"{p} {report['versions'].get(p, '?')}" for p in peers)
        if peers
        else "- Peers: not run"
    )
    w("")
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------


def redact(dsn: str) -> str:
    """The DSN without its password, for the report."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<dsn>"
    if "password" not in params:
        return dsn
    params.pop("password")
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def parse_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gen_durable side-by-side benchmark")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("GEN_DURABLE_DSN") or DEFAULT_DSN,
        help="a server where this role may CREATE DATABASE",
    )
    parser.add_argument("--quick", action="store_true", help="reduced sizes, one run")
    parser.add_argument(
        "--gd-args",
        default="",
        help='extra bench/gd_worker.py options for gen_durable runs, e.g. "--defaults"',
    )
    parser.add_argument("--size", choices=list(SIZES), help="override the workload sizes")
    parser.add_argument("--runs", type=int, help="runs per scenario (default 3; 1 with --quick)")
    parser.add_argument("--scenarios", help=f"comma list of {', '.join(SCENARIOS)}")
    parser.add_argument(
        "--settings",
        default=",".join(matrix.SETTINGS),
        help=f"comma list of {', '.join(matrix.SETTINGS)}: the settings chain and jobs run "
        "at (every other scenario runs at best only)",
    )
    parser.add_argument("--peers", default=",".join(PEERS), help="comma list, or 'none'")
    parser.add_argument("--memory", action="store_true", help="add the memory scenario")
    parser.add_argument("--output", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument("--json", help="raw results file (default bench/results/<time>.json)")
    parser.add_argument(
        "--profile", action="store_true", help="add a cProfile of the chain scenario's engine"
    )
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="gen_durable's event loop (default uvloop, as PgQueuer's settings use)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run git revision REV's gen_durable (its own bench/gd_worker.py) and "
        "compare this tree with it",
    )
    args = parser.parse_args(argv)
    GD_EXTRA[:] = shlex.split(args.gd_args)

    size_name = args.size or ("quick" if args.quick else "full")
    runs = args.runs or (1 if args.quick else 3)
    if args.scenarios:
        scenarios = parse_list(args.scenarios, SCENARIOS, "scenario")
    else:
        scenarios = [s for s in SCENARIOS if s != "memory" or not args.quick]
    if args.memory and "memory" not in scenarios:
        scenarios.append("memory")
    peers = [] if args.peers == "none" else parse_list(args.peers, PEERS, "peer")
    chosen = parse_list(args.settings, matrix.SETTINGS, "setting")
    if not chosen:
        raise SystemExit("--settings: name at least one setting")
    baseline: dict[str, Any] = {}
    if args.baseline:
        commit, short = resolve_baseline(args.baseline)
        baseline = {"rev": args.baseline, "commit": commit, "system": BASELINE_PREFIX + short}

    def log(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    machine = machine_info(args.dsn)
    pythons = {"gen_durable": sys.executable}
    versions: dict[str, str] = {}
    failures: list[str] = []
    for peer in list(peers):
        try:
            pythons[peer] = peer_python(peer, log)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            failures.append(f"{peer}: no virtualenv ({exc})")
            log(f"FAILED: {peer}: {exc}")
            peers.remove(peer)
            continue
        versions[peer] = peer_version(pythons[peer], peer)

    plan = Plan(size_name, scenarios, chosen, peers, baseline.get("system"), args.loop)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    table: dict[str, Any] = {"results": results, "matrix": {}, "matrix_settings": {}}
    settings: dict[str, Any] = {}
    gd_failed = False
    if baseline:
        pythons[baseline["system"]] = sys.executable
    with baseline_checkout(baseline["commit"]) if baseline else nullcontext() as checkout:
        if checkout is not None:
            log(f"baseline {baseline['system']}: checking its worker")
            baseline["package"], refused = probe_baseline(checkout, plan.baseline_lines())
            plan.refused = set(refused)
            baseline["skipped"] = [
                {"what": f"{scenario} at {setting}", "reason": reason}
                for (scenario, setting), reason in refused.items()
            ]
            for skip in baseline["skipped"]:
                log(f"baseline skips {skip['what']}: {skip['reason']}")
        for run in range(1, runs + 1):
            for scenario, setting, system, size in plan.runs():
                log(f"run {run}/{runs}: {system} {scenario} at {setting} {size}")
                try:
                    result = run_one(
                        system,
                        scenario,
                        args.dsn,
                        size,
                        pythons[system],
                        args.loop,
                        checkout if system.startswith(BASELINE_PREFIX) else None,
                        setting,
                    )
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    failures.append(f"run {run}, {system} {scenario} at {setting}: {exc}")
                    log(f"FAILED: {exc}")
                    gd_failed = gd_failed or is_gen_durable(system)
                    continue
                used = result.pop("settings", {})
                table["matrix_settings"].setdefault(setting, {})[system] = used
                if setting == "best":
                    settings[system] = used
                    where = results
                else:
                    where = table["matrix"].setdefault(setting, {})
                where.setdefault(system, {}).setdefault(scenario, []).append(result)
                brief = {k: v for k, v in result.items() if k.endswith(("_per_s", "_ms"))}
                log(f"  {brief}")

    profile: list[dict[str, Any]] = []
    if args.profile:
        log("profiling the chain scenario")
        try:
            profile = profile_chain(args.dsn, SIZES[size_name]["chain"], args.loop)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            failures.append(f"profile: {exc}")
    if baseline:
        system = baseline["system"]
        ours, theirs = settings.get("gen_durable", {}), settings.get(system, {})
        drop = ("package",)
        baseline["settings"] = {k: v for k, v in theirs.items() if k not in drop}
        baseline["settings_differ"] = bool(ours and theirs) and baseline["settings"] != {
            k: v for k, v in ours.items() if k not in drop
        }
        baseline["comparison"] = compare_baseline(results, system)
        baseline["comparison_at"] = {
            setting: compare_baseline(table["matrix"].get(setting, {}), system)
            for setting in chosen
            if setting != "best"
        }
    shown = list(argv if argv is not None else sys.argv[1:])
    for i, arg in enumerate(shown[:-1]):
        if arg == "--dsn":
            shown[i + 1] = redact(shown[i + 1])
    command = "python bench/run.py " + " ".join(shlex.quote(a) for a in shown)
    report = {
        "mode": size_name,
        "runs": runs,
        "command": command.strip(),
        "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scenarios": scenarios,
        "sizes": {s: SIZES[size_name][s] for s in scenarios},
        "machine": machine,
        "loadavg_end": _read("/proc/loadavg").split()[:3],
        "versions": versions,
        "settings": settings,
        "results": results,
        "settings_run": chosen,
        "matrix": table["matrix"],
        "matrix_settings": table["matrix_settings"],
        "failures": failures,
        "profile": profile,
        "baseline": baseline or None,
    }
    json_path = (
        Path(args.json)
        if args.json
        else (HERE / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-{size_name}.json")
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(render(report))
    log(f"wrote {args.output} and {json_path}")
    missing = not results.get("gen_durable") or (baseline and not results.get(baseline["system"]))
    return 1 if gd_failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
