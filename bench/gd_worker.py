"""One gen_durable benchmark scenario in its own process (run by ``bench/run.py``).

``python bench/gd_worker.py SCENARIO --dsn DSN [--n N ...]`` installs the schema in the
(fresh) database, enqueues the workload, runs a real ``gd.Engine`` over it and prints
one ``BENCH_RESULT {json}`` line. The timed window opens when the engine starts on a
fully enqueued workload and closes when the engine has committed the last outcome
(``engine.stats.steps`` counts a step only after its outcome's commit returned); the
workload is then checked in SQL, outside the window, so a benchmark that "finished"
without doing the work fails instead of reporting a number.

Two helper commands run in their own processes too: ``send-signals`` (the second
process of the ``signals`` scenario) and ``seed`` (enqueues the ``memory`` workload,
so the engine process's RSS is not inflated by building 100,000 insert rows).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

import gen_durable as gd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    SCENARIOS,
    PgMeter,
    Window,
    emit,
    parse_result,
    peak_rss_mb,
    percentile,
    rates,
)

# The engine settings every scenario runs with (stated in docs/performance.md):
# 500 concurrent steps (the steps are no-op `async def`, so a slot costs only a
# coroutine: a high concurrency is what lets many outcomes share each commit), up to
# 500 more rows claimed ahead, a pick only when at least 50 slots are free, a 50 ms
# idle poll (LISTEN/NOTIFY nudges on top, the default).
ENGINE_SETTINGS: dict[str, Any] = {
    "queues": {"default": 500},
    "prefetch": 500,
    "min_demand": 50,
    "poll_interval": 0.05,
    "max_poll_interval": 0.5,
}
SIGNAL_SENDERS = 8
PROFILE_TO = ""  # --profile FILE: cProfile the event loop over the timed window
INSERT_BATCH = 1_000


# -- the workloads -----------------------------------------------------------------


class Chain(gd.FSM, name="bench.chain"):
    """Three trivial ``Next`` steps, then ``Done``: four step executions."""

    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        if step == "start":
            return gd.Next("b", ctx.state)
        if step == "b":
            return gd.Next("c", ctx.state)
        if step == "c":
            return gd.Next("d", ctx.state)
        return gd.Done()


class Noop(gd.Job, name="bench.noop"):
    async def perform(self, args: Any) -> None:
        return None


class Stamped(gd.Job, name="bench.stamped"):
    """Records when it started (the rate-limited part of ``limits``)."""

    async def perform(self, args: Any) -> float:
        return time.time()


class Parked(gd.FSM, name="bench.parked"):
    """Parks on ``go``; the woken step records when it started."""

    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        started = time.time()
        if not ctx.signals:
            return gd.Await("go", ctx.state)
        return gd.Done({"t": started})


class Timed(gd.FSM, name="bench.timed"):
    """Parks until the shared deadline in its state (no signal ever comes); the step
    the deadline wakes records when it started."""

    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        started = time.time()
        if not ctx.timed_out:
            at = dt.datetime.fromtimestamp(ctx.state["at"], dt.UTC)
            return gd.Await("never", ctx.state, deadline=at)
        return gd.Done({"t": started})


class Parent(gd.FSM, name="bench.parent"):
    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        if step == "start":
            return gd.ScheduleChilds("joined", [Noop] * FANOUT_WIDTH, ctx.state)
        return gd.Done(len(ctx.childs))


FANOUT_WIDTH = 10
PROBE_STARTS: dict[int, float] = {}
PROBE_SEEN = asyncio.Event()


class Probe(gd.FSM, name="bench.probe"):
    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        PROBE_STARTS[ctx.id] = time.time()
        PROBE_SEEN.set()
        return gd.Done()


# -- plumbing ------------------------------------------------------------------------


def client(dsn: str) -> gd.Engine:
    return gd.Engine(dsn, queues={})


def worker(dsn: str) -> gd.Engine:
    return gd.Engine(dsn, **ENGINE_SETTINGS)


def engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The worker engine's options: the tuned set above, the Engine's own defaults
    (``--defaults``), or either with ``--concurrency``/``--prefetch``/``--min-demand``
    replacing its values (equal-settings comparisons)."""
    settings: dict[str, Any] = {} if args.defaults else dict(ENGINE_SETTINGS)
    if args.concurrency is not None:
        settings["queues"] = {"default": args.concurrency}
        if not args.defaults:
            # The tuned prefetch/min_demand are sized for 500 slots; at another
            # concurrency they follow it unless given.
            settings["prefetch"] = args.concurrency
            settings["min_demand"] = max(1, args.concurrency // 10)
    if args.prefetch is not None:
        settings["prefetch"] = args.prefetch
    if args.min_demand is not None:
        settings["min_demand"] = args.min_demand
    return settings


async def insert_batches(dsn: str, machine: type[gd.FSM] | type[gd.Job], n: int) -> float:
    """Enqueue ``n`` instances with ``insert_all`` in batches; returns the seconds."""
    async with client(dsn) as eng:
        t0 = time.perf_counter()
        done = 0
        while done < n:
            k = min(INSERT_BATCH * 10, n - done)
            await eng.insert_all([machine] * k)
            done += k
        return time.perf_counter() - t0


async def drain(engine: gd.Engine, target: int, timeout: float) -> None:
    """Wait until the engine has committed ``target`` step outcomes."""
    deadline = time.monotonic() + timeout
    while engine.stats.steps < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {engine.stats.steps} of {target} steps within {timeout}s")
        await asyncio.sleep(0.002)


async def timed_drain(
    dsn: str, target: int, timeout: float, during: Callable[[], Any] | None = None
) -> tuple[Window, dict[str, Any], dict[str, int]]:
    """Start a worker engine on an enqueued workload; time it until ``target`` steps."""
    meter = PgMeter(dsn)
    meter.start()
    engine = worker(dsn)
    profiler = cProfile.Profile() if PROFILE_TO else None
    window = Window()
    if profiler is not None:
        profiler.enable()
    await engine.start()
    task = asyncio.create_task(during()) if during is not None else None
    try:
        await drain(engine, target, timeout)
        window.close()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(PROFILE_TO)
        meter.stop_cpu()
    finally:
        if profiler is not None:
            profiler.disable()
        if task is not None:
            task.cancel()
        await engine.stop()
    return window, meter.finish(), engine.stats.snapshot()


def count(dsn: str, where: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM gen_durable WHERE {where}").fetchone()
        assert row is not None
        return int(row[0])


def check(dsn: str, where: str, expected: int) -> None:
    got = count(dsn, where)
    if got != expected:
        raise SystemExit(f"workload check failed: {got} rows WHERE {where}, expected {expected}")


def per_step(stats: dict[str, int], steps: int) -> dict[str, Any]:
    return {
        "statements_per_step": round(stats["statements"] / steps, 3),
        "engine_commits_per_step": round(stats["commits"] / steps, 3),
        "picks": stats["picks"],
    }


# -- scenarios -----------------------------------------------------------------------


async def scenario_chain(dsn: str, n: int) -> dict[str, Any]:
    await insert_batches(dsn, Chain, n)
    steps = 4 * n
    window, pg, stats = await timed_drain(dsn, steps, timeout=60 + n / 20)
    check(dsn, "fsm = 'bench.chain' AND status = 'done'", n)
    return rates(
        window,
        pg,
        steps,
        "step",
        instances=n,
        instances_per_s=round(n / window.elapsed, 1),
        **per_step(stats, steps),
    )


async def scenario_jobs(dsn: str, n: int, single: int) -> dict[str, Any]:
    async with client(dsn) as eng:
        t0 = time.perf_counter()
        await eng.insert_all([Noop] * n)
        one_call = time.perf_counter() - t0
    window, pg, stats = await timed_drain(dsn, n, timeout=60 + n / 50)
    check(dsn, "fsm = 'bench.noop' AND status = 'done'", n)
    # Enqueue throughput on the same database, into a queue nobody serves.
    async with client(dsn) as eng:
        batch = min(INSERT_BATCH, n)
        batches = max(1, n // batch)
        t0 = time.perf_counter()
        for _ in range(batches):
            await eng.insert_all([gd.Spec(Noop, queue="parked")] * batch)
        batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(single):
            await eng.insert(Noop, queue="parked")
        one_by_one = time.perf_counter() - t0
    return rates(
        window,
        pg,
        n,
        "job",
        insert_all_one_call_rows=n,
        insert_all_one_call_rows_per_s=round(n / one_call, 1),
        enqueue_rows_per_s=round(n / one_call, 1),  # the side-by-side figure
        insert_all_batched_rows_per_s=round(batches * batch / batched, 1),
        insert_single_rows_per_s=round(single / one_by_one, 1),
        **per_step(stats, n),
    )


async def scenario_signals(dsn: str, n: int) -> dict[str, Any]:
    await insert_batches(dsn, Parked, n)
    engine = worker(dsn)
    await engine.start()
    try:
        await drain(engine, n, timeout=60 + n / 20)
        deadline = time.monotonic() + 60
        while count(dsn, "status = 'awaiting_signal'") < n:
            if time.monotonic() > deadline:
                raise TimeoutError("instances did not park")
            await asyncio.sleep(0.05)
        meter = PgMeter(dsn)
        meter.start(quiet=False)
        base = engine.stats.snapshot()
        window = Window()
        sender = await asyncio.create_subprocess_exec(
            sys.executable,
            os.path.abspath(__file__),
            "send-signals",
            "--dsn",
            dsn,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        await drain(engine, 2 * n, timeout=60 + n / 20)
        window.close()
        # The sender keeps its sessions open until told, so their CPU is counted.
        meter.stop_cpu()
        out, _ = await sender.communicate(b"")
        if sender.returncode != 0:
            raise SystemExit("the signal sender failed")
    finally:
        await engine.stop()
    pg = meter.finish()
    check(dsn, "status = 'done'", n)
    sent = parse_result(out.decode())
    with psycopg.connect(dsn) as conn:
        woke = {
            int(i): float(t)
            for i, t in conn.execute("SELECT id, result->>'t' FROM gen_durable").fetchall()
        }
    lat = [1000 * (woke[int(i)] - t) for i, t in sent["returned"].items()]
    stats = engine.stats.snapshot()
    delta = {k: stats[k] - base[k] for k in stats}
    span = max(woke.values()) - sent["t0"]
    return rates(
        window,
        pg,
        n,
        "wakeup",
        wakeups_per_s_from_first_signal=round(n / span, 1),
        sender_signals_per_s=sent["signals_per_s"],
        sender_concurrency=SIGNAL_SENDERS,
        p50_ms=round(percentile(lat, 50), 2),
        p99_ms=round(percentile(lat, 99), 2),
        **per_step(delta, n),
    )


TIMERS_PARK_S = 3.0  # seconds to park every instance before the shared deadline
TIMERS_PARK_PER_S = 2000  # parks per second the lead time assumes beyond that


async def scenario_timers(dsn: str, n: int) -> dict[str, Any]:
    """``n`` instances parked until one shared deadline, woken by the timer alone:
    wake-ups/s from the deadline to the last wake, and each wake's lateness."""
    at = time.time() + TIMERS_PARK_S + n / TIMERS_PARK_PER_S
    async with client(dsn) as eng:
        for done in range(0, n, INSERT_BATCH * 10):
            k = min(INSERT_BATCH * 10, n - done)
            await eng.insert_all([gd.Spec(Timed, state={"at": at})] * k)
    window, pg, stats = await timed_drain(dsn, 2 * n, timeout=120 + at - time.time() + n / 20)
    check(dsn, "fsm = 'bench.timed' AND status = 'done'", n)
    with psycopg.connect(dsn) as conn:
        woke = [float(r[0]) for r in conn.execute("SELECT result->>'t' FROM gen_durable")]
    late = [1000 * (t - at) for t in woke]
    return rates(
        window,
        pg,
        n,
        "wakeup",
        wakeups_per_s_after_deadline=round(n / max(max(woke) - at, 1e-3), 1),
        parked_before_deadline=sum(1 for t in late if t >= 0) == n,
        p50_late_ms=round(percentile(late, 50), 2),
        p99_late_ms=round(percentile(late, 99), 2),
        timeouts=stats["timeouts"],
        **per_step(stats, 2 * n),
    )


async def send_signals(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM gen_durable ORDER BY id").fetchall()]
    returned: dict[int, float] = {}
    async with gd.Engine(dsn, queues={}, pool_size=SIGNAL_SENDERS + 2) as eng:
        it = iter(ids)

        async def sender() -> None:
            for target in it:
                await eng.signal(target, "go")
                returned[target] = time.time()

        t0 = time.time()
        p0 = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(SIGNAL_SENDERS)))
        spent = time.perf_counter() - p0
        # Hold the sessions until the engine's process has read their CPU (stdin EOF).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    emit({"t0": t0, "returned": returned, "signals_per_s": round(len(ids) / spent, 1)})


async def scenario_keys(dsn: str, n: int) -> dict[str, Any]:
    """``signal`` by id against ``signal`` by unique key, round trip per call."""
    async with client(dsn) as eng:
        for start in range(0, n, INSERT_BATCH):
            specs = [
                gd.Spec(Parked, unique_key=f"key-{i}")
                for i in range(start, min(n, start + INSERT_BATCH))
            ]
            await eng.insert_all(specs)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT id, unique_key FROM gen_durable").fetchall()
        targets = [(int(i), bytes(k).decode()) for i, k in rows]
        random.Random(n).shuffle(targets)
        for iid, key in targets[:20]:  # warm-up, untimed: connections, plans
            await eng.signal(iid, "warm")
            await eng.signal(key, "warm")
        meter = PgMeter(dsn)
        meter.start()
        by_id: list[float] = []
        by_key: list[float] = []
        window = Window()
        for iid, key in targets:
            t0 = time.perf_counter()
            await eng.signal(iid, "go")
            t1 = time.perf_counter()
            await eng.signal(key, "go")
            by_key.append(1000 * (time.perf_counter() - t1))
            by_id.append(1000 * (t1 - t0))
        window.close()
        meter.stop_cpu()
    pg = meter.finish()
    check(dsn, "status = 'runnable'", n)
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT count(*) FROM signals WHERE name = 'go'").fetchone()
    if stored is None or stored[0] != 2 * n:
        raise SystemExit(f"{stored} signals stored, expected {2 * n}")
    p50_id, p50_key = percentile(by_id, 50), percentile(by_key, 50)
    return rates(
        window,
        pg,
        2 * n,
        "signal",
        by_id_p50_ms=round(p50_id, 3),
        by_id_p99_ms=round(percentile(by_id, 99), 3),
        by_key_p50_ms=round(p50_key, 3),
        by_key_p99_ms=round(percentile(by_key, 99), 3),
        key_over_id_p50=round(p50_key / p50_id, 3) if p50_id else None,
    )


async def scenario_fanout(dsn: str, n: int) -> dict[str, Any]:
    await insert_batches(dsn, Parent, n)
    children = n * FANOUT_WIDTH
    steps = 2 * n + children
    window, pg, stats = await timed_drain(dsn, steps, timeout=60 + steps / 20)
    check(dsn, "fsm = 'bench.parent' AND status = 'done' AND result = '10'", n)
    check(dsn, "fsm = 'bench.noop' AND status = 'done'", children)
    return rates(
        window,
        pg,
        steps,
        "step",
        parents=n,
        children=children,
        children_per_s=round(children / window.elapsed, 1),
        **per_step(stats, steps),
    )


async def scenario_latency(dsn: str, n: int, spacing: float) -> dict[str, Any]:
    meter = PgMeter(dsn)
    meter.start()
    engine = worker(dsn)
    await engine.start()
    base = engine.stats.snapshot()
    returned: dict[int, float] = {}
    window = Window()
    try:
        await asyncio.sleep(0.5)  # let the engine reach its idle poll: warm-up, untimed
        window = Window()
        for _ in range(n):
            PROBE_SEEN.clear()
            iid = await engine.insert(Probe)
            returned[iid] = time.time()
            await asyncio.wait_for(PROBE_SEEN.wait(), timeout=30)
            await asyncio.sleep(spacing)
        await drain(engine, n, timeout=30)
        window.close()
        meter.stop_cpu()
    finally:
        await engine.stop()
    pg = meter.finish()
    lat = [1000 * (PROBE_STARTS[i] - t) for i, t in returned.items()]
    return rates(
        window,
        pg,
        n,
        "probe",
        spacing_s=spacing,
        p50_ms=round(percentile(lat, 50), 2),
        p99_ms=round(percentile(lat, 99), 2),
        max_ms=round(max(lat), 2),
        **per_step({k: v - base[k] for k, v in engine.stats.snapshot().items()}, n),
    )


async def scenario_memory(dsn: str, n: int) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, os.path.abspath(__file__), "seed", "--dsn", dsn, "--n", str(n)],
        check=True,
    )
    rss_start = peak_rss_mb()
    peak = rss_start

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, peak_rss_mb())
            await asyncio.sleep(0.05)

    window, pg, stats = await timed_drain(dsn, n, timeout=120 + n / 50, during=sample)
    peak = max(peak, peak_rss_mb())
    check(dsn, "fsm = 'bench.noop' AND status = 'done'", n)
    return rates(
        window,
        pg,
        n,
        "job",
        rss_before_mb=round(rss_start, 1),
        peak_rss_mb=round(peak, 1),
        **per_step(stats, n),
    )


