"""Behaviour pinned by a review of the runtime against the SPEC (§5).

Each test forces what it is about and waits on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import gen_durable as gd

from .test_engine_basics import finished

# Short leases so that a crash is recovered by the reaper within a few seconds.
CRASHY = dict(lease_ttl=2, heartbeat_interval=0.5, reap_interval=0.2)

RUNS: dict[str, int] = {}


def _count(key: str) -> int:
    RUNS[key] = RUNS.get(key, 0) + 1
    return RUNS[key]


# -- BaseExceptions are crashes, not errors (§5.3) ------------------------------------


class Interrupted(BaseException):
    """Not an Exception: like CancelledError, KeyboardInterrupt, SystemExit."""


class CrashesFirst(gd.FSM):
    """Attempt 0 dies with a BaseException; handle must not see it."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _count(f"crash:{ctx.state['key']}")
        if ctx.attempt == 0:
            if ctx.state["how"] == "cancelled":
                raise asyncio.CancelledError()
            raise Interrupted()
        return gd.Done({"attempt": ctx.attempt})

    def handle(self, error: Exception, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _count(f"handled:{ctx.state['key']}")
        return gd.Stop(error)


class SyncCrashesFirst(gd.FSM):
    def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _count(f"crash:{ctx.state['key']}")
        if ctx.attempt == 0:
            raise Interrupted()
        return gd.Done({"attempt": ctx.attempt})

    def handle(self, error: Exception, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _count(f"handled:{ctx.state['key']}")
        return gd.Stop(error)


@pytest.mark.parametrize(
    ("machine", "how"),
    [(CrashesFirst, "cancelled"), (CrashesFirst, "interrupted"), (SyncCrashesFirst, "interrupted")],
)
async def test_base_exception_in_a_step_is_a_crash_the_reaper_recovers(
    make_engine, machine: type[gd.FSM], how: str
) -> None:
    async with make_engine(**CRASHY) as engine:
        key = uuid.uuid4().hex
        iid = await engine.insert(machine, state={"how": how, "key": key})
        inst = await finished(engine, iid, timeout=10)
    assert inst.status == "done" and inst.result == {"attempt": 1}
    assert RUNS[f"crash:{key}"] == 2  # re-run from scratch, attempt + 1
    assert f"handled:{key}" not in RUNS  # handle is not called for a crash
