"""The pick's K slots and token buckets on real PostgreSQL (SPEC §23, §27.4)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from gen_durable._db.statements.flow import RESERVE_AHEAD
from gen_durable._db.statements.pick import Claim

from .sqlhelp import claim, insert, run, scalar

pytestmark = pytest.mark.asyncio


def _ids(rows: list[tuple[Any, ...]], held: str | None = None) -> list[int]:
    at = list(Claim.__dataclass_fields__).index("held")  # the pick's columns, in order
    return [r[0] for r in rows if r[at] == held]


async def _slots(conn, schema: str) -> list[tuple[str, int]]:
    cur = await conn.execute(
        f'SELECT partition_key, partition_slot FROM "{schema}".gen_durable '
        "WHERE status = 'executing' AND partition_key IS NOT NULL ORDER BY partition_slot"
    )
    return list(await cur.fetchall())


async def _blocked(conn, pid: int, deadline: float = 10.0) -> None:
    """Wait until backend ``pid`` waits on a lock (with a deadline, never a bare sleep)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        cur = await conn.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        row = await cur.fetchone()
        if row and row[0] == "Lock":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited on a lock")


async def _finish(conn, schema: str, ids: list[int]) -> None:
    await conn.execute(
        f"UPDATE \"{schema}\".gen_durable SET status = 'done', locked_by = NULL, "
        "lease_expires_at = NULL WHERE id = ANY(%s)",
        (ids,),
    )


async def test_k_rows_of_a_key_most_urgent_first_in_distinct_slots(conn, q, schema) -> None:
    ids = await insert(
        conn, q, *({"partition_key": "t", "partition_limit": 3, "priority": p} for p in range(5))
    )
    got = await claim(conn, q, "n:1")
    assert sorted(_ids(got)) == ids[:3]  # the three most urgent
    assert await _slots(conn, schema) == [("t", 0), ("t", 1), ("t", 2)]
    assert await claim(conn, q, "n:2") == []  # the key is full; the rest stay runnable
    assert (
        await scalar(
            conn, f"SELECT count(*) FROM \"{schema}\".gen_durable WHERE status = 'runnable'"
        )
        == 2
    )
    await _finish(conn, schema, [ids[1]])  # frees slot 1
    again = await claim(conn, q, "n:3")
    assert _ids(again) == [ids[3]]
    assert ("t", 1) in await _slots(conn, schema)


async def test_k_one_is_unchanged_one_row_per_key_slot_zero(conn, q, schema) -> None:
    ids = await insert(conn, q, *({"partition_key": "one"} for _ in range(3)), {})
    got = await claim(conn, q, "n:1")
    assert sorted(_ids(got)) == [ids[0], ids[3]]
    assert await _slots(conn, schema) == [("one", 0)]


async def test_concurrent_picks_cannot_exceed_k(dsn, conn, q, schema) -> None:
    """Forced interleaving: A's claim is uncommitted while B picks the same key; B's
    snapshot sees a free slot, the unique index on executing (key, slot) refuses it."""
    ids = await insert(conn, q, *({"partition_key": "t", "partition_limit": 2} for _ in range(3)))
    a = await psycopg.AsyncConnection.connect(dsn)
    b = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        first = await run(a, q.pick("default", 1, "a:1", 30.0))  # transaction left open
        assert _ids(first) == [ids[0]]
        task = asyncio.create_task(run(b, q.pick("default", 1, "b:1", 30.0)))
        await _blocked(conn, b.info.backend_pid)  # on A's uncommitted (key, slot 0)
        await a.commit()
        with pytest.raises(pg_errors.UniqueViolation):
            await task  # refused: nothing claimed, the caller re-picks
        assert await _slots(conn, schema) == [("t", 0)]
        # The re-pick sees A's claim and takes the free slot; the key is then full.
        assert _ids(await run(b, q.pick("default", 5, "b:2", 30.0))) == [ids[1]]
        assert await _slots(conn, schema) == [("t", 0), ("t", 1)]
    finally:
        await a.close()
        await b.close()


async def _limit(conn, q, name: str, rate: float, per: float, burst: float) -> None:
    await run(conn, q.set_rate_limit(name, rate, per, burst))


async def test_bucket_serves_burst_then_holds_the_rest_due_when_tokens_are(conn, q, schema) -> None:
    await _limit(conn, q, "api", 2.0, 1.0, 3.0)
    limited = await insert(conn, q, *({"rate_limit": "api:a"} for _ in range(6)))
    free = await insert(conn, q, *({} for _ in range(2)))
    got = await claim(conn, q, "n:1", limit=20)
    assert sorted(_ids(got)) == sorted(limited[:3] + free)
    assert sorted(_ids(got, "throttled")) == limited[3:]
    # Held rows are due one token apart (rate 2/s: 0.5 s), not now: later picks do
    # not meet them again until a token is due.
    cur = await conn.execute(
        f'SELECT extract(epoch FROM eligible_at - now()) FROM "{schema}".gen_durable '
        "WHERE id = ANY(%s) ORDER BY eligible_at",
        (limited[3:],),
    )
    due = [float(r[0]) for r in await cur.fetchall()]
    assert 0.3 < due[0] <= 0.6 and 0.8 < due[1] <= 1.1 and 1.3 < due[2] <= 1.6, due
    # The pick tells the scheduler when, so it can look again then.
    fields = list(Claim.__dataclass_fields__)  # the pick's columns, in order
    held, due_at = fields.index("held"), fields.index("due")
    told = sorted(r[due_at] for r in got if r[held] == "throttled")
    assert told == pytest.approx(due, abs=0.05)
    assert await claim(conn, q, "n:2", limit=20) == []
    # Another part has a bucket of its own.
    other = await insert(conn, q, {"rate_limit": "api:b"})
    assert _ids(await claim(conn, q, "n:3")) == other