async def scenario_enqueue(dsn: str, n: int) -> dict[str, Any]:
    """One ``insert_all`` of ``n`` no-op jobs without unique keys, timed, into a queue
    nobody serves (the peers' batch enqueue runs the same shape)."""
    specs = [gd.Spec(Noop, queue="parked")] * n
    async with client(dsn) as eng:
        await eng.insert(Noop, queue="warm")  # untimed: the pool's sessions are open
        meter = PgMeter(dsn)
        meter.start(quiet=False)
        window = Window()
        await eng.insert_all(specs)
        window.close()
        meter.stop_cpu()
    pg = meter.finish()
    check(dsn, "queue = 'parked'", n)
    return rates(window, pg, n, "row", api="Engine.insert_all")


RUNNERS = SCENARIOS

LIMIT_RATE = 5000.0  # the rate-limited queue's bucket, starts per second
LIMIT_BURST = 100.0


async def _limited_run(
    dsn: str, specs: list[gd.Spec], timeout: float
) -> tuple[Window, dict[str, Any], dict[str, int]]:
    async with client(dsn) as eng:
        for i in range(0, len(specs), INSERT_BATCH * 10):
            await eng.insert_all(specs[i : i + INSERT_BATCH * 10])
    return await timed_drain(dsn, len(specs), timeout)


