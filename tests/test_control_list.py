"""list, the filters and the bulk forms (SPEC §21, §22) on real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import gen_durable as gd
from gen_durable import _control

from .sqlhelp import connect, count, fan_out, fetch


class Alpha(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done()


class Beta(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done()


async def _set(client: gd.Engine, ids: list[int], **columns: Any) -> None:
    sets = ", ".join(f"{k} = %({k})s" for k in columns)
    pool = client._require_pool()
    async with pool.connection() as conn:
        await conn.execute(
            f'UPDATE "{client.config.schema}".gen_durable SET {sets} WHERE id = ANY(%(ids)s)',
            {**columns, "ids": ids},
        )


async def test_list_filters_and_pages_newest_first(make_engine) -> None:
    async with make_engine(queues={}) as client:
        a = [await client.insert(Alpha, queue="q1", partition_key=f"k{i}") for i in range(5)]
        b = [await client.insert(Beta, unique_key=f"u{i}", step="other") for i in range(3)]
        await _set(client, a[:2], status="failed", last_error="card declined: 402")
        assert [i.id for i in await client.list()] == [*reversed(b), *reversed(a)]
        assert [i.id for i in await client.list(machine=Alpha)] == list(reversed(a))
        assert [i.id for i in await client.list(machine=Beta.__gd_name__)] == list(reversed(b))
        assert [i.id for i in await client.list(machine=Beta)] == list(reversed(b))
        assert [i.id for i in await client.list(status="failed")] == [a[1], a[0]]
        assert [i.id for i in await client.list(status=["failed", "runnable"], queue="q1")] == [
            *reversed(a)
        ]
        assert [i.id for i in await client.list(step="other")] == list(reversed(b))
        assert [i.id for i in await client.list(partition_key="k3")] == [a[3]]
        assert [i.id for i in await client.list(unique_key="u1")] == [b[1]]
        assert [i.id for i in await client.list(unique_key=b"u2")] == [b[2]]
        assert [i.id for i in await client.list(error="declined")] == [a[1], a[0]]
        assert await client.list(error="100%_") == []  # a substring, not a pattern
        # Keyset paging: each page starts below the previous page's last id.
        pages: list[list[int]] = []
        before = None
        while True:
            page = [i.id for i in await client.list(limit=3, before=before)]
            if not page:
                break
            pages.append(page)
            before = page[-1]
        assert pages == [[b[2], b[1], b[0]], [a[4], a[3], a[2]], [a[1], a[0]]]
        now = dt.datetime.now(dt.UTC)
        assert len(await client.list(inserted_before=now + dt.timedelta(seconds=5))) == 8
        assert await client.list(inserted_after=now + dt.timedelta(seconds=5)) == []
        assert len(await client.list(updated_after=now - dt.timedelta(hours=1))) == 8
        assert await client.list(updated_before=now - dt.timedelta(hours=1)) == []


async def test_list_by_parent(make_engine) -> None:
    async with make_engine(queues={}) as client:
        conn = await connect(client.config.dsn)
        async with conn:
            parent, kids = await fan_out(conn, client.queries, 3)
        assert [i.id for i in await client.list(parent=parent)] == list(reversed(kids))


@pytest.mark.parametrize(
    "filters",
    [
        {"status": "finished"},
        {"status": []},
        {"machine": 3},
        {"parent": "7"},
        {"parent": True},
        {"inserted_after": dt.datetime(2026, 1, 1)},  # naive
        {"queue": "nul\x00"},
        {"nope": 1},
    ],
)
async def test_bad_filters_are_refused_with_a_typed_error(make_engine, filters) -> None:
    async with make_engine(queues={}) as client:
        await client.insert(Alpha)
        with pytest.raises(gd.InvalidFilter):
            await client.list(**filters)
        with pytest.raises(gd.InvalidFilter):
            await client.cancel_where(**filters)
        assert (await client.list())[0].status == "runnable"


async def test_bulk_forms_refuse_a_call_without_filters(make_engine) -> None:
    async with make_engine(queues={}) as client:
        iid = await client.insert(Alpha)
        for call in (client.cancel_where, client.retry_where, client.purge_where):
            with pytest.raises(gd.InvalidFilter, match="at least one filter"):
                await call()
        with pytest.raises(gd.InvalidFilter):
            await client.list(limit=0)
        assert (await client.get(iid)).status == "runnable"  # type: ignore[union-attr]


async def test_bulk_cancel_retry_purge_in_batches(make_engine, monkeypatch) -> None:
    monkeypatch.setattr(_control, "BATCH", 7)  # several batches for a small table
    async with make_engine(queues={}) as client:
        schema = client.config.schema
        ids = [await client.insert(Alpha) for _ in range(20)]
        keep = [await client.insert(Beta) for _ in range(3)]
        assert await client.cancel_where(machine=Alpha, reason="bulk") == 20
        assert await client.cancel_where(machine=Alpha) == 0  # all terminal now
        assert {i.status for i in await client.list(machine=Beta)} == {"runnable"}
        assert await client.retry_where(machine=Alpha, status="cancelled") == 20
        assert {i.status for i in await client.list(machine=Alpha)} == {"runnable"}
        await _set(client, ids[:15], status="done")
        await _set(client, ids[15:], status="failed")
        pool = client._require_pool()
        async with pool.connection() as conn:
            await conn.execute(
                f'INSERT INTO "{schema}".signals (target_id, name) VALUES (%s, %s)',
                (ids[0], "late"),
            )
        assert await client.purge_where(machine=Alpha, status="done") == 15
        assert await client.purge_where(machine=Beta) == 0  # live rows are never purged
        assert [i.id for i in await client.list(machine=Alpha)] == list(reversed(ids[15:]))
        conn = await connect(client.config.dsn)
        async with conn:
            assert await count(conn, schema, "signals") == 0
            assert (await fetch(conn, schema, keep[0]))["status"] == "runnable"
