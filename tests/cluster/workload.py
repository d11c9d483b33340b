"""The reliability workload: machines exercising every primitive, each logging its runs.

Every step runs inside :meth:`EffectLog.execution`, which appends one row per
*execution* to the ``effects`` table of the same schema when the step starts, and
stamps its ``finished_at`` when the body ends — on its own connection, outside the
outcome's transaction (SPEC §0). Rows are never deleted. A step that is re-run after a
crash (even one killed mid-step, whose row keeps ``finished_at`` NULL) therefore leaves
two rows, and the checker can count re-executions and compare them with the faults
that were injected.

Every machine keeps ``path`` in its state: each committed outcome appends one entry
(``"<step>:<kind>"``), ``Done`` copies the final path into its result. A transition
committed twice, or lost, shows up as a path that differs from the expected one
(SPEC §18.2: a stale outcome must change nothing). ``len(path)`` at the start of a step
is its ``seq``: the position of the transition the execution is trying to commit.

Machines:

* ``Chain`` — a ``Next`` chain of ``length`` steps, optionally under a shared
  ``partition_key`` (SPEC §9).
* ``Waiter`` — parks on ``go`` unless it already has it; the sender delivers ``go``
  (twice, same ``dedup_key``) early or around the park, plus a ``noise`` signal that
  nobody awaits (SPEC §6).
* ``Flaky`` — raises ``fails`` times; ``handle`` answers ``Replay`` (SPEC §5).
* ``Parent`` — fans out ``n`` ``Kid``s and one ``BadKid`` (which fails), joins, and
  checks what it sees (SPEC §7).
* ``Double`` — a ``gd.Job`` (SPEC §12).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

import gen_durable as gd

EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.effects (
    exec_id     uuid PRIMARY KEY,
    instance    bigint NOT NULL,
    fsm         text NOT NULL,
    step        text NOT NULL,
    seq         int NOT NULL,
    attempt     int NOT NULL,
    node        text NOT NULL,
    pkey        text,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz
)
"""


