"""``insert_all`` through binary COPY, against real PostgreSQL (SPEC §10, §11, §18.6).

A batch without unique keys of at least ``COPY_MIN_ROWS`` rows is written by COPY;
these tests hold it to what the statement writes — every column, the ids, the
notifications, the errors — and to being one unit: all rows or none.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

import gen_durable as gd
from gen_durable import _trace
from gen_durable._db import bulk, runner
from gen_durable._db.queries import Queries
from gen_durable._db.statement import channel_of
from gen_durable._db.statements.inserts import InsertRows
from gen_durable._inputs import _machine_of, add_insert, build_insert

from .conftest import wait_for
from .sqlhelp import connect, count, wait_lock_waiters

N = bulk.COPY_MIN_ROWS


class Plain(gd.FSM, name="copy.plain"):
    def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
        return gd.Done()

    def other(self, step: str, ctx: gd.Context) -> gd.Outcome:
        return gd.Done()


ODD = 'quote " back \\ slash\nnewline\ttab ✓ 漢 \u2028 end'
WHEN = dt.datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=dt.timezone(dt.timedelta(hours=5.5)))


def varied(n: int) -> list[object]:
    """A batch without keys that uses every other insert option."""
    out: list[object] = []
    for i in range(n):
        k = i % 7
        if k == 0:
            out.append(Plain)
        elif k == 1:
            out.append(gd.Spec(Plain, state={"i": i, ODD: [ODD, None, 1.5]}, queue=ODD))
        elif k == 2:
            out.append(gd.Spec(Plain, step="other", priority=-32768, partition_key=ODD))
        elif k == 3:
            out.append(gd.Spec(Plain, partition_key=f"p{i % 3}", partition_limit=4, priority=7))
        elif k == 4:
            out.append(gd.Spec(Plain, rate_limit="api:tenant-1", schedule_in=90.5 + i / 1e7))
        elif k == 5:
            out.append(gd.Spec(Plain, eligible_at=WHEN, schedule_in=5))
        else:
            out.append(gd.Spec(Plain, schedule_in=dt.timedelta(microseconds=i), queue="q2"))
    return out


@pytest.fixture
def copied(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The sizes of the batches that went through COPY (the real one, wrapped)."""
    sizes: list[int] = []
    real, real_sync = runner.copy_after, runner.copy_after_sync

    async def spy(target: Any, first: Any, *args: Any) -> Any:
        sizes.append(first.params["n"])
        return await real(target, first, *args)

    def spy_sync(conn: Any, first: Any, *args: Any) -> Any:
        sizes.append(first.params["n"])
        return real_sync(conn, first, *args)

    monkeypatch.setattr(runner, "copy_after", spy)
    monkeypatch.setattr(runner, "copy_after_sync", spy_sync)
    yield sizes


async def table(conn: psycopg.AsyncConnection[Any], schema: str) -> list[dict[str, Any]]:
    query = sql.SQL("SELECT * FROM {}.gen_durable ORDER BY id").format(sql.Identifier(schema))
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query)
        return await cur.fetchall()


# -- the same rows as the statement --------------------------------------------------


async def test_copy_writes_every_column_as_the_statement_does(
    dsn, schema, conn, copied, monkeypatch
) -> None:
    """One batch, both ways, in one transaction (one now()): every column but the id
    is equal, row for row — the trace context of the call included."""
    monkeypatch.setattr(_trace, "CAPTURE", lambda: "00-0af7651916cd43dd8448eb211c80319c-01")
    q = Queries(schema)
    specs = varied(N)
    async with await connect(dsn) as mine, mine.transaction():
        by_statement = await runner.fetch_one(mine, q.insert(build_insert(specs)))
        by_copy = await bulk.insert_all(mine, q, build_insert(specs))
    assert copied == [N]
    assert by_statement is not None and by_statement.ids is not None
    rows = await table(conn, schema)
    assert [r["id"] for r in rows] == by_statement.ids + by_copy
    first, second = rows[:N], rows[N:]
    assert len(second) == N
    for a, b in zip(first, second, strict=True):
        assert {**a, "id": None} == {**b, "id": None}
    # and the values are the ones asked for, not merely equal to each other
    assert second[1]["queue"] == ODD and second[1]["state"] == {"i": 1, ODD: [ODD, None, 1.5]}
    assert second[2]["partition_key"] == ODD and second[2]["priority"] == -32768
    assert second[3]["partition_limit"] == 4 and second[3]["partition_slot"] == 0
    assert second[4]["rate_limit"] == "api:tenant-1"
    assert second[4]["eligible_at"] - second[4]["inserted_at"] == dt.timedelta(seconds=90.5)
    assert second[5]["eligible_at"] == WHEN
    assert second[6]["eligible_at"] - second[6]["inserted_at"] == dt.timedelta(microseconds=6)
    assert second[0]["eligible_at"] == second[0]["inserted_at"] == second[0]["updated_at"]
    assert all(r["trace_context"] == "00-0af7651916cd43dd8448eb211c80319c-01" for r in rows)
    assert {(r["status"], r["unique_scope"], r["unique_guard"]) for r in second} == {
        ("runnable", "{}", None)
    }


