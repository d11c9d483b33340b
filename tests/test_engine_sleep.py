"""Durable sleep: ``gd.Next(step, state, delay=…)`` (SPEC §19).

The instance goes back to the queue, due after the delay, at its next step: nothing
is held while it sleeps (no claim, no task, no slot), it never runs ahead, and the
attempt resets as for every ``Next``.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

import pytest

import gen_durable as gd
from gen_durable._runtime.encode import encode

from .conftest import wait_for
from .test_definitions import Typed, _claim
from .test_engine_basics import finished

RAN: dict[int, list[tuple[str, float]]] = {}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RAN.clear()  # ids restart in every test's schema


def _ran(ctx: gd.Context[Any]) -> None:
    RAN.setdefault(ctx.id, []).append((ctx.step, time.monotonic()))


class Sleeper(gd.FSM):
    """start → (sleep state["delay"] seconds) → woke → Done(attempt seen at woke)."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _ran(ctx)
        if step == "start":
            delay = ctx.state["delay"]
            if ctx.state.get("timedelta"):
                delay = dt.timedelta(seconds=delay)
            return gd.Next("woke", ctx.state, delay=delay)
        return gd.Done(ctx.attempt)


class Quick(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done("quick")


def _slept(iid: int) -> float:
    (_, started), (_, woke) = RAN[iid]
    return woke - started


async def test_a_delayed_next_sleeps_in_the_queue_and_holds_no_slot(make_engine) -> None:
    # One slot: if the sleeper held it (a kept claim, a task sleeping), Quick could
    # not run while it sleeps.
    async with make_engine(queues={"default": 1}) as engine:
        iid = await engine.insert(Sleeper, state={"delay": 2})

        async def sleeping() -> gd.Instance | None:
            inst = await engine.get(iid)
            assert inst is not None
            return inst if inst.status == "runnable" and inst.step == "woke" else None

        inst = await wait_for(sleeping)
        assert inst.eligible_at > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        assert inst.locked_by is None and inst.lease_expires_at is None
        quick = await engine.insert(Quick)
        assert (await finished(engine, quick)).result == "quick"
        assert len(RAN[iid]) == 1  # still asleep
        done = await finished(engine, iid)
        s = engine.stats.snapshot()
    assert done.result == 0  # attempt reset
    assert 2 <= _slept(iid) <= 3.5
    # Sleeper was picked twice (start, then woke): run-ahead did not keep the claim.
    assert s["picked"] == 3 and s["steps"] == 3


async def test_a_timedelta_delay(make_engine) -> None:
    async with make_engine() as engine:
        iid = await engine.insert(Sleeper, state={"delay": 0.3, "timedelta": True})
        done = await finished(engine, iid)
        picked = engine.stats.picked
    assert done.status == "done" and done.step == "woke"
    assert _slept(iid) >= 0.3
    assert picked == 2


class Chain(gd.FSM):
    """start → b → (sleep) → c → d → Done: a run-ahead chain with one sleep in it."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _ran(ctx)
        if step == "start":
            return gd.Next("b", ctx.state)
        if step == "b":
            return gd.Next("c", ctx.state, delay=0.2)
        if step == "c":
            return gd.Next("d", ctx.state)
        return gd.Done([s for s, _ in RAN[ctx.id]])


async def test_a_delayed_next_stops_a_run_ahead_chain(make_engine) -> None:
    async with make_engine(run_ahead=16) as engine:
        iid = await engine.insert(Chain)
        done = await finished(engine, iid)
        s = engine.stats.snapshot()
    assert done.result == ["start", "b", "c", "d"]
    # start→b ran ahead on the first claim, the sleep went back to the queue, and c→d ran
    # ahead on the second: two picks for four steps.
    assert (s["picked"], s["steps"]) == (2, 4)
    times = dict(RAN[iid])
    assert times["c"] - times["b"] >= 0.2


@pytest.mark.parametrize(
    "delay",
    [-1, -0.001, math.nan, math.inf, True, False, "1", None, dt.timedelta(seconds=-1)],
)
def test_a_bad_delay_raises_when_the_next_is_built(delay: Any) -> None:
    with pytest.raises(gd.InvalidOutcome):
        gd.Next("b", None, delay=delay)


@pytest.mark.parametrize(
    ("delay", "seconds"), [(0, 0.0), (0.0, 0.0), (1.5, 1.5), (dt.timedelta(minutes=1), 60.0)]
)
def test_good_delays_are_seconds(delay: Any, seconds: float) -> None:
    c = encode(gd.Next("b", delay=delay), _claim(), Typed, ())
    assert (c.kind, c.step, c.delay) == ("next", "b", seconds)


def test_replay_still_checks_its_delay_when_encoded() -> None:
    # Unchanged: a bad Replay delay is found by the encoder, inside the step's guard.
    replay = gd.Replay(delay=-1)
    with pytest.raises(gd.InvalidOutcome):
        encode(replay, _claim(), Typed, ())


def test_the_delay_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        gd.Next("b", None, 1)  # type: ignore[misc]
