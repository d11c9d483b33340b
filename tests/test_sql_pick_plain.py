"""The plain pick (no buckets, no K slots) on real PostgreSQL (SPEC §8, §9, §23).

It is the pick of a queue that uses no flow control, so it must claim exactly what
the full pick claims for such rows (tests/test_sql_pick.py runs with both), and leave
every rate-limited or K > 1 row exactly as it was, saying so with one ``limited`` row.
"""

from __future__ import annotations

from typing import Any

import pytest

from gen_durable._db.statements.pick import Claim

from .sqlhelp import claim, fetch, insert, run, scalar

pytestmark = pytest.mark.asyncio

_HELD = list(Claim.__dataclass_fields__).index("held")  # the pick's columns, in order


def _claimed(rows: list[tuple[Any, ...]]) -> list[int]:
    return sorted(r[0] for r in rows if r[_HELD] is None)


def _limited(rows: list[tuple[Any, ...]]) -> list[int]:
    return [r[0] for r in rows if r[_HELD] == "limited"]


async def _plain(conn, q, token: str, limit: int = 10) -> list[tuple[Any, ...]]:
    return await run(conn, q.pick_plain("default", limit, token, 30.0))


async def test_plain_pick_leaves_rate_limited_rows_untouched_and_says_so(conn, q, schema) -> None:
    await run(conn, q.set_rate_limit("api", 10.0, 1.0, 5.0))
    # The limited rows are the most urgent: the plain pick meets them first.
    limited = await insert(conn, q, *({"rate_limit": "api", "priority": -1} for _ in range(3)))
    free = await insert(conn, q, {}, {})
    before = {i: await fetch(conn, schema, i) for i in limited}
    got = await _plain(conn, q, "n:1")
    assert _claimed(got) == sorted(free)
    (marker,) = _limited(got)  # one row says it, however many were left
    assert marker in limited
    for i in limited:
        after = await fetch(conn, schema, i)
        assert after == before[i]  # not claimed, not held: not even its eligible_at
    # No bucket was read or debited, so none exists yet.
    assert await scalar(conn, f'SELECT count(*) FROM "{schema}".rate_buckets') == 0
    # The full pick then serves them from the bucket.
    assert _claimed(await claim(conn, q, "n:2")) == sorted(limited)


async def test_plain_pick_leaves_k_rows_even_behind_busy_slots(conn, q, schema) -> None:
    keyed = await insert(conn, q, *({"partition_key": "t", "partition_limit": 2} for _ in range(3)))
    assert _claimed(await claim(conn, q, "n:1", limit=2)) == keyed[:2]  # both slots busy
    one = await insert(conn, q, {"partition_key": "solo"})
    got = await _plain(conn, q, "n:2")
    assert _claimed(got) == one  # the K = 1 key runs as always
    # The third row cannot run yet, but is still seen: the scheduler must keep the
    # full pick for this queue, or the key would wait for both slots to free.
    assert _limited(got) == [keyed[2]]
    assert (await fetch(conn, schema, keyed[2]))["status"] == "runnable"


async def test_plain_pick_of_an_unlimited_batch_has_no_limited_row(conn, q) -> None:
    ids = await insert(conn, q, {}, {"partition_key": "k"}, {"partition_key": "k"})
    got = await _plain(conn, q, "n:1")
    assert _claimed(got) == ids[:2]  # one row of the key at a time (§9)
    assert _limited(got) == [] and len(got) == 2
    assert await _plain(conn, q, "n:2") == []