async def scenario_limits(dsn: str, n: int) -> dict[str, Any]:
    """Flow control (SPEC §23): jobs/s with K = 1 over 100 keys and on one hot key, with
    K = 8 on one key, and through a bucket of LIMIT_RATE/s (the observed rate, which
    must stay within 5% of it). Each part drains its own rows with a fresh engine."""
    spread = [gd.Spec(Noop, partition_key=f"k{i % 100}") for i in range(n)]
    window, pg, stats = await _limited_run(dsn, spread, 60 + n / 20)
    hot_n = max(100, n // 10)  # one row at a time: a tenth of the rows is plenty
    hot_w, _, _ = await _limited_run(dsn, [gd.Spec(Noop, partition_key="hot")] * hot_n, 120)
    k8_w, _, _ = await _limited_run(
        dsn, [gd.Spec(Noop, partition_key="hot8", partition_limit=8)] * hot_n, 120
    )
    async with client(dsn) as eng:
        await eng.set_rate_limit("bench", LIMIT_RATE, burst=LIMIT_BURST)
    limited_n = max(2000, n)
    await _limited_run(dsn, [gd.Spec(Noop, rate_limit="bench")] * limited_n, 60 + limited_n / 1000)
    check(dsn, "fsm = 'bench.noop' AND status = 'done'", n + 2 * hot_n + limited_n)
    # The first LIMIT_BURST starts are free, the rest come at the rate: measured from
    # the first to the last commit of the limited rows (the engine's start-up is not
    # the bucket's doing).
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(updated_at) - min(updated_at))::float8"
            " FROM gen_durable WHERE rate_limit = 'bench'"
        ).fetchone()
    assert row is not None
    observed = (limited_n - LIMIT_BURST) / row[0]
    return rates(
        window,
        pg,
        n,
        "job",
        k1_100_keys_jobs_per_s=round(n / window.elapsed, 1),
        k1_hot_key_jobs_per_s=round(hot_n / hot_w.elapsed, 1),
        k8_hot_key_jobs_per_s=round(hot_n / k8_w.elapsed, 1),
        rate_limit_per_s=LIMIT_RATE,
        rate_observed_per_s=round(observed, 1),
        rate_error_pct=round(100 * (observed - LIMIT_RATE) / LIMIT_RATE, 2),
        **per_step(stats, n),
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "scenario",
        choices=[*RUNNERS, "send-signals", "seed"],
    )
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--single", type=int, default=1000, help="jobs: single inserts")
    parser.add_argument("--spacing", type=float, default=0.05, help="latency: seconds apart")
    parser.add_argument("--profile", default="", help="write a cProfile of the timed window")
    parser.add_argument(
        "--defaults", action="store_true", help="the Engine's default options, not the tuned set"
    )
    parser.add_argument("--concurrency", type=int, help="steps in flight (the queue's concurrency)")
    parser.add_argument("--prefetch", type=int, help="rows claimed beyond the running slots")
    parser.add_argument("--min-demand", type=int, help="free slots needed before picking")
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="the event loop the engine runs on (PgQueuer's bench runs on uvloop too)",
    )
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    global PROFILE_TO, ENGINE_SETTINGS
    PROFILE_TO = args.profile
    ENGINE_SETTINGS = engine_settings(args)
    if args.scenario == "send-signals":
        await send_signals(args.dsn)
        return
    if args.scenario == "seed":
        await insert_batches(args.dsn, Noop, args.n)
        return
    await gd.migrate(args.dsn)
    runners: dict[str, Callable[[], Any]] = {
        "chain": lambda: scenario_chain(args.dsn, args.n),
        "jobs": lambda: scenario_jobs(args.dsn, args.n, args.single),
        "enqueue": lambda: scenario_enqueue(args.dsn, args.n),
        "signals": lambda: scenario_signals(args.dsn, args.n),
        "keys": lambda: scenario_keys(args.dsn, args.n),
        "timers": lambda: scenario_timers(args.dsn, args.n),
        "fanout": lambda: scenario_fanout(args.dsn, args.n),
        "latency": lambda: scenario_latency(args.dsn, args.n, args.spacing),
        "memory": lambda: scenario_memory(args.dsn, args.n),
        "limits": lambda: scenario_limits(args.dsn, args.n),
    }
    result = await runners[args.scenario]()
    # `package`: which gen_durable this process imported (bench/run.py checks that a
    # baseline revision's run used its own checkout, not the installed tree).
    result["settings"] = {**ENGINE_SETTINGS, "loop": args.loop, "package": gd.__file__}
    emit(result)


def run(args: argparse.Namespace) -> None:
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    run(parse())
