"""Bad input ends in a clear error or a readable ``failed`` instance — never a crashed
node or a lost row (SPEC §15, §18.3, §18.4).

Every test that runs steps finishes by proving the engine is still healthy: a plain
instance inserted after the bad one still runs to ``done`` on the same engine.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import psycopg
import pytest
from psycopg import sql

import gen_durable as gd

from .conftest import wait_for


async def terminal(engine: gd.Engine, iid: int, timeout: float = 20) -> gd.Instance:
    async def check() -> gd.Instance | None:
        inst = await engine.get(iid)
        assert inst is not None, f"instance {iid} lost"
        return inst if inst.terminal else None

    found: gd.Instance = await wait_for(check, timeout)
    return found


async def still_healthy(engine: gd.Engine) -> None:
    iid = await engine.insert(Plain, state={"n": 1})
    inst = await terminal(engine, iid)
    assert (inst.status, inst.result) == ("done", {"n": 1})


async def rows(conn: psycopg.AsyncConnection[Any], schema: str, table: str = "gen_durable") -> int:
    cur = await conn.execute(
        sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


class Plain(gd.FSM):
    class State(gd.State):
        n: int = 0

    async def step(self, step: str, ctx: gd.Context[State]) -> gd.Outcome:
        return gd.Done({"n": ctx.state.n})


class Other(gd.State):
    x: int = 0


GARBAGE: dict[str, Any] = {
    "none": None,
    "tuple": ("next", "start"),
    "string": "done",
    "class": gd.Done,
    "wrong_model": gd.Next("b", Other(x=1)),
    "bad_step_name": gd.Next(""),
    "negative_delay": gd.Replay(delay=-1),
    "children_not_a_list": gd.ScheduleChilds("b", children="Plain"),  # type: ignore[arg-type]
}


class Garbage(gd.FSM):
    class State(gd.State):
        kind: str = "none"

    def step(self, step: str, ctx: gd.Context[State]) -> Any:
        return GARBAGE[ctx.state.kind]


async def fail_each(
    make_engine: Any, machine: type[gd.FSM], expected: dict[str, str]
) -> dict[str, gd.Instance]:
    """Run one instance per kind; each must fail cleanly with ``expected[kind]`` in its
    ``last_error`` and nothing half-written."""
    async with make_engine() as engine:
        ids = {k: await engine.insert(machine, state={"kind": k}) for k in expected}
        done = {k: await terminal(engine, iid) for k, iid in ids.items()}
        await still_healthy(engine)
    for kind, inst in done.items():
        assert inst.status == "failed", kind
        assert inst.state == {"kind": kind}, f"{kind}: state must not be half-written"
        assert inst.result is None and inst.step == "start", kind
        assert inst.attempt == 0 and inst.locked_by is None, kind
        assert inst.last_error and "\x00" not in inst.last_error, kind
        assert expected[kind] in inst.last_error, (kind, inst.last_error)
    return done


async def test_step_returning_garbage_fails_readably(make_engine) -> None:
    await fail_each(
        make_engine,
        Garbage,
        {
            "none": "returned None",
            "tuple": "gd.Next, gd.Replay",
            "string": "returned 'done'",
            "class": "returned <class",
            "wrong_model": "Other, expected State",
            "bad_step_name": "step name must be a non-empty str",
            "negative_delay": "Replay delay must be",
            "children_not_a_list": "children must be a list",
        },
    )


class HandleRaises(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        raise ValueError("the step broke")

    async def handle(self, error: Exception, ctx: gd.Context[Any]) -> gd.Outcome:
        raise RuntimeError("and so did handle")


class HandleGarbage(gd.FSM):
    def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        raise KeyError("missing")

    def handle(self, error: Exception, ctx: gd.Context[Any]) -> Any:
        return 42


async def test_raising_or_garbage_in_handle_fails_readably(make_engine) -> None:
    async with make_engine() as engine:
        raising = await terminal(engine, await engine.insert(HandleRaises))
        garbage = await terminal(engine, await engine.insert(HandleGarbage))
        await still_healthy(engine)
    assert raising.status == "failed"
    assert raising.last_error == (
        "handle failed: RuntimeError: and so did handle (while handling ValueError: the step broke)"
    )
    assert garbage.status == "failed"
    assert "handle failed: InvalidOutcome" in garbage.last_error
    assert "returned 42" in garbage.last_error
    assert "KeyError: 'missing'" in garbage.last_error


UNENCODABLE: dict[str, Any] = {
    "object": gd.Next("b", {"o": object()}),
    "nan": gd.Next("b", {"f": math.nan}),
    "nul": gd.Next("b", {"s": "a\x00b"}),
    "result": gd.Done({"when": dt.datetime(2020, 1, 1)}),
    "result_nul": gd.Done("a\x00b"),
    "await_nul": gd.Await("go\x00"),
    "step_nul": gd.Next("b\x00"),
}


class Unencodable(gd.FSM):
    def step(self, step: str, ctx: gd.Context[Any]) -> Any:
        return UNENCODABLE[ctx.state["kind"]]


async def test_unencodable_state_or_result_fails_before_anything_is_written(
    make_engine,
) -> None:
    await fail_each(
        make_engine,
        Unencodable,
        {
            "object": "cannot be encoded as JSON",
            "nan": "cannot be encoded as JSON",
            "nul": "NUL",
            "result": "cannot be encoded as JSON",
            "result_nul": "NUL",
            "await_nul": "NUL",
            "step_nul": "NUL",
        },
    )


class Strict(gd.FSM):
    class State(gd.State):
        n: int
        label: str = "x"

    async def step(self, step: str, ctx: gd.Context[State]) -> gd.Outcome:
        return gd.Done({"n": ctx.state.n})


async def test_stored_state_that_no_longer_validates_fails_the_instance(
    make_engine, conn, schema
) -> None:
    client = make_engine(queues={})
    async with client:
        bad = await client.insert(Strict, state={"n": 1})
        good = await client.insert(Strict, state={"n": 2})
    # The model changed under stored rows (or someone edited the row by hand).
    await conn.execute(
        sql.SQL(
            """UPDATE {}.gen_durable SET state = '{{"n": "not a number"}}' WHERE id = %s"""
        ).format(sql.Identifier(schema)),
        (bad,),
    )
    async with make_engine() as engine:
        failed = await terminal(engine, bad)
        ok = await terminal(engine, good)
        await still_healthy(engine)
    assert failed.status == "failed"
    assert "cannot load state" in failed.last_error
    assert "validation error" in failed.last_error
    assert failed.state == {"n": "not a number"}, "the stored state is kept for inspection"
    assert (ok.status, ok.result) == ("done", {"n": 2})


class Big(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        big = [s for s in ctx.signals if s.name == "big"]
        if not big:
            return gd.Await("big")
        blob = big[0].payload["blob"]
        return gd.Done({"size": len(blob), "head": blob[:3], "tail": blob[-3:]})


async def test_fifty_megabyte_signal_payload_is_stored_and_delivered(
    make_engine, conn, schema
) -> None:
    size = 50 * 1024 * 1024
    blob = "abc" + "x" * (size - 6) + "xyz"
    async with make_engine(lease_ttl=30, heartbeat_interval=2) as engine:
        iid = await engine.insert(Big)

        async def parked() -> bool:
            inst = await engine.get(iid)
            return inst is not None and inst.status == "awaiting_signal"

        await wait_for(parked, 20)
        assert await engine.signal(iid, "big", {"blob": blob}) is True
        inst = await terminal(engine, iid, timeout=60)
        await still_healthy(engine)
    assert inst.status == "done"
    assert inst.result == {"size": size, "head": "abc", "tail": "xyz"}
    assert await rows(conn, schema, "signals") == 0, "consumed by the step that awaited it"


async def test_unknown_machine_row_stays_runnable(make_engine, conn, schema) -> None:
    seen: list[Mapping[str, Any]] = []

    def on_miss(event: str, measurements: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        seen.append(meta)

    s = sql.Identifier(schema)
    cur = await conn.execute(
        sql.SQL(
            "INSERT INTO {}.gen_durable (fsm, step, state) VALUES"
            " ('nowhere.Missing', 'start', '{{\"a\": 1}}'),"
            " ('tests.test_bad_input.Plain', 'start', '{{\"n\": 1}}'),"  # wrong version below
            " ('tests.test_bad_input.Plain', 'start', '{{\"n\": 1}}') RETURNING id"
        ).format(s)
    )
    missing, wrong_version, _ = [r[0] for r in await cur.fetchall()]
    await conn.execute(
        sql.SQL("UPDATE {}.gen_durable SET fsm_version = 7 WHERE id = %s").format(s),
        (wrong_version,),
    )
    gd.telemetry.attach("registry.not_found", on_miss)
    try:
        async with make_engine(unknown_retry=60) as engine:

            async def both_missed() -> bool:
                return len(seen) >= 2

            await wait_for(both_missed, 20)
            await still_healthy(engine)
            for iid in (missing, wrong_version):
                inst = await engine.get(iid)
                assert inst is not None, "not lost"
                assert inst.status == "runnable" and inst.attempt == 0 and inst.locked_by is None
                assert inst.last_error == (
                    f"no machine {inst.fsm!r} v{inst.fsm_version} on node {engine.node_id}"
                    " (handed back, retried in 60s)"
                )
                assert inst.eligible_at > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    finally:
        gd.telemetry.detach("registry.not_found", on_miss)
    assert {(m["fsm"], m["fsm_version"]) for m in seen} >= {
        ("nowhere.Missing", 1),
        ("tests.test_bad_input.Plain", 7),
    }


class Echo(gd.FSM):
    """Awaits the signal named in its state, moves to the step named in it, finishes."""

    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        if step != "start":
            return gd.Done({"step": step, "state": ctx.state})
        name = ctx.state["name"]
        got = [s for s in ctx.signals if s.name == name]
        if not got:
            return gd.Await(name, ctx.state)
        if ctx.state.get("stop"):
            return gd.Stop(ctx.state["stop"])
        return gd.Next(ctx.state["next"], {**ctx.state, "payload": got[0].payload})


async def test_nul_bytes_are_refused_before_anything_is_written(make_engine, conn, schema) -> None:
    async with make_engine(queues={}) as client:
        target = await client.insert(Plain)
        bad_inserts: list[dict[str, Any]] = [
            {"partition_key": "a\x00b"},
            {"step": "st\x00art"},
            {"state": {"n": 1, "s": "a\x00b"}},
            {"queue": "q\x00"},
        ]
        for options in bad_inserts:
            with pytest.raises(gd.EncodingError, match="NUL"):
                await client.insert(Echo, **options)
        with pytest.raises(gd.EncodingError, match="NUL"):
            await client.insert_all([gd.Spec(Plain), gd.Spec(Plain, partition_key="\x00")])
        for name, payload, dedup in [
            ("go\x00", None, None),
            ("go", {"s": "\x00"}, None),
            ("go", None, "d\x00"),
        ]:
            with pytest.raises(gd.EncodingError, match="NUL"):
                await client.signal(target, name, payload, dedup_key=dedup)
        # bytea holds any byte: a NUL in unique_key is stored verbatim.
        keyed = await client.insert(Plain, unique_key=b"\x00k\x00\xff")
        inst = await client.get(keyed)
    assert await rows(conn, schema) == 2, "nothing was written by the refused calls"
    assert await rows(conn, schema, "signals") == 0
    assert inst is not None and inst.unique_key == b"\x00k\x00\xff"


WEIRD = [
    "ключ-🔑-鍵",
    "'); DROP TABLE gen_durable; --",
    '"; SELECT pg_sleep(30); --',
    "$$ || (SELECT 1) || $$",
    "%(id)s %s {s} \\x00 \\\\",
    "Robert'); DELETE FROM signals WHERE ('1'='1",
]


class Sneaky(gd.FSM, name="Robert'); DROP TABLE gen_durable; -- ключ"):
    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        return gd.Done({"fsm": ctx.fsm})


@pytest.mark.parametrize("text", WEIRD)
async def test_unicode_and_sql_looking_text_is_stored_verbatim(
    make_engine, conn, schema, text: str
) -> None:
    queue = f"q {text}"
    state = {"name": text, "next": text, text: [text]}
    async with make_engine(queues={queue: 2, "default": 1}, node_id=f"n {text}") as engine:
        sneaky = await terminal(engine, await engine.insert(Sneaky))
        iid = await engine.insert(
            Echo,
            state=state,
            queue=queue,
            partition_key=text,
            unique_key=text,
        )
        failing = await engine.insert(Echo, state={**state, "stop": text}, queue=queue)
        for target in (iid, failing):

            async def parked(target: int = target) -> bool:
                inst = await engine.get(target)
                return inst is not None and inst.status == "awaiting_signal"

            await wait_for(parked, 20)
            payload = {text: text, "nested": {"k": [text, 1, None]}}
            # One transaction, so the duplicate is sent while the target is still live.
            async with conn.transaction():
                assert await engine.signal(target, text, payload, dedup_key=text, conn=conn)
                assert await engine.signal(target, text, {"dup": 1}, dedup_key=text, conn=conn)
        inst = await terminal(engine, iid)
        stopped = await terminal(engine, failing)
        inbox = await engine.inbox(failing)
    assert inst.status == "done", inst.last_error
    assert inst.result == {"step": text, "state": {**state, "payload": payload}}
    assert (inst.queue, inst.partition_key, inst.step) == (queue, text, text)
    assert inst.unique_key == text.encode()
    assert stopped.status == "failed" and stopped.last_error == text
    assert (sneaky.fsm, sneaky.result) == (Sneaky.__gd_name__, {"fsm": Sneaky.__gd_name__})
    # Stop consumed the signal it was woken by; the duplicate was never stored.
    assert inbox == []
    # Nothing was executed as SQL: both tables are intact and hold exactly our rows.
    assert await rows(conn, schema) == 3
    assert await rows(conn, schema, "signals") == 0


# -- lone surrogates (as os.fsdecode returns undecodable bytes) -------------------

LONE = b"report-\xff.csv".decode("utf-8", "surrogateescape")  # as os.fsdecode returns it


async def test_lone_surrogates_are_refused_before_anything_is_written(
    make_engine, conn, schema
) -> None:
    async with make_engine(queues={}) as client:
        target = await client.insert(Plain)
        inserts: list[dict[str, Any]] = [
            {"partition_key": LONE},
            {"state": {"n": 1, "file": LONE}},
            {"unique_key": LONE},
            {"step": LONE},
            {"queue": LONE},
        ]
        for options in inserts:
            with pytest.raises(gd.EncodingError, match="surrogate"):
                await client.insert(Echo, **options)
        for name, payload, dedup in [
            (LONE, None, None),
            ("go", {"f": LONE}, None),
            ("go", None, LONE),
        ]:
            with pytest.raises(gd.EncodingError, match="surrogate"):
                await client.signal(target, name, payload, dedup_key=dedup)
    s = sql.Identifier(schema)
    cur = await conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM {}.gen_durable), (SELECT count(*) FROM {}.signals)"
        ).format(s, s)
    )
    assert await cur.fetchone() == (1, 0)


async def test_empty_queue_or_step_is_refused_not_replaced(make_engine, conn, schema) -> None:
    async with make_engine(queues={}) as engine:
        for option in ("queue", "step"):
            with pytest.raises(gd.ConfigurationError, match=f"{option} must be a non-empty str"):
                await engine.insert(Plain, **{option: ""})
            with pytest.raises(gd.ConfigurationError, match=f"{option} must be a non-empty str"):
                await engine.insert_all([gd.Spec(Plain, **{option: ""})])
    assert await rows(conn, schema) == 0
