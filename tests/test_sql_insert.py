"""Inserts and uniqueness against real PostgreSQL (SPEC §10, §18.6, §18.7)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import gen_durable as gd
from gen_durable._db.queries import NON_TERMINAL, Queries

from .sqlhelp import claim, complete, connections, count, fetch, insert, rows, run


class Plain(gd.FSM):
    def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
        return gd.Done()


@pytest.fixture
def client(dsn: str, schema: str) -> Iterator[gd.SyncClient]:
    with gd.SyncClient(dsn, schema=schema) as c:
        yield c


def _finish(dsn: str, q: Queries, iid: int, kind: str) -> None:
    """Claim ``iid`` (the only runnable row) and apply Done or Stop to it."""

    async def go() -> None:
        async with connections(dsn, 1) as (c,):
            (row,) = await claim(c, q, "node-a:1")
            assert row[0] == iid
            await complete(c, q, id=iid, token="node-a:1", kind=kind, result="1", error="e")

    asyncio.run(go())


def _row(client: gd.SyncClient, iid: int) -> gd.Instance:
    inst = client.get(iid)
    assert inst is not None
    return inst


# -- uniqueness (§10) -------------------------------------------------------------


def test_default_scope_is_the_non_terminal_statuses_and_done_frees_the_key(dsn, q, client) -> None:
    first = client.insert(Plain, unique_key="order-1")
    inst = _row(client, first)
    assert inst.unique_scope == NON_TERMINAL
    assert inst.unique_key == inst.unique_guard == b"order-1"
    with pytest.raises(gd.Duplicate) as err:
        client.insert(Plain, unique_key="order-1")
    assert err.value.unique_key == b"order-1"
    _finish(dsn, q, first, "done")
    assert _row(client, first).unique_guard is None  # cleared as the status left the scope
    second = client.insert(Plain, unique_key="order-1")
    assert second != first


@pytest.mark.parametrize(
    ("kept", "finish", "occupied"),
    [
        ("done", "done", True),
        ("done", "stop", False),
        ("failed", "stop", True),
        ("failed", "done", False),
    ],
)
def test_scope_including_a_terminal_status_keeps_the_key(
    dsn, q, client, kept, finish, occupied
) -> None:
    scope = [*NON_TERMINAL, kept]
    first = client.insert(Plain, unique_key=b"k", unique_scope=scope)
    _finish(dsn, q, first, finish)
    if occupied:
        assert _row(client, first).unique_guard == b"k"
        with pytest.raises(gd.Duplicate):
            client.insert(Plain, unique_key=b"k")
    else:
        assert _row(client, first).unique_guard is None
        client.insert(Plain, unique_key=b"k")


def test_rows_without_a_key_never_conflict(client) -> None:
    assert len(client.insert_all([Plain] * 3)) == 3
    client.insert(Plain, unique_scope=[*NON_TERMINAL, "done"])
    client.insert(Plain, unique_scope=[*NON_TERMINAL, "done"])


def test_duplicates_within_a_batch_and_against_existing_rows_are_dropped(
    client, schema, dsn
) -> None:
    ids = client.insert_all(
        [
            gd.Spec(Plain, unique_key="a", state={"i": 0}),
            gd.Spec(Plain, unique_key="a", state={"i": 1}),
            gd.Spec(Plain, unique_key="b", state={"i": 2}),
            gd.Spec(Plain, state={"i": 3}),
            gd.Spec(Plain, state={"i": 4}),
        ]
    )
    assert len(ids) == 4 and ids == sorted(ids)
    kept = {_row(client, i).unique_key: _row(client, i).state for i in ids}
    assert kept[b"b"] == {"i": 2} and kept[b"a"] in ({"i": 0}, {"i": 1})
    again = client.insert_all([gd.Spec(Plain, unique_key="a"), gd.Spec(Plain, unique_key="c")])
    assert [_row(client, i).unique_key for i in again] == [b"c"]
    with psycopg.connect(dsn) as c:
        n = c.execute(f'SELECT count(*) FROM "{schema}".gen_durable').fetchone()
    assert n == (5,)


@pytest.mark.parametrize(
    "scope",
    [["bogus"], ["runnable", "Done"], [1], ["runnable", None], 5, [b"runnable"]],
)
def test_invalid_scope_is_refused_before_anything_is_written(client, schema, dsn, scope) -> None:
    with pytest.raises(gd.ConfigurationError):
        client.insert(Plain, unique_key="k", unique_scope=scope)
    with pytest.raises(gd.ConfigurationError):
        client.insert_all([gd.Spec(Plain), gd.Spec(Plain, unique_key="k", unique_scope=scope)])
    with psycopg.connect(dsn) as c:
        assert c.execute(f'SELECT count(*) FROM "{schema}".gen_durable').fetchone() == (0,)


@pytest.mark.parametrize(
    "scope", [["runnable"], ["done"], [*NON_TERMINAL[:3], "done"], "runnable", [], ()]
)
def test_any_subset_of_statuses_is_a_scope(client, scope) -> None:
    """SPEC §10, revised in v2: the empty scope too, which (like any scope without
    `runnable`) never occupies its key."""
    iid = client.insert(Plain, unique_key="k", unique_scope=scope)
    listed = [scope] if isinstance(scope, str) else list(scope)
    assert _row(client, iid).unique_scope == tuple(listed)
    assert _row(client, iid).unique_guard == (b"k" if "runnable" in listed else None)


def test_str_key_is_stored_as_utf8_bytes_and_bytes_verbatim(client) -> None:
    text = client.insert(Plain, unique_key="clé-✓")
    raw = client.insert(Plain, unique_key=b"\x00\xff\xfe")
    assert _row(client, text).unique_key == "clé-✓".encode()
    assert _row(client, raw).unique_key == b"\x00\xff\xfe"
    # The same key given as str and as its UTF-8 bytes is one key.
    with pytest.raises(gd.Duplicate):
        client.insert(Plain, unique_key="clé-✓".encode())


async def test_statement_level_conflict_is_decided_by_the_stored_scope(conn, q, schema) -> None:
    """The SQL alone: a key occupies only while the row's status is in its own scope."""
    scope = "{" + ",".join(NON_TERMINAL) + "}"
    (a,) = await insert(conn, q, {"unique_key": b"x", "unique_scope": scope})
    assert await insert(conn, q, {"unique_key": b"x", "unique_scope": scope}) == []
    # An empty scope occupies nothing.
    (b,) = await insert(conn, q, {"unique_key": b"x", "unique_scope": "{}"})
    assert (await fetch(conn, schema, b))["unique_guard"] is None
    assert (await fetch(conn, schema, a))["unique_guard"] == b"x"


