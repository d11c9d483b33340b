"""The supervisor: restarts with backoff, gives up on a service that keeps failing."""

from __future__ import annotations

import asyncio

from gen_durable._runtime.service import Service, Supervisor

from .conftest import wait_for


class Flaky(Service):
    def __init__(self, name: str, failures: int) -> None:
        self.name = name
        self.failures = failures
        self.runs = 0
        self.stopped = 0
        self.forever = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"fault {self.runs}")
        await self.forever.wait()

    async def stop(self) -> None:
        self.stopped += 1


async def test_a_failing_service_is_restarted_with_backoff() -> None:
    fatal: list[str] = []
    sup = Supervisor(lambda n, e: fatal.append(n), max_failures=5, backoff=0.01)
    svc = Flaky("beat", failures=2)
    sup.start(svc)
    await wait_for(lambda: asyncio.sleep(0, svc.runs == 3))
    assert sup.restarts["beat"] == 2 and sup.running("beat") and not fatal
    await sup.stop()
    await sup.stop()  # idempotent
    assert svc.stopped == 2 and not sup.running("beat")


async def test_a_service_failing_too_often_is_fatal_not_restarted_forever() -> None:
    fatal: list[tuple[str, str]] = []
    sup = Supervisor(lambda n, e: fatal.append((n, str(e))), max_failures=3, backoff=0.01)
    svc = Flaky("queue.default", failures=100)
    sup.start(svc)
    await wait_for(lambda: asyncio.sleep(0, bool(fatal)))
    assert fatal == [("queue.default", "fault 3")]
    assert svc.runs == 3 and not sup.running("queue.default")
    await sup.stop()


async def test_failures_outside_the_window_do_not_add_up() -> None:
    fatal: list[str] = []
    sup = Supervisor(lambda n, e: fatal.append(n), max_failures=2, window=0.0, backoff=0.01)
    svc = Flaky("reaper", failures=4)
    sup.start(svc)
    await wait_for(lambda: asyncio.sleep(0, svc.runs == 5))
    assert not fatal and sup.running("reaper")
    await sup.stop()
