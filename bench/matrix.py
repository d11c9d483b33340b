"""The settings matrix of ``bench/run.py``: every system at its defaults, at equal
concurrency and at its best settings, for the ``chain`` and ``jobs`` scenarios.

A *setting* is one name for every system, so a row of the report compares like with
like:

- ``defaults`` — each library as a new user gets it: gen_durable ``Engine(dsn)``
  (concurrency 10, its adaptive buffer), PgQueuer one consumer with ``run``'s defaults,
  Procrastinate ``concurrency=1`` with the connector's own pool, DBOS a queue with its
  1 s polling and no limit;
- ``c10``, ``c32``, ``c500`` — N steps or jobs in flight in one worker process: each
  library's defaults with only its concurrency changed, plus what that concurrency
  needs to be reached (PgQueuer's batch, Procrastinate's pool, DBOS's polling
  interval; each peer script says why). gen_durable runs ``--defaults --concurrency
  N``: its default ``prefetch``/``min_demand``, as a user who sets only the queue's
  concurrency gets them;
- ``best`` — the tuned settings each system's column had before (gen_durable
  ``concurrency=500, prefetch=500, min_demand=50``; PgQueuer 5 consumers × batch 10; …).
"""

from __future__ import annotations

from typing import Any

SETTINGS = ("defaults", "c10", "c32", "c500", "best")
MATRIX_SCENARIOS = ("chain", "jobs")
EQUAL = tuple(s for s in SETTINGS if s.startswith("c"))

# The slow peers drain a few hundred units a second at low concurrency; at the full
# sizes a run of theirs at a setting other than `best` does this many instances/jobs
# instead (the report states it), which keeps `make bench` near half an hour.
SLOW_PEERS = ("procrastinate", "dbos")
SLOW_SIZES: dict[str, dict[str, int]] = {
    "full": {"chain": 500, "jobs": 2000},
    "quick": {"chain": 200, "jobs": 500},
}


def concurrency(setting: str) -> int | None:
    """N of a ``cN`` setting; None for ``defaults`` and ``best``."""
    return int(setting[1:]) if setting in EQUAL else None


def setting_args(setting: str, gen_durable: bool) -> list[str]:
    """The worker options of ``setting``: gen_durable's ``bench/gd_worker.py`` or a
    peer script (both take ``--defaults`` and ``--concurrency``)."""
    n = concurrency(setting)
    if n is not None:
        return (["--defaults"] if gen_durable else []) + ["--concurrency", str(n)]
    return ["--defaults"] if setting == "defaults" else []


def sized(
    size_name: str, scenario: str, setting: str, system: str, size: dict[str, Any]
) -> dict[str, Any]:
    """The workload size of one run: ``size``, or a slow peer's smaller ``n``."""
    small = SLOW_SIZES.get(size_name, {}).get(scenario)
    if setting == "best" or system not in SLOW_PEERS or small is None:
        return size
    return {**size, "n": min(small, size["n"])}


def settings_for(scenario: str, chosen: list[str]) -> list[str]:
    """The settings a scenario runs at: the chosen ones for the matrix scenarios; every
    other scenario runs at ``best`` only (its tuned engine)."""
    return list(chosen) if scenario in MATRIX_SCENARIOS else ["best"]


def runs_at(
    report: dict[str, Any], setting: str, system: str, scenario: str
) -> list[dict[str, Any]]:
    """The runs of one system, scenario and setting (``best`` is ``results``)."""
    table = report["results"] if setting == "best" else report.get("matrix", {}).get(setting, {})
    runs: list[dict[str, Any]] = table.get(system, {}).get(scenario, [])
    return runs


