"""Schema migrations against real PostgreSQL (SPEC §2, §16).

Schemas are compared through a dump of the catalog (columns with types, defaults,
identity and generation; indexes; constraints; enum labels; storage options; comments)
with the schema name normalised, so "the same schema" means the same DDL.
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import gen_durable as gd
from gen_durable._db import runner
from gen_durable._db.queries import CompleteBatch, Queries
from gen_durable._db.statements import migrations
from gen_durable._db.statements.migrations import lock_key

from .conftest import FAST, wait_for
from .sqlhelp import rows, wait_lock_waiters

LATEST = gd.LATEST_VERSION
# The module itself (the package attribute `gen_durable.migrate` is the function).
migrate_module = importlib.import_module("gen_durable.migrate")


def _name() -> str:
    return "m_" + uuid.uuid4().hex[:10]


@pytest.fixture
def fresh(dsn: str) -> Iterator[str]:
    """A schema name nobody has created yet; dropped afterwards if it was."""
    name = _name()
    yield name
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


_CATALOG = {
    "relations": """
        SELECT c.relname, c.relkind::text, coalesce(array_to_string(c.reloptions, ','), ''),
               coalesce(obj_description(c.oid, 'pg_class'), '')
        FROM pg_class c WHERE c.relnamespace = %(ns)s::regnamespace ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, coalesce(pg_get_expr(d.adbin, d.adrelid), ''),
               a.attidentity::text, a.attgenerated::text
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = %(ns)s::regnamespace AND c.relkind = 'r'
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %(ns)s ORDER BY 1""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype::text, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = %(ns)s::regnamespace ORDER BY 1, 2""",
    "types": """
        SELECT t.typname, t.typtype::text,
               coalesce((SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
                         FROM pg_enum e WHERE e.enumtypid = t.oid), '{}')::text
        FROM pg_type t WHERE t.typnamespace = %(ns)s::regnamespace ORDER BY 1""",
}


def catalog(dsn: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything gen_durable owns in ``schema``, with the schema name replaced by `S`."""
    quoted = '"' + schema.replace('"', '""') + '"'

    def norm(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(quoted + ".", "S.").replace(schema + ".", "S.")
        return value

    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        exists = c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if exists is None:
            return {}
        for part, query in _CATALOG.items():
            got = c.execute(query, {"ns": schema}).fetchall()
            out[part] = [tuple(norm(v) for v in r) for r in got]
    return out


def _comment(dsn: str, schema: str) -> str | None:
    with psycopg.connect(dsn) as c:
        row = c.execute(
            "SELECT obj_description(%s::regclass, 'pg_class')",
            (sql.Identifier(schema).as_string(c) + ".gen_durable",),
        ).fetchone()
    return None if row is None else row[0]


def _installed(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as c:
        return migrate_module.installed_version_sync(c, schema)


# -- up, down, versions ----------------------------------------------------------------


async def test_fresh_migrate_to_latest_and_version_in_the_table_comment(dsn, fresh) -> None:
    assert await gd.migrate(dsn, schema=fresh) == LATEST
    assert _installed(dsn, fresh) == LATEST
    assert _comment(dsn, fresh) == f"gen_durable schema version {LATEST}"
    cat = catalog(dsn, fresh)
    tables = {r[0] for r in cat["relations"] if r[1] == "r"}
    # Flow control (SPEC §23) keeps its configuration and buckets beside the table.
    assert tables >= {"gen_durable", "signals", "rate_limits", "rate_buckets", "schedules"}
    assert {r[0] for r in cat["indexes"]} >= {
        "gen_durable_pick",
        "gen_durable_lease",
        "gen_durable_unique",
        "gen_durable_parent",
        "gen_durable_partition_active",
        "signals_target",
    }
    assert (
        "durable_status",
        "e",
        "{runnable,executing,awaiting_signal,awaiting_children,done,failed,cancelled}",
    ) in cat["types"]
    generated = [r for r in cat["columns"] if r[2] == "unique_guard"]
    assert generated[0][7] == ""  # a plain column since version 4 (SPEC §10, v2)


async def test_migrating_twice_is_a_no_op(dsn, fresh) -> None:
    await gd.migrate(dsn, schema=fresh)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            sql.SQL("INSERT INTO {}.gen_durable (fsm, step) VALUES ('keep', 'me')").format(
                sql.Identifier(fresh)
            )
        )
    before = catalog(dsn, fresh)
    oid_query = "SELECT %s::regclass::oid"
    with psycopg.connect(dsn) as c:
        oid = c.execute(oid_query, (f"{fresh}.gen_durable",)).fetchone()
    assert await gd.migrate(dsn, schema=fresh) == LATEST
    assert gd.migrate_sync(dsn, schema=fresh) == LATEST
    assert catalog(dsn, fresh) == before
    with psycopg.connect(dsn) as c:
        assert c.execute(oid_query, (f"{fresh}.gen_durable",)).fetchone() == oid
        kept = c.execute(sql.SQL("SELECT fsm FROM {}.gen_durable").format(sql.Identifier(fresh)))
        assert kept.fetchall() == [("keep",)]


async def test_only_missing_increments_run(dsn, fresh, monkeypatch) -> None:
    await gd.migrate(dsn, schema=fresh, version=LATEST)
    ran: list[tuple[int, bool]] = []
    real = migrate_module.migration_sql

    def spy(version: int, *, schema: str = "public", down: bool = False) -> str:
        ran.append((version, down))
        return real(version, schema=schema, down=down)

    monkeypatch.setattr(migrate_module, "migration_sql", spy)
    await gd.migrate(dsn, schema=fresh)
    assert ran == []
    await gd.migrate_down(dsn, schema=fresh, version=0)
    assert ran == [(v, True) for v in range(LATEST, 0, -1)]
    ran.clear()
    await gd.migrate(dsn, schema=fresh)
    assert ran == [(v, False) for v in range(1, LATEST + 1)]


async def test_migrate_down_to_zero_removes_everything(dsn, fresh) -> None:
    await gd.migrate(dsn, schema=fresh)
    assert await gd.migrate_down(dsn, schema=fresh) == 0
    cat = catalog(dsn, fresh)
    assert cat["relations"] == [] and cat["types"] == [] and cat["constraints"] == []
    assert _installed(dsn, fresh) == 0
    # And up again from nothing.
    assert await gd.migrate(dsn, schema=fresh) == LATEST


async def test_version_argument_and_direction(dsn, fresh) -> None:
    assert await gd.migrate(dsn, schema=fresh, version=0) == 0
    assert _installed(dsn, fresh) == 0
    assert await gd.migrate(dsn, schema=fresh, version=LATEST) == LATEST
    with pytest.raises(gd.SchemaError, match="migrate_down"):
        await gd.migrate(dsn, schema=fresh, version=0)
    with pytest.raises(gd.SchemaError):
        await gd.migrate_down(dsn, schema=fresh, version=LATEST + 1)
    assert _installed(dsn, fresh) == LATEST


@pytest.mark.parametrize("version", [LATEST + 1, -1, 99, True, "1"])
async def test_unknown_version_is_refused_and_changes_nothing(dsn, fresh, version) -> None:
    with pytest.raises(gd.SchemaError):
        await gd.migrate(dsn, schema=fresh, version=version)
    assert catalog(dsn, fresh) == {}  # not even the schema was created
    await gd.migrate(dsn, schema=fresh)
    before = catalog(dsn, fresh)
    with pytest.raises(gd.SchemaError):
        await gd.migrate(dsn, schema=fresh, version=version)
    with pytest.raises(gd.SchemaError):
        await gd.migrate_down(dsn, schema=fresh, version=version)
    assert catalog(dsn, fresh) == before


@pytest.mark.parametrize("version", [0, LATEST + 1, -1])
def test_migration_sql_of_an_unknown_version_is_refused(version) -> None:
    with pytest.raises(gd.SchemaError):
        gd.migration_sql(version)


async def test_newer_version_in_the_comment_is_refused(dsn, fresh) -> None:
    await gd.migrate(dsn, schema=fresh)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            sql.SQL("COMMENT ON TABLE {}.gen_durable IS {}").format(
                sql.Identifier(fresh), sql.Literal(f"gen_durable schema version {LATEST + 5}")
            )
        )
    before = catalog(dsn, fresh)
    with pytest.raises(gd.SchemaError, match="newer"):
        await gd.migrate(dsn, schema=fresh)
    with pytest.raises(gd.SchemaError, match="newer"):
        await gd.migrate_down(dsn, schema=fresh)
    assert catalog(dsn, fresh) == before


