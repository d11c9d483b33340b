"""Flow control through the engine (SPEC §23): K per key, rate limits, schedules."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from typing import Any

import pytest

import gen_durable as gd
from gen_durable._runtime import scheduler

from .conftest import wait_for
from .test_engine_basics import finished

SPANS: list[tuple[float, float]] = []
STARTS: dict[str, list[float]] = {}


class Slow(gd.Job):
    async def perform(self, args: dict[str, Any]) -> Any:
        start = time.monotonic()
        await asyncio.sleep(0.05)
        SPANS.append((start, time.monotonic()))
        return None


class Tick(gd.Job):
    def perform(self, args: dict[str, Any]) -> Any:
        STARTS.setdefault(args.get("tag", "-"), []).append(time.monotonic())
        return args


class Limited(gd.FSM):
    """First step unlimited, then switches itself onto a bucket, then off again."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        STARTS.setdefault(step, []).append(time.monotonic())
        if step == "start":
            return gd.Next("limited", ctx.state, rate_limit="slow")
        if step == "limited":
            return gd.Next("free", ctx.state, rate_limit=None)
        return gd.Done(step)


def peak(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    return max(itertools.accumulate(d for _, d in events))


async def test_k_three_on_one_key_never_more_than_three(make_engine) -> None:
    SPANS.clear()
    engines = [make_engine(queues={"default": 6}, fsms=[Slow]) for _ in range(2)]
    for e in engines:
        await e.start()
    ids = await engines[0].insert_all([gd.Spec(Slow, partition_key="t", partition_limit=3)] * 24)
    for iid in ids:
        assert (await finished(engines[0], iid, timeout=60)).status == "done"
    assert len(SPANS) == 24
    assert peak(SPANS) == 3  # reached, never exceeded


def _count_picks(engine: gd.Engine) -> dict[str, int]:
    """Count the engine's picks by statement (the full one and the plain one)."""
    calls = {"pick": 0, "pick_plain": 0}
    for name in calls:
        real = getattr(engine.queries, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls[_name] += 1
            return _real(*args)

        setattr(engine.queries, name, counted)
    return calls


async def test_a_queue_without_flow_control_never_runs_the_full_pick(make_engine) -> None:
    """SPEC §23: a feature nobody uses costs the hot path nothing; the bucket CTEs are
    not even planned. K = 1 keys are not flow control: the plain pick guards them."""
    engine = make_engine(queues={"default": 4}, fsms=[Tick])
    calls = _count_picks(engine)
    await engine.start()
    ids = await engine.insert_all(
        [gd.Spec(Tick, state={"tag": "plain"}, partition_key=f"k{i % 3}") for i in range(30)]
    )
    for iid in ids:
        await finished(engine, iid, timeout=30)
    assert calls["pick"] == 0 and calls["pick_plain"] > 0, calls


async def test_flow_control_rows_hand_the_queue_over_to_the_full_pick(
    make_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no hold at all, every pick starts plain, meets the K > 1 or rate-limited
    rows it must not claim, and hands them to the full pick at once: the limits hold
    and everything runs (the path a queue takes when such rows first appear)."""
    monkeypatch.setattr(scheduler, "LIMITED_HOLD", 0.0)
    SPANS.clear()
    STARTS.clear()
    engine = make_engine(queues={"default": 6}, fsms=[Slow, Tick])
    calls = _count_picks(engine)
    await engine.start()
    await engine.set_rate_limit("api", 50, burst=2)
    ids = await engine.insert_all(
        [gd.Spec(Slow, partition_key="t", partition_limit=3)] * 12
        + [gd.Spec(Tick, state={"tag": "lim"}, rate_limit="api")] * 10
    )
    for iid in ids:
        assert (await finished(engine, iid, timeout=60)).status == "done"
    assert peak(SPANS) == 3 and len(STARTS["lim"]) == 10
    starts = sorted(STARTS["lim"])
    assert starts[-1] - starts[0] >= (10 - 2) / 50 * 0.8  # the bucket set the pace
    assert calls["pick"] > 0 and calls["pick_plain"] > 0, calls


async def test_bad_flow_options_are_refused_before_anything_is_written(make_engine) -> None:
    engine = make_engine(queues={})
    await engine.start()
    for bad in ({"partition_limit": 0}, {"partition_limit": True}, {"rate_limit": "a b"}):
        with pytest.raises(gd.ConfigurationError):
            await engine.insert(Slow, **bad)
    with pytest.raises(gd.ConfigurationError):
        await engine.set_rate_limit("x", 0)
    with pytest.raises(gd.ConfigurationError):
        await engine.set_rate_limit("x:y", 1)
    with pytest.raises(gd.InvalidOutcome):
        gd.Next("s", rate_limit="")
    with pytest.raises(gd.ConfigurationError):
        gd.Schedule("s", Slow, "not cron")
    with pytest.raises(gd.ConfigurationError):
        gd.Schedule("s", Slow, "* * * * *", timezone="Mars/Olympus")
    every = gd.Schedule("s", Slow, "* * * * *")
    for schedules in ([every, every], ["s"], every):
        with pytest.raises(gd.ConfigurationError):
            make_engine(schedules=schedules)
    with pytest.raises(gd.ConfigurationError, match="queues"):
        make_engine(queues={}, schedules=[every])
    assert await engine.rate_limits() == []


async def test_rate_limit_api_round_trip(make_engine) -> None:
    engine = make_engine(queues={})
    await engine.start()
    got = await engine.set_rate_limit("api", 20, burst=5)
    assert (got.name, got.rate, got.per, got.burst) == ("api", 20.0, 1.0, 5.0)
    await engine.set_rate_limit("api", 10, per=60)
    assert [(r.rate, r.per, r.burst) for r in await engine.rate_limits()] == [(10.0, 60.0, 10.0)]
    assert await engine.delete_rate_limit("api") is True
    assert await engine.delete_rate_limit("api") is False


async def test_bucket_paces_starts_and_unlimited_rows_are_not_delayed(make_engine) -> None:
    """§27.4: starts in any window <= burst + rate x window; the unthrottled rows of
    the same queue finish while the throttled backlog is still draining."""
    STARTS.clear()
    engine = make_engine(queues={"default": 20}, fsms=[Tick])
    await engine.start()
    await engine.set_rate_limit("api", 20, burst=5)
    throttled = await engine.insert_all(
        [gd.Spec(Tick, state={"tag": "lim"}, rate_limit="api")] * 40
    )
    free = await engine.insert_all([gd.Spec(Tick, state={"tag": "free"})] * 40)
    began = time.monotonic()
    for iid in free:
        await finished(engine, iid, timeout=30)
    free_done = time.monotonic() - began
    for iid in throttled:
        await finished(engine, iid, timeout=60)
    total = time.monotonic() - began
    starts = sorted(STARTS["lim"])
    assert len(starts) == 40
    for i, a in enumerate(starts):
        for b in starts[i:]:
            window = b - a
            n = sum(1 for s in starts if a <= s <= b)
            # 0.05 s slack: start times are taken in the step, after the claim.
            assert n <= 5 + 20 * (window + 0.05), (n, window)
    assert total >= (40 - 5) / 20 * 0.9  # the rate, not the queue, set the pace
    assert free_done < total / 2


async def test_next_sets_and_clears_the_rate_limit(make_engine) -> None:
    STARTS.clear()
    engine = make_engine(queues={"default": 5}, fsms=[Limited])
    await engine.start()
    seen: list[dict[str, Any]] = []

    def on_unknown(event: str, m: Any, meta: Any) -> None:
        seen.append(dict(meta))

    gd.telemetry.attach("rate_limit.unknown", on_unknown)
    try:
        iid = await engine.insert(Limited)
        await wait_for(lambda: asyncio.sleep(0, seen), timeout=10)
        assert seen[0]["rate_limit"] == "slow" and seen[0]["id"] == iid
        inst = await engine.get(iid)
        assert inst is not None and inst.status == "runnable" and inst.step == "limited"
        await engine.set_rate_limit("slow", 100)
        assert (await finished(engine, iid)).result == "free"
    finally:
        gd.telemetry.detach("rate_limit.unknown", on_unknown)


async def test_schedule_one_instance_per_slot_across_engines(make_engine) -> None:
    every = gd.Schedule("tick", Tick, "* * * * * *", state=lambda t: {"tag": t.isoformat()})
    engines = [make_engine(queues={"default": 2}, fsms=[Tick], schedules=[every]) for _ in "ab"]
    inserted: list[Any] = []

    def on_insert(event: str, m: Any, meta: Any) -> None:
        inserted.append(meta["slot"])

    gd.telemetry.attach("schedule.inserted", on_insert)
    try:
        for e in engines:
            await e.start()
        await wait_for(lambda: asyncio.sleep(0, len(inserted) >= 3), timeout=15)
    finally:
        gd.telemetry.detach("schedule.inserted", on_insert)
    assert len(inserted) == len(set(inserted))  # each slot once, whichever engine
    # Consecutive slots: none skipped while the engines ran.
    ordered = sorted(inserted)
    assert all(b - a == dt.timedelta(seconds=1) for a, b in itertools.pairwise(ordered))


async def test_a_held_row_is_picked_when_its_token_is_due_not_at_the_next_poll(
    make_engine,
) -> None:
    """The pick says when a held row is due; the scheduler looks again then, however
    long its poll (here 2 s, no LISTEN nudges): 1/s with burst 1 runs three rows in
    about 2 s, where polling alone would take 4."""
    STARTS.clear()
    engine = make_engine(
        queues={"default": 5}, fsms=[Tick], poll_interval=2, max_poll_interval=2, listen=False
    )
    await engine.start()
    await engine.set_rate_limit("one", 1, burst=1)
    ids = await engine.insert_all([gd.Spec(Tick, state={"tag": "due"}, rate_limit="one")] * 3)
    for iid in ids:
        await finished(engine, iid, timeout=30)
    starts = sorted(STARTS["due"])
    assert 1.7 <= starts[-1] - starts[0] < 3.5, starts


async def test_a_claim_taken_ahead_starts_when_its_token_is_due(make_engine) -> None:
    """20/s with burst 1: one pick claims the row with the token there is and the five
    whose tokens are due within RESERVE_AHEAD (0.25 s); none waits for a later pick,
    and each starts when its token is due, 0.05 s after the one before."""
    STARTS.clear()
    engine = make_engine(queues={"default": 10}, fsms=[Tick])
    throttled: list[int] = []

    def on_throttled(event: str, m: Any, meta: Any) -> None:
        throttled.append(m["count"])

    await engine.start()
    await engine.set_rate_limit("ahead", 20, burst=1)
    gd.telemetry.attach("rate_limit.throttled", on_throttled)
    try:
        ids = await engine.insert_all(
            [gd.Spec(Tick, state={"tag": "ahead"}, rate_limit="ahead")] * 6
        )
        for iid in ids:
            await finished(engine, iid, timeout=30)
    finally:
        gd.telemetry.detach("rate_limit.throttled", on_throttled)
    assert throttled == []  # nothing was held for a later pick
    starts = sorted(STARTS["ahead"])
    for i, a in enumerate(starts):
        for j in range(i, len(starts)):
            # burst + rate x window; 0.03 s slack: start times are taken in the step.
            assert j - i + 1 <= 1 + 20 * (starts[j] - a + 0.03), [s - starts[0] for s in starts]
    assert starts[-1] - starts[0] >= 5 * 0.05 * 0.8  # the tokens set the pace