# -- batch inserts (§18.6, §18.7) -----------------------------------------------------


def test_insert_all_of_100000_rows_is_one_statement(client, dsn, schema) -> None:
    n = 100_000
    ids = client.insert_all(
        gd.Spec(Plain, state={"i": i}, unique_key=f"k{i % (n - 10)}") for i in range(n)
    )
    assert len(ids) == n - 10  # the last ten repeat earlier keys
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    with psycopg.connect(dsn) as c:
        # One autocommit statement ⇒ one transaction: every row carries the same xmin.
        stats = c.execute(
            f"SELECT count(*), count(DISTINCT xmin::text), min(state->>'i'), "
            f'count(DISTINCT unique_key) FROM "{schema}".gen_durable'
        ).fetchone()
    assert stats == (n - 10, 1, "0", n - 10)


def _batch(keys: list[str]) -> Any:
    return rows(*({"unique_key": k.encode(), "unique_scope": "{runnable}"} for k in keys))


async def test_concurrent_insert_all_with_overlapping_keys_never_deadlock(
    dsn, conn, q, schema
) -> None:
    rng = random.Random(7)
    async with connections(dsn, 2) as (a, b):
        for round_ in range(15):
            left = [f"r{round_}-{i:05d}" for i in range(0, 1500)]
            right = [f"r{round_}-{i:05d}" for i in range(500, 2000)]
            rng.shuffle(left)
            right.reverse()  # the overlap arrives in opposite orders
            got = await asyncio.gather(
                run(a, q.insert(_batch(left))), run(b, q.insert(_batch(right)))
            )
            inserted = [list(r[0][0] or []) for r in got]
            assert len(inserted[0]) + len(inserted[1]) == 2000
            assert not set(inserted[0]) & set(inserted[1])
    assert await count(conn, schema, "gen_durable") == 15 * 2000


ODD = 'quote " back \\ slash\nnewline\ttab ✓ 漢 \u2028 end'


async def test_text_bytes_and_times_are_stored_verbatim(conn, q, schema) -> None:
    """Every insert column survives the batch encoding exactly (quotes, backslashes,
    control characters, non-ASCII, every byte value, offsets and microseconds)."""
    when = dt.datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=dt.timezone(dt.timedelta(hours=5.5)))
    every_byte = bytes(range(256))
    (iid,) = await insert(
        conn,
        q,
        {
            "fsm": ODD,
            "fsm_version": 7,
            "step": ODD,
            "state": json.dumps({ODD: [ODD]}, ensure_ascii=False),
            "queue": ODD,
            "priority": -32768,
            "partition_key": ODD,
            "eligible_at": when,
            "unique_key": every_byte,
            "unique_scope": "{runnable,executing,awaiting_signal,awaiting_children,done}",
        },
    )
    row = await fetch(conn, schema, iid)
    assert (row["fsm"], row["step"], row["queue"], row["partition_key"]) == (ODD,) * 4
    assert row["fsm_version"] == 7 and row["priority"] == -32768
    assert row["state"] == {ODD: [ODD]}
    assert row["eligible_at"] == when
    assert row["unique_key"] == every_byte == row["unique_guard"]
    assert row["unique_scope"] == [*NON_TERMINAL, "done"]


async def test_delay_is_relative_to_the_insert_and_eligible_at_wins(conn, q, schema) -> None:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    later, fixed, now = await insert(
        conn, q, {"delay": 90.5}, {"delay": 90.5, "eligible_at": when}, {"delay": 0.0}
    )
    row = await fetch(conn, schema, later)
    assert row["eligible_at"] == row["inserted_at"] + dt.timedelta(seconds=90.5)
    assert (await fetch(conn, schema, fixed))["eligible_at"] == when
    row = await fetch(conn, schema, now)
    assert row["eligible_at"] == row["inserted_at"]