async def test_accepts_dsn_async_and_sync_connections(dsn, fresh) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        assert await gd.migrate(aconn, schema=fresh) == LATEST
        assert await migrate_module.installed_version(aconn, fresh) == LATEST
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert await gd.migrate_down(conn, schema=fresh) == 0
        assert gd.migrate_sync(conn, schema=fresh) == LATEST
        assert gd.migrate_sync(conn, schema=fresh, version=0, down=True) == 0


async def test_every_increment_round_trips_one_step_with_rows_in_place(dsn, fresh) -> None:
    """Up one version and back down one, at every version: the catalog returns to what
    it was and the stored rows (ids included) stay. Column positions are left out of
    the comparison: a column dropped and added again gets a new one."""
    s = sql.Identifier(fresh)

    def catalog_by_name() -> dict[str, list[tuple[Any, ...]]]:
        cat = catalog(dsn, fresh)
        cat["columns"] = sorted((r[0], *r[2:]) for r in cat["columns"])
        # PostgreSQL cannot drop an enum value: the control increment's down script
        # leaves `cancelled` in the type, unused (SPEC §21; schema.CONTROL_DOWN).
        cat["types"] = [(n, k, labels.replace(",cancelled}", "}")) for n, k, labels in cat["types"]]
        return cat

    seen: dict[int, dict[str, list[tuple[Any, ...]]]] = {}
    for v in range(1, LATEST + 1):
        await gd.migrate(dsn, schema=fresh, version=v)
        if v == 1:
            keep = sql.SQL("INSERT INTO {}.gen_durable (fsm, step) VALUES ('keep', 'me')")
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(keep.format(s))
        seen[v] = catalog_by_name()
    for v in range(LATEST, 1, -1):
        assert await gd.migrate_down(dsn, schema=fresh, version=v - 1) == v - 1
        assert catalog_by_name() == seen[v - 1], f"down from {v}"
        assert await gd.migrate(dsn, schema=fresh, version=v) == v
        assert catalog_by_name() == seen[v], f"up to {v}"
        await gd.migrate_down(dsn, schema=fresh, version=v - 1)
    with psycopg.connect(dsn) as c:
        got = c.execute(sql.SQL("SELECT id, fsm, step FROM {}.gen_durable").format(s)).fetchall()
    assert got == [(1, "keep", "me")]