async def test_delays_round_to_the_microsecond_as_postgresql_does(dsn, schema, conn) -> None:
    """Half-microsecond delays: the COPY's eligible_at is the statement's to the µs."""
    q = Queries(schema)
    delays = [0.0000005, 0.0000015, 0.0000025, 1.0000005, 2.5e-7, 123.4567895, 3e9 / 1e6]
    specs = [gd.Spec(Plain, schedule_in=delays[i % len(delays)]) for i in range(N)]
    async with await connect(dsn) as mine, mine.transaction():
        await runner.fetch_one(mine, q.insert(build_insert(specs)))
        await bulk.insert_all(mine, q, build_insert(specs))
    rows = await table(conn, schema)
    assert [r["eligible_at"] for r in rows[:N]] == [r["eligible_at"] for r in rows[N:]]


async def test_ids_are_ascending_in_input_order_and_are_the_rows(
    make_engine, conn, schema, copied
) -> None:
    engine = make_engine(queues={})
    await engine.start()
    ids = await engine.insert_all(gd.Spec(Plain, state={"i": i}) for i in range(3 * N))
    assert copied == [3 * N]
    assert ids == sorted(ids) and len(set(ids)) == 3 * N
    rows = await table(conn, schema)
    assert [(r["id"], r["state"]["i"]) for r in rows] == list(zip(ids, range(3 * N), strict=True))
    # one transaction: every row carries the same xmin
    query = sql.SQL("SELECT count(DISTINCT xmin::text) FROM {}.gen_durable").format(
        sql.Identifier(schema)
    )
    assert (await (await conn.execute(query)).fetchone()) == (1,)


async def test_concurrent_copies_and_inserts_never_share_an_id(
    make_engine, conn, schema, copied
) -> None:
    """Ids come from the table's own sequence: batches copied side by side and rows
    inserted by the statement meanwhile all get distinct ids, each batch its own."""
    engine = make_engine(queues={}, pool_size=8)
    await engine.start()

    async def singles() -> list[int]:
        return [await engine.insert(Plain) for _ in range(40)]

    batches = [[gd.Spec(Plain, state={"b": b, "i": i}) for i in range(N + b)] for b in range(6)]
    got = await asyncio.gather(*(engine.insert_all(b) for b in batches), singles(), singles())
    assert sorted(copied) == [N + b for b in range(6)]
    every = [i for ids in got for i in ids]
    assert len(every) == len(set(every)) == sum(N + b for b in range(6)) + 80
    rows = {r["id"]: r["state"] for r in await table(conn, schema)}
    for b, ids in enumerate(got[:6]):
        assert [rows[i] for i in ids] == [{"b": b, "i": i} for i in range(N + b)]


# -- which batches go through COPY -----------------------------------------------------


def test_keys_scopes_and_small_batches_keep_the_statement(dsn, schema, copied) -> None:
    with gd.SyncClient(dsn, schema=schema) as client:
        assert len(client.insert_all([Plain] * (N - 1))) == N - 1
        keyed = [gd.Spec(Plain, unique_key=f"k{i % 10}") for i in range(N)]
        assert len(client.insert_all(keyed)) == 10  # duplicates dropped, as ever
        assert copied == []
        # one key (even the empty one) anywhere keeps the whole batch on the statement
        mixed = [*([Plain] * N), gd.Spec(Plain, unique_key=b"")]
        assert len(client.insert_all(mixed)) == N + 1
        assert client.insert_all([gd.Spec(Plain, unique_key=b"")] + [Plain] * N)[1:]
        assert client.insert_all([gd.Spec(Plain, unique_scope="done")] + [Plain] * N)
        assert copied == []
        assert len(client.insert_all([Plain] * N)) == N
        assert copied == [N]
        # a keyed batch after an unkeyed one, and the other way round
        again = [gd.Spec(Plain, unique_key=f"k{i}") for i in range(20)]
        assert len(client.insert_all(again)) == 10  # k0..k9 are still occupied
        assert len(client.insert_all([Plain] * (2 * N))) == 2 * N
        assert copied == [N, 2 * N]
    with psycopg.connect(dsn) as c:
        total = c.execute(
            sql.SQL("SELECT count(*), count(unique_key) FROM {}.gen_durable").format(
                sql.Identifier(schema)
            )
        ).fetchone()
    assert total == ((N - 1) + 10 + (N + 1) + N + (N + 1) + N + 10 + 2 * N, 21)


