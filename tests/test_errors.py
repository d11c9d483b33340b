"""Errors you can read (SPEC §4, §5, §15): ``last_error`` names the exception's type,
and every error a step raises lands in the instance's bounded error history, with its
(bounded) traceback, and in the log."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from psycopg.types.json import Jsonb

import gen_durable as gd
from gen_durable._db.queries import ERROR_HISTORY
from gen_durable._runtime.history import MESSAGE_LIMIT, TRACEBACK_LIMIT

from .sqlhelp import claim_one, complete, fetch, insert, rows, run, set_columns
from .test_engine_basics import finished


class Lookup(gd.FSM):
    """The default handle: Stop(error)."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if "customer_id" not in ctx.state and "reason" in ctx.state:
            return gd.Stop(ctx.state["reason"])
        if ctx.state.get("bare"):
            raise RuntimeError
        return gd.Done(ctx.state["customer_id"])


class OutOfTries(gd.Job, max_attempts=1):
    def perform(self, args: dict[str, Any]) -> None:
        raise KeyError("customer_id")


async def test_last_error_carries_the_type_and_message(make_engine) -> None:
    async with make_engine() as engine:
        ids = [
            await engine.insert(Lookup),
            await engine.insert(Lookup, state={"bare": True}),
            await engine.insert(Lookup, state={"reason": "customer gone"}),
            await engine.insert(Lookup, state={"reason": ["not", "a", "str"]}),
            await engine.insert(OutOfTries),
        ]
        got = [(await finished(engine, i)).last_error for i in ids]
    assert got == [
        "KeyError: 'customer_id'",
        "RuntimeError",  # no message: the type alone
        "customer gone",  # a plain reason stays verbatim
        "['not', 'a', 'str']",
        "KeyError: 'customer_id'",  # a job out of attempts
    ]


# -- the error history, through the engine ---------------------------------------------