class Upgraded(gd.FSM):
    """Runs the rows a version-2 database had in flight."""

    async def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
        if step == "wait" and not ctx.signals:
            return gd.Await("go", ctx.state)
        return gd.Done({"step": step, "attempt": ctx.attempt, "childs": len(ctx.childs)})


async def test_version_2_rows_in_flight_run_after_the_upgrade(dsn, fresh) -> None:
    """Rows at v2 in every status migrate up in place and the engine runs them: the
    new columns arrive with their defaults, nothing is rewritten or lost (SPEC §16)."""
    await gd.migrate(dsn, schema=fresh, version=2)
    name = Upgraded.__gd_name__
    s = sql.Identifier(fresh)
    with psycopg.connect(dsn, autocommit=True) as c:

        def add(columns: str, values: str, *params: Any) -> int:
            query = sql.SQL(
                "INSERT INTO {}.gen_durable (fsm, " + columns + ") VALUES (%s, " + values + ")"
                " RETURNING id"
            ).format(s)
            row = c.execute(query, (name, *params)).fetchone()
            assert row is not None
            return int(row[0])

        runnable = add("step", "'start'")
        expired = add(
            "step, status, locked_by, lease_expires_at",
            "'start', 'executing', 'gone:1', now() - interval '1 second'",
        )
        parked = add("step, status, awaits", "'wait', 'awaiting_signal', 'go'")
        parent = add("step, status, children_pending", "'join', 'awaiting_children', 1")
        child = add("step, parent_id", "'start', %s", parent)
        done = add("step, status, result", "'start', 'done', %s::jsonb", '{"old": true}')
        failed = add("step, status, last_error", "'start', 'failed', 'old error'")
    assert await gd.migrate(dsn, schema=fresh) == LATEST
    with psycopg.connect(dsn) as c:
        defaults = c.execute(
            sql.SQL("SELECT DISTINCT crash_count, errors FROM {}.gen_durable").format(s)
        ).fetchall()
    assert defaults == [(0, [])]
    engine = gd.Engine(dsn, schema=fresh, fsms=[Upgraded], **{**FAST, "reap_interval": 0.1})
    async with engine:
        await wait_for(lambda: _statuses(engine, parked, "awaiting_signal"))
        assert await engine.signal(parked, "go") is True
        for iid in (runnable, expired, parked, child, parent):
            await wait_for(lambda iid=iid: _statuses(engine, iid, "done"), timeout=30)
        got = {iid: await engine.get(iid) for iid in (expired, parent, done, failed)}
    assert got[expired] and got[parent] and got[done] and got[failed]
    assert got[expired].result == {"step": "start", "attempt": 1, "childs": 0}
    # The reaper counted the expiry in the new columns; the Done reset the count.
    assert got[expired].crash_count == 0
    assert [e["type"] for e in got[expired].errors] == ["LeaseExpired"]
    assert got[parent].result == {"step": "join", "attempt": 0, "childs": 1}
    assert (got[done].status, got[done].result) == ("done", {"old": True})
    assert (got[failed].status, got[failed].last_error) == ("failed", "old error")