def test_bad_input_raises_before_anything_is_written(dsn, schema, copied) -> None:
    with gd.SyncClient(dsn, schema=schema) as client:
        batch: list[object] = [Plain] * (2 * N)
        batch[N + 5] = gd.Spec(Plain, priority=40_000)
        with pytest.raises(gd.ConfigurationError, match="priority"):
            client.insert_all(batch)
        batch[N + 5] = gd.Spec(Plain, state={"bad": float("nan")})
        with pytest.raises(gd.EncodingError):
            client.insert_all(batch)
    assert copied == []
    with psycopg.connect(dsn) as c:
        query = sql.SQL("SELECT count(*) FROM {}.gen_durable").format(sql.Identifier(schema))
        assert c.execute(query).fetchone() == (0,)


class Stamped(gd.Job, name="copy.stamped"):
    class State(BaseModel):
        token: str = Field(default_factory=lambda: uuid.uuid4().hex)

    async def perform(self, args: Any) -> None:
        return None


def test_a_repeated_item_is_encoded_as_each_one_on_its_own() -> None:
    """``[item] * n`` is encoded once and repeated, except for a machine whose state
    model may give every instance a value of its own."""
    spec = gd.Spec(Plain, queue="q", priority=3, schedule_in=5, state={"a": [1]})
    items: list[object] = [Plain] * 3 + [spec] * 2 + [Plain, spec, Stamped, Stamped, Stamped]
    got = build_insert(items)
    one_by_one = InsertRows.empty()
    for item in items:
        add_insert(one_by_one, *_machine_of(item))
    for name in (f.name for f in dataclasses.fields(InsertRows)):
        mine, theirs = getattr(got, name), getattr(one_by_one, name)
        if name == "state":
            assert mine[:7] == theirs[:7]
            assert len({*mine[7:], *theirs[7:]}) == 6  # a fresh token per instance
        else:
            assert mine == theirs, name
    assert got.queue[:7] == ["default"] * 3 + ["q", "q", "default", "q"]


# -- one unit: all rows or none ------------------------------------------------------


def _poison(dsn: str, schema: str, body: str) -> None:
    """A BEFORE INSERT trigger of the test's schema that runs ``body`` for the rows
    whose state carries ``poison``: the database refusing (or holding) one row."""
    s = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            sql.SQL(
                "CREATE FUNCTION {}.poison() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF NEW.state ? 'poison' THEN " + body + " END IF; RETURN NEW; END $$"
            ).format(s)
        )
        c.execute(
            sql.SQL(
                "CREATE TRIGGER poison BEFORE INSERT ON {}.gen_durable"
                " FOR EACH ROW EXECUTE FUNCTION {}.poison()"
            ).format(s, s)
        )


@pytest.mark.parametrize("size", [N - 1, 5 * N])
@pytest.mark.parametrize(
    ("body", "error", "sqlstate"),
    [
        ("RAISE EXCEPTION 'no' USING ERRCODE = 'check_violation';", gd.DatabaseError, "23514"),
        ("RAISE EXCEPTION 'x' USING ERRCODE = 'invalid_parameter_value';", gd.EncodingError, None),
    ],
)
async def test_a_refused_row_leaves_nothing_and_raises_the_statements_error(
    dsn, schema, conn, make_engine, copied, size, body, error, sqlstate
) -> None:
    _poison(dsn, schema, body)
    engine = make_engine(queues={})
    await engine.start()
    batch: list[object] = [Plain] * size
    batch[size - 3] = gd.Spec(Plain, state={"poison": True})
    with pytest.raises(error) as raised:
        await engine.insert_all(batch)
    assert copied == ([size] if size >= N else [])
    assert isinstance(raised.value, gd.GenDurableError)  # translated, not psycopg's own
    assert isinstance(raised.value.__cause__, psycopg.Error)
    assert not isinstance(raised.value.__cause__, gd.GenDurableError)
    if sqlstate is not None:
        assert isinstance(raised.value, gd.DatabaseError) and raised.value.sqlstate == sqlstate
    assert await count(conn, schema, "gen_durable") == 0
    # the pool is still usable, and so is the COPY
    assert len(await engine.insert_all([Plain] * N)) == N


async def test_a_call_cancelled_mid_copy_leaves_nothing(dsn, schema, conn, make_engine) -> None:
    """The COPY is held by the database on one row (a lock the test owns) while the
    call streams the rest; cancelling the call then writes none of them."""
    _poison(dsn, schema, "PERFORM pg_advisory_xact_lock(4242);")
    engine = make_engine(queues={})
    await engine.start()
    size = 200_000  # far more than the socket buffers hold: the writer blocks too
    batch: list[object] = [Plain] * size
    batch[100] = gd.Spec(Plain, state={"poison": True})
    async with await connect(dsn) as holder:
        await holder.execute("SELECT pg_advisory_lock(4242)")
        task = asyncio.create_task(engine.insert_all(batch))
        await wait_lock_waiters(conn, f'COPY "{schema}"', timeout=60)
        task.cancel()
        await holder.execute("SELECT pg_advisory_unlock(4242)")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)
    assert await count(conn, schema, "gen_durable") == 0
    assert len(await engine.insert_all([Plain] * N)) == N
    assert await count(conn, schema, "gen_durable") == N


