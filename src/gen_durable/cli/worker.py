"""``gen-durable worker``: run a node until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from .._runtime.config import cli_options
from ..engine import Engine
from ..errors import ConfigurationError, GenDurableError, SchemaError
from ..machine import Machine
from ..registry import REGISTRY
from ..schedule import Schedule
from .common import (
    DEFAULT_CONCURRENCY,
    CannotConnect,
    CommandError,
    UsageError,
    connect,
    describe,
    dsn_of,
    import_apps,
    import_attribute,
    log,
    require_schema,
    schema_of,
)


def cmd_worker(args: argparse.Namespace) -> int:
    apps = import_apps(args.path, args.app)
    schedules = [s for spec in args.schedules for s in load_schedules(spec)]
    queues = _queues(dict(args.queue), list(REGISTRY))
    dsn = dsn_of(args)
    knobs: dict[str, Any] = {
        f.name: getattr(args, f.name) for f in cli_options() if getattr(args, f.name) is not None
    }
    if args.node_id:
        knobs["node_id"] = args.node_id
    try:
        engine = Engine(dsn, queues=queues, schema=schema_of(args), schedules=schedules, **knobs)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    if not apps:
        log.warning("no --app given: only machines importable by their dotted name will run")
    machines = sorted(m.describe() for m in REGISTRY)
    log.info("machines: %s", ", ".join(machines) or "(none registered yet)")
    if schedules:
        log.info("schedules: %s", ", ".join(f"{s.name} ({s.cron})" for s in schedules))
    if args.metrics_port is not None:
        _serve_metrics(dsn, schema_of(args), args.metrics_host, args.metrics_port)
    return _event_loop_runner(args.loop)(_run_worker(engine, args.startup_timeout))


def load_schedules(spec: str) -> list[Schedule]:
    """``--schedules MODULE:NAME``: a ``gd.Schedule``, or an iterable of them, at
    ``NAME`` in ``MODULE`` (SPEC §23). Every node started with the same list inserts
    each slot's instance at most once cluster-wide, so each worker may be given it."""
    module_name, sep, attrs = spec.partition(":")
    if not sep or not module_name or not attrs:
        raise UsageError(f"--schedules wants MODULE:NAME, e.g. myapp.jobs:SCHEDULES; got {spec!r}")
    obj = import_attribute(spec, f"--schedules {spec!r}")
    if obj is None:
        raise UsageError(f"--schedules {spec!r}: {module_name} has no {attrs!r}")
    items = [obj] if isinstance(obj, Schedule) else obj
    if isinstance(items, str | bytes) or not hasattr(items, "__iter__"):
        raise UsageError(f"--schedules {spec!r}: expected a gd.Schedule or a list of them")
    found = list(items)
    wrong = [item for item in found if not isinstance(item, Schedule)]
    if wrong:
        raise UsageError(f"--schedules {spec!r}: not gd.Schedule: {wrong[0]!r}")
    return found


def _serve_metrics(dsn: str, schema: str, host: str, port: int) -> None:
    # Imported only when asked for: the extra is optional (SPEC §25).
    try:
        from ..prometheus import Exporter
    except ImportError as exc:
        raise UsageError(
            f"--metrics-port needs the extra: pip install 'gen_durable[prometheus]' ({exc})"
        ) from None
    Exporter(dsn=dsn, schema=schema).attach().serve(port, addr=host)
    log.info("serving Prometheus metrics on %s:%d/metrics", host, port)


def _queues(given: dict[str, int], machines: list[type[Machine]]) -> dict[str, int]:
    """The queues to serve: those given, else every queue a loaded machine runs on.

    Without ``--queue`` a worker serves what it imported, so adding a machine on a new
    queue cannot leave its instances waiting for a worker nobody configured. With
    ``--queue`` the list is the operator's, but a loaded machine whose queue is left
    out is worth a warning: this node has its code and will not run it."""
    by_queue: dict[str, list[str]] = {}
    for m in sorted(machines, key=lambda m: m.describe()):
        by_queue.setdefault(m.__gd_queue__, []).append(m.describe())
    if not given:
        return dict.fromkeys(sorted(by_queue) or ["default"], DEFAULT_CONCURRENCY)
    for queue, names in by_queue.items():
        if queue not in given:
            log.warning(
                "queue %r is not served by this worker (--queue given), but machine(s) %s "
                "run on it: their instances wait for another worker; add --queue %s=N "
                "to serve it here",
                queue,
                ", ".join(names),
                queue,
            )
    return given


def _event_loop_runner(name: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """``asyncio.run`` on the chosen loop: the engine needs nothing beyond asyncio's API,
    and uvloop's cheaper task and I/O machinery lowers the engine's CPU per step."""
    if name != "uvloop":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        raise UsageError(
            "--loop uvloop: uvloop is not installed (pip install 'gen_durable[uvloop]')"
        ) from None
    run: Callable[[Coroutine[Any, Any, int]], int] = uvloop.run
    return run


async def _run_worker(engine: Engine, startup_timeout: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        log.info("%s received: stopping gracefully", signal.Signals(signum).name)
        stop.set()
        for sig in signals:  # a second signal gets the default (immediate) behaviour
            loop.remove_signal_handler(sig)

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    schema = engine.config.schema
    if not await _start_with_retry(engine, schema, startup_timeout, stop):
        return 0 if stop.is_set() else 1
    cfg = engine.config
    log.info(
        "worker %s running on schema %r, queues %s (%s loop)",
        engine.node_id,
        schema,
        ", ".join(f"{q}={n}" for q, n in cfg.queues.items()),
        type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    stopped = asyncio.ensure_future(stop.wait())
    failed = asyncio.ensure_future(engine.wait_failure())
    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in (stopped, failed):
        waiter.cancel()
    if engine.failure is None:
        log.info("draining (up to %.1fs for running steps)", cfg.drain_timeout)
    await engine.stop()
    log.info("worker %s stopped; %d steps run", engine.node_id, engine.stats.steps)
    if engine.failure is not None:
        # The node already drained itself; a process manager should restart us.
        raise CommandError(f"the node stopped after repeated failures: {engine.failure!r}")
    return 0


async def _start_with_retry(
    engine: Engine, schema: str, timeout: float, stop: asyncio.Event
) -> bool:
    """Start the engine, retrying an unreachable database with capped backoff.

    A missing schema is not retried: it is a deployment mistake, and saying so at once
    beats a restart loop. Returns False when stopped or out of time.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout > 0 else None
    delay = 0.5
    while not stop.is_set():
        try:
            async with await connect(engine.config.dsn, timeout=5) as conn:
                await require_schema(conn, schema)
            await engine.start()
            return True
        except (CannotConnect, OSError, GenDurableError) as exc:
            if isinstance(exc, SchemaError):
                raise
            reason = describe(exc)
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            log.error("giving up after %.0fs: %s", timeout, reason)
            raise CommandError(f"{reason} (gave up after --startup-timeout={timeout:g}s)")
        wait = delay if left is None else min(delay, left)
        log.warning("%s; retrying in %.1fs", reason, wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        delay = min(delay * 2, 10.0)
    return False