async def test_version_3_keyed_rows_in_flight_keep_their_guards_and_run(dsn, fresh) -> None:
    """Version 4 turns the generated `unique_guard` into a plain column in place: the
    values stay, the unique index stays, and keyed rows in flight run to the end,
    freeing (or, with `done` in the scope, keeping) their keys (SPEC §10 v2, §16)."""
    await gd.migrate(dsn, schema=fresh, version=3)
    s = sql.Identifier(fresh)
    live = "{runnable,executing,awaiting_signal,awaiting_children}"
    kept = "{runnable,executing,awaiting_signal,awaiting_children,done}"
    with psycopg.connect(dsn, autocommit=True) as c:

        def add(key: str, scope: str, columns: str = "", values: str = "") -> int:
            query = sql.SQL(
                "INSERT INTO {}.gen_durable (fsm, step, unique_key, unique_scope" + columns + ")"
                " VALUES (%s, 'start', %s, %s" + values + ") RETURNING id"
            ).format(s)
            row = c.execute(query, (Upgraded.__gd_name__, key.encode(), scope)).fetchone()
            assert row is not None
            return int(row[0])

        runnable = add("a", live)
        expired = add(
            "b",
            live,
            ", status, locked_by, lease_expires_at",
            ", 'executing', 'gone:1', now() - interval '1 second'",
        )
        parked = add("c", kept, ", status, awaits", ", 'awaiting_signal', 'go'")
        done = add("d", kept, ", status", ", 'done'")
        freed = add("e", live, ", status", ", 'done'")
        guards = "SELECT id, unique_guard FROM {}.gen_durable ORDER BY id"
        before = c.execute(sql.SQL(guards).format(s)).fetchall()
    assert [g for _, g in before] == [b"a", b"b", b"c", b"d", None]
    assert await gd.migrate(dsn, schema=fresh) == LATEST
    with psycopg.connect(dsn) as c:
        assert c.execute(sql.SQL(guards).format(s)).fetchall() == before
    engine = gd.Engine(dsn, schema=fresh, fsms=[Upgraded], **{**FAST, "reap_interval": 0.1})
    async with engine:
        with pytest.raises(gd.Duplicate):
            await engine.insert(Upgraded, unique_key="d")
        await wait_for(lambda: _statuses(engine, parked, "awaiting_signal"))
        assert await engine.signal(parked, "go") is True
        for iid in (runnable, expired, parked):
            await wait_for(lambda iid=iid: _statuses(engine, iid, "done"), timeout=30)
        got = {iid: await engine.get(iid) for iid in (runnable, expired, parked, done, freed)}
        again = await engine.insert(Upgraded, unique_key="a")
        await wait_for(lambda: _statuses(engine, again, "done"))
    assert {i: g.unique_guard for i, g in got.items() if g} == {
        runnable: None,
        expired: None,
        parked: b"c",
        done: b"d",
        freed: None,
    }


async def _statuses(engine: gd.Engine, iid: int, status: str) -> bool:
    inst = await engine.get(iid)
    return inst is not None and inst.status == status


# -- the canonical schema ------------------------------------------------------------