def brief(settings: dict[str, Any]) -> str:
    """One system's settings at one setting, compact, for the report's table."""
    shown = {k: v for k, v in settings.items() if k not in ("package", "loop")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "library defaults"


HEADLINE = {"chain": ("steps_per_s", "steps/s"), "jobs": ("jobs_per_s", "jobs/s drained")}
UNIT = {"chain": "step", "jobs": "job"}


def render_matrix(report: dict[str, Any], systems: list[str], peers: list[str], w: Any) -> None:
    """Per matrix scenario: rows = settings, columns = systems, then gen_durable / peer."""
    from run import cell, ratio

    chosen = [s for s in report.get("settings_run", []) if s != "best" or report["results"]]
    if not chosen or not any(s in report["scenarios"] for s in MATRIX_SCENARIOS):
        return
    w("## At equal settings, at defaults, at best")
    w("")
    w(
        "Each system in one worker process with N steps (chain) or jobs in flight "
        "(`c10`, `c32`, `c500`), at its library defaults (`defaults`), and at the tuned "
        "settings of the side-by-side table (`best`). At `cN` every system runs its "
        "defaults with only the concurrency changed, plus what that concurrency needs to "
        "be reached: gen_durable `Engine(dsn, queues={'default': N})` (default `prefetch` "
        "and `min_demand`, as a user who sets only the concurrency gets them); PgQueuer one "
        "consumer with `max_concurrent_tasks=N` and `batch_size=N // 2` (the largest it "
        "accepts with that cap); Procrastinate `concurrency=N` with a pool of "
        "`min(N, 30) + 2` connections (the server's `max_connections` is shared); DBOS "
        "`worker_concurrency=N` on a queue polled every 0.01 s (at the default 1 s a "
        "queue of N slots starts at most N workflows a second). Ratios are gen_durable / "
        "peer, of the medians. gen_durable's default concurrency is 10, so its `defaults` "
        "and `c10` rows run the same engine: their difference is this run's noise."
    )
    w("")
    skipped = (report.get("baseline") or {}).get("skipped", [])
    for scenario in MATRIX_SCENARIOS:
        if scenario not in report["scenarios"]:
            continue
        key, label = HEADLINE[scenario]
        w(f"### {scenario}: {label} (higher is better)")
        w("")
        w(
            "| settings | "
            + " | ".join(systems)
            + "".join(f" | gen_durable / {p}" for p in peers)
            + " |"
        )
        w("|" + "---|" * (1 + len(systems) + len(peers)))
        for setting in chosen:
            ours = runs_at(report, setting, "gen_durable", scenario)
            cells = [cell(runs_at(report, setting, s, scenario), key) for s in systems]
            ratios = [ratio(ours, runs_at(report, setting, p, scenario), key) for p in peers]
            w(f"| {setting} | " + " | ".join(cells + ratios) + " |")
        w("")
    w("What each system ran at each setting (from the runs themselves):")
    w("")
    w("| settings | " + " | ".join(systems) + " |")
    w("|" + "---|" * (1 + len(systems)))
    used = report.get("matrix_settings", {})
    for setting in chosen:
        row = [
            f"`{brief(used[setting][s])}`" if s in used.get(setting, {}) else "—" for s in systems
        ]
        w(f"| {setting} | " + " | ".join(row) + " |")
    w("")
    smaller = SLOW_SIZES.get(report["mode"], {})
    slow = [p for p in peers if p in SLOW_PEERS]
    if smaller and slow and any(s != "best" for s in chosen):
        w(
            f"At every setting but `best`, {' and '.join(slow)} ran smaller workloads ("
            + ", ".join(f"`{s}` n={n:,}" for s, n in smaller.items())
            + ") to keep the benchmark's length in bounds: their rate at low concurrency "
            "is a few hundred units a second. A shorter run includes relatively more "
            "start-up, which understates a rate slightly."
        )
        w("")
    for skip in skipped:
        w(f"- {report['baseline']['system']} did not run {skip['what']}: {skip['reason']}.")
    if skipped:
        w("")


def render_costs(report: dict[str, Any], systems: list[str], w: Any) -> None:
    """Engine and PostgreSQL CPU per unit at equal concurrency, every system."""
    from run import cell

    rows = [s for s in report.get("settings_run", []) if s in EQUAL]
    scenarios = [s for s in MATRIX_SCENARIOS if s in report["scenarios"]]
    if not rows or not scenarios:
        return
    w("## What a step or a job costs, at equal concurrency")
    w("")
    w(
        "The figure to size a database with, whatever the settings: CPU milliseconds per "
        "unit of work, of the worker process (`time.process_time()`, every thread of it) "
        "and of the PostgreSQL backends serving it (`/proc/<pid>/stat`, see *How it is "
        "measured*), at each equal concurrency. Each cell is *worker / PostgreSQL*; lower "
        "is better. A chain step of gen_durable is one of 4 per instance, a peer's one of 3."
    )
    w("")
    for scenario in scenarios:
        unit = UNIT[scenario]
        w(f"### {scenario}: CPU ms per {unit} (worker / PostgreSQL)")
        w("")
        w("| settings | " + " | ".join(systems) + " |")
        w("|" + "---|" * (1 + len(systems)))
        for setting in rows:
            cells = []
            for system in systems:
                runs = runs_at(report, setting, system, scenario)
                worker = cell(runs, f"worker_cpu_ms_per_{unit}")
                pg = cell(runs, f"pg_cpu_ms_per_{unit}")
                cells.append("—" if worker == pg == "—" else f"{worker} / {pg}")
            w(f"| {setting} | " + " | ".join(cells) + " |")
        w("")


def render_enqueue(report: dict[str, Any], systems: list[str], w: Any) -> None:
    """One batch enqueue call per system: rows/s and its cost."""
    from run import cell, ratio, stats

    res = report["results"]
    there = [s for s in systems if res.get(s, {}).get("enqueue")]
    if not there:
        return
    n = report["sizes"]["enqueue"]["n"]
    w(f"## Enqueue: one batch call of {n:,} rows")
    w("")
    w(
        f"One call that enqueues {n:,} jobs without unique keys into a queue nobody serves, "
        "timed from the call to its return (the client's connection already open): "
        "gen_durable `Engine.insert_all`, PgQueuer `Queries.enqueue` with lists, "
        "Procrastinate `batch_defer_async`. DBOS has no batch enqueue (its one-call-per-"
        "workflow rate is the `enqueue rows/s` row of the side-by-side table)."
    )
    w("")
    w(
        "| system | rows/s (higher is better) | worker CPU ms / row | PostgreSQL CPU ms / row "
        "| commits | gen_durable / system |"
    )
    w("|---|---|---|---|---|---|")
    ours = res.get("gen_durable", {}).get("enqueue", [])
    for system in there:
        runs = res[system]["enqueue"]
        r = "—" if system == "gen_durable" else ratio(ours, runs, "rows_per_s")
        commits = stats(runs, "pg_commits")
        w(
            f"| {system} | {cell(runs, 'rows_per_s')} | {cell(runs, 'worker_cpu_ms_per_row')} "
            f"| {cell(runs, 'pg_cpu_ms_per_row')} | {f'{commits[0]:.0f}' if commits else '—'} "
            f"| {r} |"
        )
    w("")