class Sevenfold(gd.FSM):
    """Fails seven times, each answered by a Replay, then succeeds."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if ctx.attempt < 7:
            raise ValueError(f"try {ctx.attempt}")
        return gd.Done({"attempt": ctx.attempt})

    def handle(self, error: Exception, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Replay(ctx.state)


async def test_the_history_keeps_the_last_five_errors_after_success(make_engine) -> None:
    async with make_engine() as engine:
        inst = await finished(engine, await engine.insert(Sevenfold))
    assert (inst.status, inst.result, inst.last_error) == ("done", {"attempt": 7}, None)
    assert len(inst.errors) == ERROR_HISTORY == 5
    assert [e["attempt"] for e in inst.errors] == [2, 3, 4, 5, 6]  # the latest last
    assert [e["message"] for e in inst.errors] == [f"try {n}" for n in range(2, 7)]
    for entry in inst.errors:
        assert set(entry) == {"step", "attempt", "at", "type", "message", "traceback"}
        assert (entry["step"], entry["type"]) == ("start", "ValueError")
        assert 'raise ValueError(f"try {ctx.attempt}")' in entry["traceback"]
        assert entry["traceback"].endswith(f"ValueError: {entry['message']}\n")
    times = [dt.datetime.fromisoformat(e["at"]) for e in inst.errors]
    assert times == sorted(times) and times[-1] <= inst.updated_at


def ping(n: int) -> None:
    if n == 0:
        raise ValueError("deep")
    pong(n - 1)


def pong(n: int) -> None:
    ping(n - 1)


class Deep(gd.FSM):
    def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if ctx.state.get("huge"):
            raise ValueError("x" * 100_000)
        ping(200)  # alternating frames: Python cannot fold them into "repeated" lines
        return gd.Done()


async def test_a_huge_traceback_is_cut_to_its_end(make_engine) -> None:
    async with make_engine() as engine:
        deep = await finished(engine, await engine.insert(Deep))
        huge = await finished(engine, await engine.insert(Deep, state={"huge": True}))
    (entry,) = deep.errors
    tb = entry["traceback"]
    assert len(tb) <= TRACEBACK_LIMIT
    assert tb.startswith("… (traceback cut to its last lines)\n")
    assert tb.splitlines()[1].startswith("  File ")  # cut at a line, not mid-line
    assert 'raise ValueError("deep")' in tb and tb.endswith("ValueError: deep\n")
    (entry,) = huge.errors
    assert len(entry["traceback"]) <= TRACEBACK_LIMIT
    assert len(entry["message"]) <= MESSAGE_LIMIT + 1
    # The overlong message is cut first, so the frame that raised survives.
    assert 'raise ValueError("x" * 100_000)' in entry["traceback"]
    assert entry["traceback"].endswith("… (message cut)\n")


async def test_a_step_error_is_logged_with_its_traceback(make_engine, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="gen_durable"):
        async with make_engine() as engine:
            iid = await engine.insert(Lookup)
            await finished(engine, iid)
    (record,) = [r for r in caplog.records if r.name == "gen_durable.step"]
    assert record.levelno == logging.WARNING
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)
    message = record.getMessage()
    for part in (str(iid), Lookup.describe(), "'start'", "attempt 0", "KeyError"):
        assert part in message, (part, message)
    assert "Traceback (most recent call last)" in caplog.text
    assert 'return gd.Done(ctx.state["customer_id"])' in caplog.text


class HandleBug(gd.FSM):
    def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        raise KeyError("x")

    def handle(self, error: Exception, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        raise RuntimeError("handle bug")


async def test_a_failing_handle_is_recorded_with_the_error_it_handled(make_engine) -> None:
    async with make_engine() as engine:
        inst = await finished(engine, await engine.insert(HandleBug))
    assert inst.status == "failed"
    (entry,) = inst.errors
    assert (entry["type"], entry["message"], entry["handling"]) == (
        "RuntimeError",
        "handle bug",
        "KeyError: 'x'",
    )
    tb = entry["traceback"]
    assert tb.index("KeyError: 'x'") < tb.index("During handling") < tb.index("handle bug")


class Odd(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        raise OddError("nul \x00 and a lone \udc80 surrogate")


class OddError(Exception):
    pass


async def test_unstorable_text_in_an_error_is_escaped_not_lost(make_engine) -> None:
    async with make_engine() as engine:
        inst = await finished(engine, await engine.insert(Odd))
    (entry,) = inst.errors
    assert entry["type"] == f"{__name__}.OddError"
    assert entry["message"] == "nul \\x00 and a lone \\udc80 surrogate"
    assert inst.last_error == "OddError: nul \\x00 and a lone \\udc80 surrogate"


# -- the history in the outcome statements ---------------------------------------------


def _entry(n: int) -> str:
    return json.dumps({"step": "start", "attempt": n, "type": "E", "message": str(n)})


async def test_an_outcome_with_an_entry_appends_it_stamped_by_the_database(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    await claim_one(conn, q, "node-a:1")
    await complete(conn, q, id=iid, token="node-a:1", kind="replay", error_entry=_entry(0))
    row = await fetch(conn, schema, iid)
    (entry,) = row["errors"]
    assert {k: entry[k] for k in ("attempt", "message")} == {"attempt": 0, "message": "0"}
    assert dt.datetime.fromisoformat(entry["at"]) == row["updated_at"]  # one now()


async def test_outcomes_without_an_entry_leave_the_history_alone(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    history = [json.loads(_entry(n)) for n in range(3)]
    await set_columns(conn, schema, iid, errors=Jsonb(history))
    for n, kind in enumerate(["next", "replay", "done"]):
        await claim_one(conn, q, f"node-a:{n}")
        await complete(conn, q, id=iid, token=f"node-a:{n}", kind=kind, step="start")
    assert (await fetch(conn, schema, iid))["errors"] == history


async def test_the_outcome_statement_keeps_the_last_entries(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    await set_columns(conn, schema, iid, errors=Jsonb([{"n": n} for n in range(7)]))
    await claim_one(conn, q, "node-a:1")
    await complete(conn, q, id=iid, token="node-a:1", kind="stop", error="E: 9",
                   error_entry=_entry(9))  # fmt: skip
    errors = (await fetch(conn, schema, iid))["errors"]
    assert [e.get("n", e.get("attempt")) for e in errors] == [3, 4, 5, 6, 9]


async def test_schedule_childs_records_an_entry(conn, q, schema) -> None:
    (parent,) = await insert(conn, q)
    await claim_one(conn, q, "node-p:1")
    stmt = q.schedule_childs(
        parent_id=parent,
        token="node-p:1",
        next_step="join",
        state=None,
        consume=None,
        seen=[],
        children=rows({"parent_id": parent}),
        error_entry=_entry(0),
    )
    assert len(await run(conn, stmt)) == 1
    assert [e["message"] for e in (await fetch(conn, schema, parent))["errors"]] == ["0"]


async def test_a_stale_outcome_records_no_entry(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    await claim_one(conn, q, "node-a:1")
    before = await fetch(conn, schema, iid)
    got = await complete(conn, q, id=iid, token="node-a:0", kind="stop", error_entry=_entry(0))
    assert got == [] and await fetch(conn, schema, iid) == before


# -- errors whose text is hostile ----------------------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text for you")


class Hostile(gd.FSM):
    """Raises an error whose ``str()`` raises, or one with a megabyte of message."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if ctx.state.get("huge"):
            raise RuntimeError("x" * 1_000_000)
        if ctx.state.get("stop_huge"):
            return gd.Stop("y" * 1_000_000)
        raise Unprintable


async def test_unprintable_and_huge_errors_fail_readably_and_bounded(make_engine) -> None:
    from gen_durable._runtime.encode import MAX_ERROR_CHARS

    async with make_engine() as engine:
        bad = await engine.insert(Hostile)
        huge = await engine.insert(Hostile, state={"huge": True})
        stop = await engine.insert(Hostile, state={"stop_huge": True})
        got = {i: await finished(engine, i) for i in (bad, huge, stop)}
        after = await engine.insert(Lookup, state={"customer_id": 7})
        assert (await finished(engine, after)).status == "done"  # the node still works
    assert got[bad].status == "failed"
    assert got[bad].last_error is not None
    assert got[bad].last_error.startswith("Unprintable: <str() of the error raised>")
    for iid, head in ((huge, "RuntimeError: xxx"), (stop, "yyy")):
        text = got[iid].last_error
        assert got[iid].status == "failed" and text is not None and text.startswith(head)
        assert len(text) < MAX_ERROR_CHARS + 100
        assert text.endswith("more characters cut)")