async def test_canonical_schema_equals_replaying_all_migrations(dsn, fresh) -> None:
    other = _name()
    try:
        await gd.migrate(dsn, schema=fresh)
        # Step by step up, all the way down, and up again.
        for v in range(1, LATEST + 1):
            await gd.migrate(dsn, schema=other, version=v)
        await gd.migrate_down(dsn, schema=other, version=0)
        await gd.migrate(dsn, schema=other)
        assert catalog(dsn, other) == catalog(dsn, fresh)
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other)))


async def test_migration_sql_applied_by_hand_is_recognised_as_current(dsn, fresh) -> None:
    reference = _name()
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            for v in range(1, LATEST + 1):
                c.execute(gd.migration_sql(v, schema=fresh).encode())
        assert _installed(dsn, fresh) == LATEST
        assert await gd.migrate(dsn, schema=fresh) == LATEST
        await gd.migrate(dsn, schema=reference)
        assert catalog(dsn, fresh) == catalog(dsn, reference)
        # The down text, by hand, removes it all again.
        with psycopg.connect(dsn, autocommit=True) as c:
            for v in range(LATEST, 0, -1):
                c.execute(gd.migration_sql(v, schema=fresh, down=True).encode())
        assert catalog(dsn, fresh)["relations"] == []
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(reference)))


# -- concurrency -----------------------------------------------------------------------


async def test_concurrent_migrators_leave_one_correct_schema(dsn, fresh) -> None:
    """Three migrators of a fresh schema are queued behind the migration lock (held
    here), then released together: one migrates, the others find it current."""
    reference = _name()
    try:
        await gd.migrate(dsn, schema=reference)
        async with (
            await psycopg.AsyncConnection.connect(dsn) as gate,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as observer,
        ):
            await runner.fetch(gate, migrations.LOCK.bind(fresh, {"key": lock_key(fresh)}))
            runs = [asyncio.create_task(gd.migrate(dsn, schema=fresh)) for _ in range(3)]

            # The key is a parameter: the waiters' query text names the lock, not the schema.
            await wait_lock_waiters(observer, "pg_advisory_xact_lock", 3)
            assert catalog(dsn, fresh) == {}
            await gate.commit()
        assert await asyncio.gather(*runs) == [LATEST] * 3
        assert catalog(dsn, fresh) == catalog(dsn, reference)
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(reference)))


async def test_unsynchronised_concurrent_migrators_all_succeed(dsn) -> None:
    names = [_name() for _ in range(3)]
    try:
        for name in names:
            got = await asyncio.gather(*(gd.migrate(dsn, schema=name) for _ in range(4)))
            assert got == [LATEST] * 4
            assert _installed(dsn, name) == LATEST
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            for name in names:
                c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


# -- a foreign table (bad input) -----------------------------------------------------


@pytest.mark.parametrize("comment", [None, "orders of the billing team"])
async def test_foreign_gen_durable_table_is_refused_untouched(dsn, fresh, comment) -> None:
    s = sql.Identifier(fresh)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(s))
        c.execute(sql.SQL("CREATE TABLE {}.gen_durable (id int, note text)").format(s))
        c.execute(sql.SQL("INSERT INTO {}.gen_durable VALUES (1, 'theirs')").format(s))
        if comment:
            c.execute(
                sql.SQL("COMMENT ON TABLE {}.gen_durable IS {}").format(s, sql.Literal(comment))
            )
    before = catalog(dsn, fresh)
    with pytest.raises(gd.SchemaError, match="not created by gen_durable"):
        await gd.migrate(dsn, schema=fresh)
    with pytest.raises(gd.SchemaError, match="not created by gen_durable"):
        gd.migrate_sync(dsn, schema=fresh)
    with pytest.raises(gd.SchemaError, match="not created by gen_durable"):
        await gd.migrate_down(dsn, schema=fresh)
    assert catalog(dsn, fresh) == before
    assert [r[0] for r in before["relations"]] == ["gen_durable"]
    with psycopg.connect(dsn) as c:
        got = c.execute(sql.SQL("SELECT id, note FROM {}.gen_durable").format(s)).fetchall()
    assert got == [(1, "theirs")]


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE {s}.signals (id int, body text)",
        "CREATE TYPE {s}.durable_status AS ENUM ('open', 'closed')",
        "CREATE TABLE {s}.jobs (id int); CREATE INDEX gen_durable_pick ON {s}.jobs (id)",
    ],
)
async def test_an_object_holding_one_of_our_names_is_refused_untouched(dsn, fresh, ddl) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(fresh)))
        c.execute(ddl.format(s=fresh).encode())
    before = catalog(dsn, fresh)
    with pytest.raises(gd.SchemaError, match="nothing was changed") as err:
        await gd.migrate(dsn, schema=fresh)
    assert isinstance(err.value.__cause__, psycopg.Error)
    with pytest.raises(gd.SchemaError, match="nothing was changed"):
        gd.migrate_sync(dsn, schema=fresh)
    assert catalog(dsn, fresh) == before
    assert _installed(dsn, fresh) == 0