def create_effects(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create the effect log table in ``schema`` (idempotent)."""
    conn.execute(sql.SQL(EFFECTS_DDL).format(schema=sql.Identifier(schema)))


def payload_for(instance_id: int) -> dict[str, int]:
    """The ``go`` payload the sender delivers to a waiter (the checker expects it back)."""
    return {"v": instance_id * 3}


class EffectLog:
    """Appends one ``effects`` row per step execution, from inside the step."""

    def __init__(self) -> None:
        self.dsn: str | None = None
        self.schema = "public"
        self.node = "local"
        self.pause = 0.0
        self._pool: AsyncConnectionPool[Any] | None = None
        self._begin: sql.Composed | None = None
        self._end: sql.Composed | None = None

    def configure(self, dsn: str, schema: str, node: str, pause: float = 0.0) -> None:
        self.dsn, self.schema, self.node, self.pause = dsn, schema, node, pause
        table = sql.Identifier(schema, "effects")
        self._begin = sql.SQL(
            "INSERT INTO {} (exec_id, instance, fsm, step, seq, attempt, node, pkey, started_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (exec_id) DO NOTHING"
        ).format(table)
        self._end = sql.SQL("UPDATE {} SET finished_at = %s WHERE exec_id = %s").format(table)

    async def open(self) -> None:
        assert self.dsn is not None, "EffectLog.configure() first"
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.dsn, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
        )
        await pool.open(wait=False)
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def execution(self, ctx: gd.Context[Any]) -> AsyncIterator[None]:
        """Log the execution when it starts (so a killed one still counts) and stamp
        its end when the step body returns or raises."""
        if self._begin is None or self._end is None:
            raise RuntimeError("the effect log is not configured")
        exec_id = uuid.uuid4()
        row = (
            exec_id,
            ctx.id,
            ctx.fsm.rsplit(".", 1)[-1],
            ctx.step,
            len(getattr(ctx.state, "path", ())),
            ctx.attempt,
            self.node,
            getattr(ctx.state, "key", None),
            _now(),
        )
        await self._write(self._begin, row)
        try:
            if self.pause:
                await asyncio.sleep(random.uniform(0, self.pause))
            yield
        finally:
            await self._write(self._end, (_now(), exec_id))

    async def _write(self, stmt: sql.Composed, params: tuple[Any, ...]) -> None:
        if self._pool is None:
            raise RuntimeError("the effect log is not open")
        # The database may be restarting or our connection may have been killed: keep
        # trying (both writes are idempotent). Giving up would turn a fault of the log
        # into a step error and change the workload's behaviour.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        delay = 0.05
        while True:
            try:
                async with self._pool.connection(timeout=10) as conn:
                    await conn.execute(stmt, params)
                return
            except psycopg.OperationalError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


LOG = EffectLog()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Trail(gd.State):
    path: list[str] = []
    key: str | None = None


def mark(state: Trail, entry: str, **update: Any) -> Any:
    """The next state: ``entry`` appended to the path."""
    return state.model_copy(update={"path": [*state.path, entry], **update})


def finish(state: Trail, entry: str, **extra: Any) -> gd.Done:
    return gd.Done({"path": [*state.path, entry], **extra})


class Chain(gd.FSM, initial="s0"):
    class State(Trail):
        length: int = 4

    async def step(self, step: str, ctx: gd.Context[State]) -> gd.Outcome:
        async with LOG.execution(ctx):
            i = int(step[1:])
            if i + 1 < ctx.state.length:
                return gd.Next(f"s{i + 1}", mark(ctx.state, f"{step}:next"))
            return finish(ctx.state, f"{step}:done")


class Waiter(gd.FSM):
    class State(Trail):
        got: Any = None
        go_count: int = 0

    async def step(self, step: str, ctx: gd.Context[State]) -> gd.Outcome:
        async with LOG.execution(ctx):
            if step == "start":
                return gd.Next("wait", mark(ctx.state, "start:next"))
            if step == "wait":
                go = [s for s in ctx.signals if s.name == "go"]
                if not go:
                    return gd.Await("go", mark(ctx.state, "wait:await"))
                return gd.Next(
                    "after",
                    mark(ctx.state, "wait:next", got=go[0].payload, go_count=len(go)),
                )
            return finish(ctx.state, "after:done", got=ctx.state.got, go_count=ctx.state.go_count)


class Boom(Exception):
    """The deliberate failure of ``Flaky``."""


class Flaky(gd.FSM):
    class State(Trail):
        fails: int = 2

    async def step(self, step: str, ctx: gd.Context[State]) -> gd.Outcome:
        async with LOG.execution(ctx):
            if len(ctx.state.path) < ctx.state.fails:
                raise Boom(f"deliberate failure {len(ctx.state.path) + 1}/{ctx.state.fails}")
            return finish(ctx.state, "start:done")

    def handle(self, error: Exception, ctx: gd.Context[Any]) -> gd.Outcome:
        if isinstance(error, Boom):
            return gd.Replay(mark(ctx.state, "start:replay"))
        return gd.Stop(error)


class Kid(gd.FSM):
    class State(Trail):
        i: int = 0

    async def step(self, step: str, ctx: gd.Context[State]) -> gd.Outcome:
        async with LOG.execution(ctx):
            return finish(ctx.state, "start:done", i=ctx.state.i)


class BadKid(gd.FSM):
    State = Trail

    async def step(self, step: str, ctx: gd.Context[Trail]) -> gd.Outcome:
        async with LOG.execution(ctx):
            return gd.Stop("bad kid")


class Parent(gd.FSM):
    class State(Trail):
        n: int = 3

    async def step(self, step: str, ctx: gd.Context[State]) -> gd.Outcome:
        async with LOG.execution(ctx):
            if step == "start":
                kids: list[Any] = [gd.Spec(Kid, state={"i": i}) for i in range(ctx.state.n)]
                kids.append(BadKid)
                return gd.ScheduleChilds("joined", kids, mark(ctx.state, "start:schedule"))
            return finish(
                ctx.state,
                "joined:done",
                kids=len(ctx.childs),
                done=sum(c.status == "done" for c in ctx.childs),
                failed=sum(c.status == "failed" for c in ctx.childs),
                sum=sum(c.result["i"] for c in ctx.childs if c.status == "done"),
            )


class Double(gd.Job):
    class State(gd.State):
        x: int = 0

    async def perform(self, args: State, ctx: gd.Context[Any]) -> Any:
        async with LOG.execution(ctx):
            return {"y": 2 * args.x}


MACHINES: tuple[type[gd.FSM] | type[gd.Job], ...] = (
    Chain,
    Waiter,
    Flaky,
    Kid,
    BadKid,
    Parent,
    Double,
)


def build(
    *,
    chains: int = 20,
    length: int = 4,
    keys: int = 4,
    keyed: int = 20,
    waiters: int = 20,
    flaky: int = 10,
    parents: int = 4,
    kids: int = 3,
    jobs: int = 20,
    seed: int = 0,
) -> list[gd.Spec]:
    """The specs of one workload; ``keyed`` chains share ``keys`` partition keys."""
    rng = random.Random(seed)
    specs: list[gd.Spec] = []
    specs += [gd.Spec(Chain, state={"length": length}) for _ in range(chains)]
    specs += [
        gd.Spec(
            Chain, state={"length": length, "key": f"k{i % keys}"}, partition_key=f"k{i % keys}"
        )
        for i in range(keyed)
    ]
    specs += [gd.Spec(Waiter) for _ in range(waiters)]
    specs += [gd.Spec(Flaky, state={"fails": rng.randint(1, 2)}) for _ in range(flaky)]
    specs += [gd.Spec(Parent, state={"n": kids}) for _ in range(parents)]
    specs += [gd.Spec(Double, args={"x": i}) for i in range(jobs)]
    rng.shuffle(specs)
    return specs