# -- conn=: the caller's transaction ----------------------------------------------------


async def test_inside_a_callers_transaction_it_exists_iff_that_commits(
    dsn, schema, conn, make_engine, copied
) -> None:
    engine = make_engine(queues={})
    await engine.start()
    async with await connect(dsn) as mine:  # autocommit, an explicit transaction
        with pytest.raises(RuntimeError):
            async with mine.transaction():
                assert len(await engine.insert_all([Plain] * N, conn=mine)) == N
                raise RuntimeError("roll it back")
        assert await count(conn, schema, "gen_durable") == 0
        async with mine.transaction():
            await engine.insert_all([Plain] * N, conn=mine)
            assert await count(conn, schema, "gen_durable") == 0  # not before the commit
        assert await count(conn, schema, "gen_durable") == N
        await engine.insert_all([Plain] * N, conn=mine)  # autocommit, no transaction
        assert await count(conn, schema, "gen_durable") == 2 * N
    async with await connect(dsn, autocommit=False) as mine:  # an implicit transaction
        await engine.insert_all([Plain] * N, conn=mine)
        assert mine.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        await mine.rollback()
        assert await count(conn, schema, "gen_durable") == 2 * N
        await engine.insert_all([Plain] * N, conn=mine)
        await mine.commit()
    assert await count(conn, schema, "gen_durable") == 3 * N
    assert copied == [N] * 5


def test_sync_client_in_a_rolled_back_transaction_writes_nothing(dsn, schema, copied) -> None:
    with gd.SyncClient(dsn, schema=schema) as client, psycopg.connect(dsn) as mine:
        ids = client.insert_all([Plain] * N, conn=mine)
        assert len(ids) == N and ids == sorted(ids)
        mine.rollback()
        query = sql.SQL("SELECT count(*) FROM {}.gen_durable").format(sql.Identifier(schema))
        assert mine.execute(query).fetchone() == (0,)
        mine.rollback()
        ids = client.insert_all([Plain] * N, conn=mine)
        mine.commit()
        assert mine.execute(query).fetchone() == (N,)
    assert copied == [N, N]


async def test_an_aborted_callers_transaction_is_reported_as_by_the_statement(
    dsn, make_engine
) -> None:
    engine = make_engine(queues={})
    await engine.start()
    async with await connect(dsn, autocommit=False) as mine:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await mine.execute("SELECT 1 / 0")
        with pytest.raises(gd.DatabaseError, match="SQLSTATE 25P02"):
            await engine.insert_all([Plain] * N, conn=mine)
        await mine.rollback()


async def test_a_callers_connection_in_pipeline_mode_gets_the_statement(
    dsn, schema, conn, make_engine, copied
) -> None:
    """COPY cannot run in pipeline mode: the batch goes through the statement there."""
    engine = make_engine(queues={})
    await engine.start()
    async with await connect(dsn) as mine, mine.pipeline(), mine.transaction():
        ids = await engine.insert_all([Plain] * N, conn=mine)
    assert len(ids) == N and copied == []
    assert await count(conn, schema, "gen_durable") == N


# -- notifications ---------------------------------------------------------------------


async def test_listeners_are_nudged_once_per_queue_on_commit_only(
    dsn, schema, make_engine, copied
) -> None:
    _poison(dsn, schema, "RAISE EXCEPTION 'no' USING ERRCODE = 'check_violation';")
    engine = make_engine(queues={})
    await engine.start()
    seen: list[str] = []
    async with await connect(dsn) as listener:
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_of(schema))))

        async def collect() -> None:
            async for note in listener.notifies():
                seen.append(note.payload)

        reader = asyncio.create_task(collect())
        try:
            failing = [gd.Spec(Plain, queue="never")] * N + [
                gd.Spec(Plain, queue="never", state={"poison": 1})
            ]
            with pytest.raises(gd.DatabaseError):
                await engine.insert_all(failing)
            batch = [gd.Spec(Plain, queue=("qa", "qb", "qc")[i % 3]) for i in range(N)]
            await engine.insert_all(batch)
            await engine.insert_all([gd.Spec(Plain, queue="last")] * N)

            async def last_announced() -> bool:
                return "last" in seen

            await wait_for(last_announced)
        finally:
            reader.cancel()
    assert copied == [N + 1, N, N]
    # commit order: the failed batch would have been announced first
    assert seen == ["qa", "qb", "qc", "last"]