async def test_unknown_limit_holds_the_row_and_it_runs_once_defined(conn, q, schema) -> None:
    (iid,) = await insert(conn, q, {"rate_limit": "nope"})
    got = await claim(conn, q, "n:1")
    assert _ids(got, "unknown") == [iid]
    row = await scalar(conn, f'SELECT status::text FROM "{schema}".gen_durable WHERE id = %s', iid)
    assert row == "runnable"
    await _limit(conn, q, "nope", 1.0, 1.0, 1.0)
    await conn.execute(
        f'UPDATE "{schema}".gen_durable SET eligible_at = now() WHERE id = %s', (iid,)
    )
    assert _ids(await claim(conn, q, "n:2")) == [iid]


async def test_concurrent_picks_share_one_bucket(dsn, conn, q, schema) -> None:
    """Forced interleaving: A holds the bucket row (uncommitted debit); B's pick waits
    for it and then computes from A's result, so the two never take more than the
    burst between them; a rolled-back pick refunds what it took."""
    await _limit(conn, q, "api", 0.001, 1.0, 4.0)
    await insert(conn, q, *({"rate_limit": "api"} for _ in range(10)))
    a = await psycopg.AsyncConnection.connect(dsn)
    b = await psycopg.AsyncConnection.connect(dsn)
    try:
        first = await run(a, q.pick("default", 3, "a:1", 30.0))
        assert len(_ids(first)) == 3
        task = asyncio.create_task(run(b, q.pick("default", 10, "b:1", 30.0)))
        await _blocked(conn, b.info.backend_pid)  # waiting on the bucket A holds
        await a.rollback()  # A took 3 and gave them back with its claims
        second = await task
        await b.commit()
        assert len(_ids(second)) == 4  # the whole burst, not 4 + 3 nor 4 - 3
        third = await run(a, q.pick("default", 10, "a:2", 30.0))
        await a.commit()
        assert _ids(third) == []
    finally:
        await a.close()
        await b.close()


async def test_tokens_due_soon_are_claimed_ahead_with_their_due(conn, q, schema) -> None:
    """A pick takes the tokens there are and those due within RESERVE_AHEAD: the
    claims say when each token is due, the bucket goes below zero by what it promised,
    and only rows beyond the horizon are held. A late next pick therefore loses no
    token to the burst cap, and the starts still follow the token sequence."""
    assert RESERVE_AHEAD == 0.25
    await _limit(conn, q, "api", 20.0, 1.0, 2.0)  # a token every 0.05 s
    limited = await insert(conn, q, *({"rate_limit": "api"} for _ in range(10)))
    got = await claim(conn, q, "n:1", limit=20)
    fields = list(Claim.__dataclass_fields__)  # the pick's columns, in order
    held_at, due_at = fields.index("held"), fields.index("due")
    claims = {r[0]: r[due_at] for r in got if r[held_at] is None}
    # 2 tokens now, 5 more due within 0.25 s: the 3rd..7th rows, 0.05 s apart.
    assert sorted(claims) == limited[:7]
    assert [claims[i] for i in limited[:2]] == [None, None]
    # Counted from the end of the statement: a little under 0.05 s for the first.
    ahead = [claims[i] for i in limited[2:7]]
    assert 0 < ahead[0] <= 0.05, ahead
    assert [b - a for a, b in itertools.pairwise(ahead)] == pytest.approx([0.05] * 4, abs=1e-4)
    assert sorted(_ids(got, "throttled")) == limited[7:]
    tokens = await scalar(conn, f'SELECT tokens FROM "{schema}".rate_buckets')
    assert tokens == pytest.approx(-5.0, abs=0.1)  # promised ahead
    # The held rows are due after the promised tokens, one token apart (as the pick
    # computed it: the statement's own clock, whatever time has passed since).
    held_due = sorted(r[due_at] for r in got if r[held_at] == "throttled")
    assert held_due == pytest.approx([0.3, 0.35, 0.4], abs=0.001)
    # A bucket in debt gives nothing (never a negative count): with the rate cut to
    # next to nothing, the promised tokens stay owed and a new row is held.
    await _limit(conn, q, "api", 0.001, 1.0, 2.0)
    (late,) = await insert(conn, q, {"rate_limit": "api"})
    assert _ids(await claim(conn, q, "n:2"), "throttled") == [late]
