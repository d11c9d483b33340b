"""``gen-durable limits`` and ``gen-durable schedules`` (SPEC §23), in-process."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal

import gen_durable as gd
from gen_durable._db import runner
from gen_durable._db.queries import Queries
from gen_durable._runtime.cron import ScheduleService

from . import test_cli
from .cluster.harness import wait_until
from .test_cli import one_line_error
from .test_engine_flow import Tick

# The command-line fixtures, shared with the main CLI tests.
cli, db, on = test_cli.cli, test_cli.db, test_cli.on


def test_limits_set_list_delete(cli, on, db) -> None:
    res = cli("limits", "set", "partner-api", "20", "--burst", "5", *on)
    assert res.code == 0 and "partner-api" in res.out, res
    assert db("SELECT name, rate, per, burst FROM S.rate_limits") == [
        ("partner-api", 20.0, 1.0, 5.0)
    ]
    res = cli("limits", "list", "--json", *on)
    assert [r["name"] for r in json.loads(res.out)] == ["partner-api"]
    assert cli("limits", *on).out.count("partner-api") == 1  # bare `limits` lists
    assert cli("limits", "delete", "partner-api", *on).code == 0
    assert db("SELECT count(*) FROM S.rate_limits") == [(0,)]
    one_line_error(cli("limits", "delete", "partner-api", *on), 1, "no rate limit")


def test_limits_set_refuses_bad_values_and_writes_nothing(cli, on, db) -> None:
    one_line_error(cli("limits", "set", "api", "0", *on), 1, "rate")
    one_line_error(cli("limits", "set", "a:b", "1", *on), 1, "name")
    one_line_error(cli("limits", "set", "api", "1", "--burst", "0.5", *on), 1, "burst")
    assert db("SELECT count(*) FROM S.rate_limits") == [(0,)]


def test_schedules_lists_what_nodes_registered_with_the_next_slot(cli, on, dsn, schema) -> None:
    assert "no schedules" in cli("schedules", *on).out
    nightly = gd.Schedule("nightly", Tick, "30 2 * * *", timezone="Europe/Paris")

    async def register() -> None:
        engine = gd.Engine(dsn, schema=schema, queues={})
        await engine.start()
        try:
            pool = engine._require_pool()

            async def fetch(stmt):  # the client pool stands in for a node's
                return await runner.fetch(pool, stmt, raw=True)

            await ScheduleService([nightly], Queries(schema), fetch).tick(
                nightly, dt.datetime.now(dt.UTC)
            )
        finally:
            await engine.stop()

    asyncio.run(register())
    rows = json.loads(cli("schedules", "--json", *on).out)
    assert [(r["name"], r["cron"], r["timezone"]) for r in rows] == [
        ("nightly", "30 2 * * *", "Europe/Paris")
    ]
    assert rows[0]["next_slot"] > rows[0]["last_slot"]
    assert "nightly" in cli("schedules", *on).out


def test_insert_takes_partition_limit_and_rate_limit(cli, on, db) -> None:
    res = cli(
        "insert", "tests.cli_machines.Greeter", "--app", "tests.cli_machines",
        "--state", '{"name": "x"}', "--partition-key", "t", "--partition-limit", "3",
        "--rate-limit", "api:t", *on,
    )  # fmt: skip
    assert res.code == 0, res
    assert db("SELECT partition_key, partition_limit, rate_limit FROM S.gen_durable") == [
        ("t", 3, "api:t")
    ]
    bad = cli(
        "insert", "tests.cli_machines.Greeter", "--app", "tests.cli_machines",
        "--state", '{"name": "x"}', "--partition-limit", "0", *on,
    )  # fmt: skip
    one_line_error(bad, 1, "partition_limit")
    assert db("SELECT count(*) FROM S.gen_durable") == [(1,)]


def test_worker_runs_the_schedules_it_is_given(cli, on, db) -> None:
    """``gen-durable worker --schedules MODULE:NAME``: the node inserts each due slot
    under its cron key and runs it; the CLI lists the schedule it registered."""
    worker = test_cli.start_worker(
        "--app", test_cli.APP, "--schedules", "tests.cli_machines:EVERY_SECOND",
        *test_cli.WORKER_FAST, *on,
    )  # fmt: skip
    log = test_cli.StderrLines(worker)

    def ticks() -> list[tuple[str, str]]:
        return db(
            "SELECT convert_from(unique_key, 'UTF8'), status::text FROM S.gen_durable "
            "WHERE fsm = 'tests.cli_machines.Tick' ORDER BY id"
        )

    try:
        wait_until(lambda: sum(s == "done" for _, s in ticks()) >= 2, timeout=30)
        listed = json.loads(cli("schedules", "--json", *on).out)
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=30)
    err = log.close()
    assert worker.returncode == 0, err
    assert "schedules: cli-every-second (* * * * * *)" in err
    keys = [key for key, _ in ticks()]
    assert all(key.startswith("cron:cli-every-second:") for key in keys), keys
    assert len(set(keys)) == len(keys)  # one instance per slot
    assert [row["name"] for row in listed] == ["cli-every-second"]


def test_worker_refuses_schedules_that_are_not_schedules(cli, on) -> None:
    for spec, needle in (
        ("tests.cli_machines", "MODULE:NAME"),
        ("tests.cli_machines:NOT_SCHEDULES", "not gd.Schedule"),
        ("tests.cli_machines:MISSING", "has no 'MISSING'"),
        ("tests.cli_machines:Tick", "expected a gd.Schedule"),
    ):
        res = cli("worker", "--app", test_cli.APP, "--schedules", spec, *on)
        assert res.code == 2 and needle in res.err, (spec, res)
    res = cli("worker", "--schedules", "tests.no_such_module:X", *on)
    assert res.code == 1 and "cannot import 'tests.no_such_module'" in res.err, res