# -- schemas end to end ----------------------------------------------------------------


class Hop(gd.FSM):
    class State(gd.State):
        hops: int = 0

    async def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
        if ctx.state.hops < 2:
            return gd.Next("start", ctx.state.model_copy(update={"hops": ctx.state.hops + 1}))
        return gd.Done({"hops": ctx.state.hops})


async def _every_statement(conn: psycopg.AsyncConnection[Any], q: Queries) -> None:
    """Run every statement of the SQL layer once, on a connection with an empty
    search_path: an unqualified name anywhere would fail here."""

    async def run(stmt: Any) -> list[Any]:
        cur = await conn.execute(stmt.query, stmt.params)
        return await cur.fetchall()

    ids = (await run(q.insert(rows({}, {}, {"partition_key": "p"}))))[0][0]
    picked = await run(q.pick("default", 10, "n:1", 30))
    assert len(picked) == 3
    assert len(await run(q.heartbeat(ids, ["n:1"] * 3, 30))) == 3
    await run(q.signal(ids[0], "go", "{}", "d"))
    assert len(await run(q.inbox(ids[0]))) == 1
    await run(q.lock_claimed([ids[0]], ["n:1"]))
    batch = CompleteBatch.empty()
    batch.add(id=ids[0], token="n:1", kind="await", awaits="other")
    assert len(await run(q.complete(batch))) == 1
    await run(q.release([ids[1]], ["n:1"]))
    got = await run(
        q.schedule_childs(
            parent_id=ids[2],
            token="n:1",
            next_step="join",
            state=None,
            consume=None,
            seen=[],
            children=rows({"parent_id": ids[2]}),
        )
    )
    assert got[0][1] == "awaiting_children"
    assert len(await run(q.children(ids[2]))) == 1
    assert (await run(q.get(ids[2])))[0][0] == ids[2]
    await conn.execute(
        sql.SQL(
            "UPDATE {}.gen_durable SET lease_expires_at = now() - interval '1s' "
            "WHERE status = 'executing'"
        ).format(sql.Identifier(q.schema))
    )
    await run(q.reap(10, crash_limit=10))


async def test_odd_schema_name_works_end_to_end_without_search_path(dsn, conn) -> None:
    odd = f'Odd "Name" {uuid.uuid4().hex[:6]} ß'
    try:
        assert await gd.migrate(dsn, schema=odd) == LATEST
        empty_path = make_conninfo(dsn, options="-c search_path=")
        async with await psycopg.AsyncConnection.connect(empty_path, autocommit=True) as c:
            await _every_statement(c, Queries(odd))
        engine = gd.Engine(empty_path, schema=odd, queues={"default": 2}, **FAST)
        async with engine:
            iid = await engine.insert(Hop)

            async def done() -> Any:
                inst = await engine.get(iid)
                return inst if inst is not None and inst.status == "done" else None

            inst = await wait_for(done, timeout=30)
        assert inst.result == {"hops": 2}
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(odd)))


async def test_public_schema_of_a_fresh_database(dsn) -> None:
    dbname = "gd_" + uuid.uuid4().hex[:10]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        db = make_conninfo(dsn, dbname=dbname)
        assert await gd.migrate(db) == LATEST
        assert catalog(db, "public")["relations"] != []
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as c:
            await _every_statement(c, Queries())
        assert await gd.migrate(db) == LATEST
        assert await gd.migrate_down(db) == 0
        cat = catalog(db, "public")
        assert cat["relations"] == [] and cat["types"] == []
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
