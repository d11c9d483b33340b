"""Every looping part of a node is a supervised service: an injected fault in each kind
is logged and the service restarted; a scheduler that cannot run stops the node
cleanly, and claims it could not hand back stop being heartbeated (they are reaped)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import gen_durable as gd
from gen_durable._runtime.node import Node

from .conftest import wait_for
from .test_engine_basics import finished


class Quick(gd.Job):
    async def perform(self, args: dict[str, Any]) -> str:
        return "ok"


def node_of(engine: gd.Engine) -> Node:
    node = engine._node
    assert node is not None
    return node


def inject(obj: object, attr: str, fails: Callable[[int], bool]) -> list[int]:
    """Wrap ``obj.attr`` so that call number n raises when ``fails(n)``; returns the
    list of call numbers made so far."""
    real = getattr(obj, attr)
    calls: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls) + 1)
        if fails(len(calls)):
            raise RuntimeError(f"injected fault in {attr}")
        return real(*args, **kwargs)

    setattr(obj, attr, wrapper)
    return calls


TARGETS: dict[str, Callable[[Node], tuple[object, str]]] = {
    "queue.default": lambda n: (n.schedulers["default"], "_start_buffered"),
    "heartbeat": lambda n: (n.heartbeat, "beat"),
    "reaper": lambda n: (n.reaper, "sweep"),
    "listener": lambda n: (n.supervisor._services["listener"], "_wake"),
}


async def _kick_listener(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Cut the listener's connection: on reconnecting it wakes every queue (the call the
    fault is injected into)."""
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query = %s AND pid <> pg_backend_pid()",
        (f'LISTEN "gen_durable.{schema}"',),
    )


@pytest.mark.parametrize("service", list(TARGETS))
async def test_a_service_that_raises_is_restarted_and_works_again(
    make_engine, conn, schema, service: str
) -> None:
    restarted: list[str] = []

    def on_restart(event: str, m: dict[str, Any], md: dict[str, Any]) -> None:
        restarted.append(md["service"])

    gd.telemetry.attach("service.restarted", on_restart)
    try:
        async with make_engine(heartbeat_interval=0.2, reap_interval=0.2, lease_ttl=3) as engine:
            node = node_of(engine)
            calls = inject(*TARGETS[service](node), fails=lambda n: n == 1)
            if service == "listener":
                await wait_for(lambda: asyncio.sleep(0, node.supervisor.running("listener")))
                await _kick_listener(conn, schema)
            await wait_for(lambda: asyncio.sleep(0, node.supervisor.restarts[service] == 1))
            assert restarted == [service] and node.supervisor.running(service)
            if service == "listener":
                await wait_for(lambda: asyncio.sleep(0, len(calls) >= 2))  # it reconnected
            else:
                await wait_for(lambda: asyncio.sleep(0, len(calls) >= 3))  # it runs again
            iid = await engine.insert(Quick)
            assert (await finished(engine, iid)).result == "ok"
            assert node.failure is None and engine.failure is None
    finally:
        gd.telemetry.detach("service.restarted", on_restart)


async def test_a_scheduler_that_cannot_run_stops_the_node_and_its_claims_are_reaped(
    make_engine, dsn, conn, schema
) -> None:
    """The queue's feeder raises on every pass once it holds claims. After the
    supervisor's limit the node stops cleanly: buffered rows it can hand back are
    runnable again; one a client holds locked is skipped — and, no longer heartbeated,
    its lease runs out and another node's reaper takes it and runs it."""
    failed: list[str] = []

    def on_failed(event: str, m: dict[str, Any], md: dict[str, Any]) -> None:
        failed.append(md["service"])

    gd.telemetry.attach("service.failed", on_failed)
    fast = dict(heartbeat_interval=0.2, reap_interval=0.2, lease_ttl=1.5)
    sick = make_engine(queues={"default": 1}, prefetch=3, **fast)
    client = await psycopg.AsyncConnection.connect(dsn)
    try:
        await sick.start()
        node = node_of(sick)
        node.supervisor._backoff = 0.02  # reach the failure limit quickly
        sched = node.schedulers["default"]
        inject(sched, "_start_buffered", fails=lambda n: bool(sched._buffer))
        ids = await sick.insert_all([Quick] * 3)

        async def all_claimed() -> bool:
            cur = await conn.execute(
                f"SELECT count(*) FROM \"{schema}\".gen_durable WHERE status = 'executing'"
            )
            return await cur.fetchone() == (3,)

        await wait_for(all_claimed)
        await client.execute(
            f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR UPDATE', (ids[0],)
        )
        failure = await asyncio.wait_for(sick.wait_failure(), 20)
        assert "injected fault" in str(failure) and failed == ["queue.default"]
        await sick.stop()
        assert not node.supervisor.running("heartbeat")
        rows = await (
            await conn.execute(
                f'SELECT id, status::text, attempt FROM "{schema}".gen_durable ORDER BY id'
            )
        ).fetchall()
        assert rows[1:] == [(ids[1], "runnable", 0), (ids[2], "runnable", 0)]
        assert rows[0][:2] == (ids[0], "executing")  # skipped by the release
        await client.rollback()
        async with make_engine(**fast) as healthy:
            inst = await finished(healthy, ids[0])
        assert inst.status == "done" and inst.attempt == 1  # reaped, then run
    finally:
        gd.telemetry.detach("service.failed", on_failed)
        await client.close()
