"""``drain``: run every runnable instance inline, through the real SQL and the real
executor, until nothing is runnable (SPEC §24).

A drain is a small, single-slot node that lives for one call: it picks each queue of
the schema with the engine's own ``pick`` statement, runs each claim with the
engine's :class:`~gen_durable._runtime.executor.Executor` (state loading, ``handle``,
outcome validation, the error history) and commits through a
:class:`~gen_durable._runtime.completer.Completer` — the statements production runs,
so a test exercises what a worker would do. Steps run one at a time, in pick order,
and never run ahead (a ``Next`` goes back through the queue), so every step is seen
and counted. Time is collapsed rather than waited for: ``with_scheduled`` makes
delayed rows due (``Next(delay=…)``, retry backoff, ``schedule_in``), and
``with_timeouts`` fires await deadlines (:func:`fire_await_deadlines`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._db import runner
from .._db.statements.testing import MAKE_DUE, RUNNABLE_QUEUES
from .._runtime.completer import Committed, Completer, Completion
from .._runtime.executor import Claim, Executor
from .._runtime.threads import DaemonThreadPool
from ..errors import GenDurableError
from ..registry import resolve

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from ..engine import Engine

PICK_BATCH = 100
"""Rows claimed per queue and round; they run one by one before the next pick."""


@dataclass
class DrainResult:
    """What a drain ran: ``steps`` committed, and how many of each outcome kind
    (``next``, ``replay``, ``await``, ``schedule_childs``, ``done``, ``stop``)."""

    steps: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    rounds: int = 0

    def __getitem__(self, kind: str) -> int:
        """``result["done"]``: how many steps ended with that outcome kind."""
        return self.kinds[kind]


class DrainLimitExceeded(GenDurableError):
    """A drain ran ``max_steps`` steps and something was still runnable — usually a
    machine that loops forever. ``result`` says what ran."""

    def __init__(self, message: str, result: DrainResult) -> None:
        super().__init__(message)
        self.result = result


async def fire_await_deadlines(engine: Engine) -> int:
    """Fire every await deadline as if it had passed, so the parked step runs again
    with ``ctx.timed_out`` (``drain(with_timeouts=True)``); returns how many fired.

    Await deadlines (``gd.Await(..., timeout=/deadline=)``) arrive with SPEC §19; until
    the schema stores them no parked row carries one, so nothing fires and this
    returns 0. It is the one place a drain fires timers: with §19 it runs the timer
    service's own statement with every deadline treated as passed (time collapsed,
    as ``with_scheduled`` does for delays), so a woken step sees
    ``ctx.timed_out`` exactly as under a worker."""
    del engine
    return 0


class _CountingCompleter(Completer):
    """The engine's group commit, counting each committed outcome by kind."""

    def __init__(self, pool: AsyncConnectionPool[Any], engine: Engine, result: DrainResult):
        super().__init__(pool, engine.queries, engine.stats, flushers=1)
        self.result = result

    async def commit(self, item: Completion) -> Committed | None:
        committed = await super().commit(item)
        if committed is not None:
            self.result.steps += 1
            self.result.kinds[item.kind] += 1
        return committed


async def _claims(engine: Engine, pool: AsyncConnectionPool[Any], run: str) -> list[Claim]:
    schema = engine.config.schema
    queues = await runner.fetch(pool, RUNNABLE_QUEUES.bind(schema))
    claims: list[Claim] = []
    for n, row in enumerate(queues):
        stmt = engine.queries.pick(row.queue, PICK_BATCH, f"{run}:{n}", engine.config.lease_ttl)
        claims += await runner.fetch(pool, stmt)
    return claims


async def _release(engine: Engine, pool: AsyncConnectionPool[Any], claims: list[Claim]) -> None:
    if claims:
        stmt = engine.queries.release([c.id for c in claims], [c.token for c in claims])
        await runner.fetch(pool, stmt)


async def drain(
    engine: Engine,
    *,
    max_steps: int = 10_000,
    with_scheduled: bool = True,
    with_timeouts: bool = True,
) -> DrainResult:
    """Run every runnable instance of the engine's schema, every queue, until nothing
    is runnable; returns what ran (SPEC §24).

    ``engine`` must be started (``async with engine:``); a pure client
    (``queues={}``) is the usual choice, so that no worker of its own competes with
    the drain. Raises :class:`DrainLimitExceeded` after ``max_steps`` steps, with the
    remaining claims handed back; an instance whose machine cannot be found raises
    ``GenDurableError`` naming it.

    ::

        async with gd.Engine(dsn, queues={}) as engine:
            order = await engine.insert(Order, state=OrderState(sku="A1"))
            result = await gd.testing.drain(engine)
            assert (await engine.get(order)).status == "done"
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise GenDurableError(f"max_steps must be an int >= 1, got {max_steps!r}")
    pool = engine._require_pool()
    result = DrainResult()
    executor = Executor(_CountingCompleter(pool, engine, result), _THREADS, engine.stats)
    run = f"drain:{uuid.uuid4().hex[:12]}"
    while True:
        if with_timeouts:
            await fire_await_deadlines(engine)
        if with_scheduled:
            await runner.fetch(pool, MAKE_DUE.bind(engine.config.schema))
        claims = await _claims(engine, pool, f"{run}:{result.rounds}")
        if not claims:
            return result
        result.rounds += 1
        for i, claim in enumerate(claims):
            machine = resolve(engine.registry, claim.fsm, claim.fsm_version)
            if result.steps >= max_steps or machine is None:
                await _release(engine, pool, claims[i:])
                if machine is None:
                    raise GenDurableError(
                        f"drain: instance {claim.id} is a {claim.fsm} v{claim.fsm_version}, "
                        "and no such machine is defined or importable here"
                    )
                raise DrainLimitExceeded(
                    f"drain ran max_steps={max_steps} steps and instances are still "
                    f"runnable (instance {claim.id}, {claim.fsm} at step {claim.step!r}): "
                    "a machine that never finishes? Raise max_steps if it is meant to run "
                    f"longer. Ran: {dict(result.kinds)}",
                    result,
                )
            try:
                await executor.run(claim, machine)
            except BaseException:
                # A lost connection, a cancelled test: this claim and those not run yet go
                # back (a no-op for one whose outcome committed) rather than wait out leases.
                await asyncio.shield(_release(engine, pool, claims[i:]))
                raise


_THREADS = DaemonThreadPool(1, thread_name_prefix="gen_durable-drain")
"""Plain ``def`` steps of a drain run here, one at a time like the drain itself."""
