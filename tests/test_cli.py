"""The ``gen-durable`` command line, run for real: ``python -m gen_durable`` subprocesses
against the test database. Every failure case checks the contract of the CLI — one line
on stderr, a non-zero exit code — and that nothing was written."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

import gen_durable as gd
from gen_durable.cli import main

from .cluster.harness import wait_until

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.cli_machines"
GREETER = "tests.cli_machines.Greeter"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GEN_DURABLE_DSN", "DATABASE_URL")}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def gdcli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    """The real command, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "gen_durable", *args],
        cwd=ROOT,
        env=env or cli_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """The same entry point in-process: the supplementary cases, without paying for a
    Python start-up each (the subprocess tests cover the real command)."""
    monkeypatch.delenv("GEN_DURABLE_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)

    def run(*args: str) -> Result:
        code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def one_line_error(res: Result, code: int, *needles: str) -> str:
    """The failure contract: exit code, exactly one line on stderr, no traceback."""
    assert res.code == code, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert "Traceback" not in res.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def db(dsn: str, schema: str) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    """Run a query on the test schema and return its rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        def query(sql: str, *params: Any) -> list[tuple[Any, ...]]:
            cur = conn.execute(sql.replace("S.", f'"{schema}".'), params)
            return cur.fetchall() if cur.description else []

        yield query


@pytest.fixture
def on(dsn: str, schema: str) -> list[str]:
    """The connection options for the test schema."""
    return ["--dsn", dsn, "--schema", schema]


def snapshot(db: Callable[..., list[tuple[Any, ...]]]) -> tuple[Any, ...]:
    return (
        db("SELECT id, status::text, state, step, attempt, updated_at FROM S.gen_durable"
           " ORDER BY id"),
        db("SELECT id, target_id, name, payload, dedup_key FROM S.signals ORDER BY id"),
    )  # fmt: skip


def insert_greeter(
    cli: Callable[..., Result], on: list[str], name: str = "ada", *extra: str
) -> int:
    res = cli("insert", GREETER, "--app", APP, "--state", json.dumps({"name": name}), *on, *extra)
    assert res.code == 0, res
    return int(res.out.strip())


# -- help, usage, connection -----------------------------------------------------------


def test_help_everywhere_and_usage_errors_exit_2(cli: Callable[..., Result]) -> None:
    for cmd in ([], ["migrate"], ["migrate", "sql"], ["worker"], ["insert"], ["signal"],
                ["show"], ["status"], ["demo"]):  # fmt: skip
        res = cli(*cmd, "--help")
        assert res.code == 0, res
        assert "usage: gen-durable" in res.out
    one_line_error(cli("frobnicate"), 2, "invalid choice")
    one_line_error(cli("worker", "--queue", "default=lots"), 2, "NAME=CONCURRENCY")
    for empty in ("", "=3"):
        one_line_error(cli("worker", "--queue", empty), 2,
                       f"--queue: a queue name must not be empty, not {empty!r}")  # fmt: skip
    one_line_error(cli("worker", "--lease-ttl", "1", "--dsn", "postgresql://x/y"), 2,
                   "heartbeat_interval")  # fmt: skip
    one_line_error(cli("worker", "--crash-limit", "0", "--dsn", "postgresql://x/y"), 2,
                   "crash_limit must be an int >= 1")  # fmt: skip
    one_line_error(cli("status"), 2, "no database configured", "GEN_DURABLE_DSN")


def test_dsn_from_environment(dsn: str, schema: str) -> None:
    res = gdcli("migrate", "status", "--schema", schema, env=cli_env(DATABASE_URL=dsn))
    assert res.code == 0, res
    latest = gd.LATEST_VERSION
    assert res.out == (
        f"schema {schema!r}: installed version {latest}, latest {latest} (up to date)\n"
    )


def test_bad_dsn_is_one_clear_line(cli: Callable[..., Result]) -> None:
    bad = "postgresql://postgres@127.0.0.1:1/test"
    one_line_error(gdcli("status", "--dsn", bad), 1, "gen-durable: error: cannot connect")
    for cmd in (["migrate"], ["show", "1"], ["insert", GREETER, "--app", APP]):
        one_line_error(cli(*cmd, "--dsn", bad), 1, "gen-durable: error: cannot connect")
    res = cli("status", "--dsn", bad, "-v")
    assert res.code == 1
    assert "Traceback" in res.err  # -v asks for the details


# -- migrate ---------------------------------------------------------------------------


def test_migrate_up_status_down_and_unknown_version(dsn: str, cli: Callable[..., Result]) -> None:
    schema = "t_cli_" + uuid.uuid4().hex[:10]
    on = ["--dsn", dsn, "--schema", schema]

    def version() -> Any:
        res = cli("migrate", "status", "--json", *on)
        assert res.code == 0, res
        return json.loads(res.out)

    latest = gd.LATEST_VERSION
    try:
        assert version() == {"schema": schema, "installed": 0, "latest": latest, "pending": latest}
        res = gdcli("migrate", "--json", *on)
        assert res.code == 0, res
        assert json.loads(res.out) == {"schema": schema, "from": 0, "to": latest, "latest": latest}
        assert f"already at version {latest}" in cli("migrate", *on).out
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{schema}".gen_durable (fsm, step) VALUES (%s, %s)', ("x", "start")
            )
        beyond = str(latest + 1)
        one_line_error(gdcli("migrate", "--to", beyond, *on), 1, f"unknown schema version {beyond}")
        beyond = str(latest + 1)
        one_line_error(
            cli("migrate", "--down", "--to", beyond, *on), 1, f"unknown schema version {beyond}"
        )
        one_line_error(cli("migrate", "--to", "0", *on), 1, "add --down")
        assert version()["installed"] == latest
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(f'SELECT count(*) FROM "{schema}".gen_durable').fetchone() == (1,)
            conn.execute(
                f'INSERT INTO "{schema}".signals (target_id, name)'
                f" SELECT id, 'go' FROM \"{schema}\".gen_durable"
            )
        for cmd in (["migrate", "--down"], ["migrate", "--down", "--to", "0"]):
            one_line_error(
                gdcli(*cmd, *on),
                1,
                f"schema {schema!r} holds 1 instance row(s) and 1 signal(s)",
                "Nothing was dropped: pass --yes",
            )
        assert version()["installed"] == latest
        res = cli("migrate", "--down", "--yes", *on)
        assert res.code == 0, res
        assert f"from version {latest} to 0" in res.out
        assert version()["installed"] == 0
        assert cli("migrate", "--to", "1", *on).code == 0
        assert version()["installed"] == 1
        assert cli("migrate", *on).code == 0  # only the missing increments run
        assert version()["installed"] == latest
        res = cli("migrate", "--down", *on)  # empty tables: no --yes needed
        assert res.code == 0, res
        assert version()["installed"] == 0
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_migrate_sql_prints_the_ddl_without_a_database(cli: Callable[..., Result]) -> None:
    res = gdcli("migrate", "sql", "--schema", "shop")
    assert res.code == 0, res
    assert res.out == "".join(
        f"-- gen_durable schema version {v} (up)\n"
        + gd.migration_sql(v, schema="shop").rstrip()
        + "\n\n"
        for v in range(1, gd.LATEST_VERSION + 1)
    )
    down = cli("migrate", "sql", "--version", "1", "--down")
    assert 'DROP TABLE IF EXISTS "public".gen_durable' in down.out
    beyond = str(gd.LATEST_VERSION + 1)
    one_line_error(
        cli("migrate", "sql", "--version", beyond), 1, f"unknown schema version {beyond}"
    )


def test_commands_on_an_unmigrated_schema_say_how_to_fix_it(
    dsn: str, cli: Callable[..., Result]
) -> None:
    missing = ["--dsn", dsn, "--schema", "t_nothing_" + uuid.uuid4().hex[:8]]
    for cmd in (["status"], ["show", "1"], ["signal", "1", "go"]):
        one_line_error(cli(*cmd, *missing), 1, "has no gen_durable tables", "gen-durable migrate")


# -- insert / signal / show / status ---------------------------------------------------


def test_insert_prints_the_id_and_stores_the_state(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    first = insert_greeter(gdcli, on, "ada")
    res = cli(
        "insert",
        "tests.cli_machines:Echo",
        "--args",
        '{"n": 1}',
        "--queue",
        "other",
        "--priority",
        "-3",
        "--partition-key",
        "k1",
        "--unique-key",
        "u1",
        "--schedule-in",
        "3600",
        "--json",
        *on,
    )
    assert res.code == 0, res
    out = json.loads(res.out)
    assert out == {"id": out["id"], "fsm": "tests.cli_machines.Echo", "version": 1}
    rows = db(
        "SELECT id, fsm, state, queue, priority, partition_key, unique_key,"
        " eligible_at > now() + interval '50 minutes' FROM S.gen_durable ORDER BY id"
    )
    assert rows == [
        (first, GREETER, {"name": "ada"}, "default", 0, None, None, False),
        (out["id"], "tests.cli_machines.Echo", {"n": 1}, "other", -3, "k1", b"u1", True),
    ]


def test_insert_refusals_write_nothing(
    on: list[str], db: Any, cli: Callable[..., Result], tmp_path: Path
) -> None:
    insert_greeter(cli, on, "ada", "--unique-key", "only-one")
    before = snapshot(db)
    one_line_error(
        gdcli("insert", GREETER, "--app", APP, "--state", "{name: ada}", *on),
        2,
        "argument --state: not valid JSON",
    )
    one_line_error(
        cli("insert", GREETER, "--app", APP, "--state", '{"nom": "x"}', *on),
        1,
        f"invalid state for {GREETER}: name: Field required; nothing was written",
    )
    one_line_error(
        cli("insert", GREETER, "--app", APP, "--state", '{"name": "b"}', "--unique-key",
            "only-one", *on),
        1,
        "already occupies unique_key",
    )  # fmt: skip
    one_line_error(cli("insert", "no.such.Machine", *on), 1, "unknown machine 'no.such.Machine'")
    one_line_error(cli("insert", GREETER, "--app", "no_such_module", *on), 1, "cannot import")
    one_line_error(cli("insert", GREETER, "--state", "{}", "--args", "{}", *on), 2, "not allowed")
    one_line_error(cli("insert", GREETER, "--app", APP, "--state", '{"name": "q"}', "--queue", "",
                       *on), 2, "--queue: a queue name must not be empty")  # fmt: skip
    one_line_error(cli("insert", GREETER, "--app", APP, "--state", '{"name": "s"}',
                       "--unique-scope", "done", *on), 2,
                   "--unique-scope needs --unique-key")  # fmt: skip
    missing = tmp_path / "missing.json"
    one_line_error(cli("insert", GREETER, "--app", APP, "--state", f"@{missing}", *on), 2,
                   f"argument --state: cannot read file '{missing}': No such file")  # fmt: skip
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",\n}')
    one_line_error(cli("insert", GREETER, "--app", APP, "--args", f"@{bad}", *on), 2,
                   "argument --args: not valid JSON in file", "at line 2 column 1")  # fmt: skip
    one_line_error(gdcli("insert", GREETER, "--app", APP, "--state", "-", *on, stdin="{oops"), 2,
                   "argument --state: not valid JSON in stdin")  # fmt: skip
    assert snapshot(db) == before


def test_payloads_and_states_from_a_file_or_stdin(
    on: list[str], db: Any, cli: Callable[..., Result], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"name": "from a file é"}), encoding="utf-8")
    res = cli("insert", GREETER, "--app", APP, "--state", f"@{state}", *on)
    assert res.code == 0, res
    iid = int(res.out)
    res = gdcli("signal", str(iid), "go", "--payload", "-", *on, stdin='{"n": [1, 2]}\n')
    assert res.code == 0, res
    echo = tmp_path / "args.json"
    echo.write_text('{"big": "' + "x" * 100_000 + '"}')
    job = int(cli("insert", "tests.cli_machines.Echo", "--args", f"@{echo}", *on).out)
    assert db("SELECT id, state FROM S.gen_durable ORDER BY id") == [
        (iid, {"name": "from a file é"}),
        (job, {"big": "x" * 100_000}),
    ]
    assert db("SELECT target_id, payload FROM S.signals") == [(iid, {"n": [1, 2]})]


def test_signal_stores_dedups_and_refuses(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    target = insert_greeter(cli, on)
    res = gdcli("signal", str(target), "go", "--payload", '{"n": 1}', "--dedup-key", "d1", *on)
    assert res.code == 0, res
    assert res.out == f"signal 'go' stored for instance {target} (now runnable)\n"
    res = cli("signal", str(target), "go", "--payload", '{"n": 2}', "--dedup-key", "d1", "--json",
              *on)  # fmt: skip
    assert json.loads(res.out) == {
        "id": target, "name": "go", "stored": False, "duplicate": True, "status": "runnable"
    }  # fmt: skip
    res = cli("signal", str(target), "go", "--dedup-key", "d1", *on)
    assert res.code == 0, res
    assert res.out == (
        f"signal 'go' for instance {target}: duplicate, dedup_key 'd1' was already stored;"
        " nothing new stored (now runnable)\n"
    )
    res = cli("signal", str(target), "go", "--dedup-key", "d2", "--json", *on)
    assert json.loads(res.out)["stored"] is True and json.loads(res.out)["duplicate"] is False
    db("DELETE FROM S.signals WHERE dedup_key = 'd2'")
    assert db("SELECT target_id, name, payload, dedup_key FROM S.signals") == [
        (target, "go", {"n": 1}, "d1")
    ]
    before = snapshot(db)
    one_line_error(gdcli("signal", "987654", "go", *on), 1, "no instance with id 987654")
    one_line_error(
        gdcli("signal", str(target), "go", "--payload", "[1,", *on), 2, "--payload: not valid JSON"
    )
    one_line_error(cli("signal", "abc", "go", *on), 2, "instance id is an integer")
    assert snapshot(db) == before
    db("UPDATE S.gen_durable SET status = 'done' WHERE id = %s", target)
    before = snapshot(db)
    one_line_error(cli("signal", str(target), "late", *on), 1, "is done", "nothing was stored")
    assert snapshot(db) == before


def test_show_one_instance_with_inbox_and_children(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    parent = insert_greeter(cli, on, "parent")
    child = db(
        "INSERT INTO S.gen_durable (fsm, step, status, parent_id, result)"
        " VALUES ('kid', 'start', 'done', %s, '{\"ok\": true}') RETURNING id",
        parent,
    )[0][0]
    assert cli("signal", str(parent), "go", "--payload", '{"x": 2}', *on).code == 0
    res = gdcli("show", str(parent), "--json", *on)
    assert res.code == 0, res
    shown = json.loads(res.out)
    assert shown["id"] == parent and shown["fsm"] == GREETER and shown["status"] == "runnable"
    assert shown["state"] == {"name": "parent"}
    assert [(s["name"], s["payload"]) for s in shown["inbox"]] == [("go", {"x": 2})]
    assert [(c["id"], c["status"], c["result"]) for c in shown["children"]] == [
        (child, "done", {"ok": True})
    ]
    text = cli("show", str(parent), *on).out
    assert f"instance {parent}: {GREETER} v1" in text
    assert "inbox (1 signal(s))" in text and "children (1)" in text
    one_line_error(gdcli("show", "424242", *on), 1, "no instance with id 424242")


def test_show_cuts_huge_values_unless_full(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    big = "x" * 5000
    iid = insert_greeter(cli, on, big)  # state {"name": big}: 5012 characters as JSON
    assert cli("signal", str(iid), "go", "--payload", json.dumps({"p": big}), *on).code == 0
    text = cli("show", str(iid), *on).out
    assert len(max(text.splitlines(), key=len)) < 400
    state_line = next(line for line in text.splitlines() if line.split()[0] == "state")
    assert state_line.endswith('"name": "' + "x" * 190 + "... (4812 more chars; --full shows all)")
    assert "(4809 more chars; --full shows all)" in text  # the payload {"p": big} in the inbox
    full = cli("show", str(iid), "--full", *on).out
    assert json.dumps({"name": big}) in full and json.dumps({"p": big}) in full
    assert "--full shows all" not in full
    shown = json.loads(cli("show", str(iid), "--json", *on).out)  # scripts get it whole
    assert shown["state"] == {"name": big} and shown["inbox"][0]["payload"] == {"p": big}


def test_show_prints_the_error_history(on: list[str], db: Any, cli: Callable[..., Result]) -> None:
    iid = insert_greeter(cli, on, "erring")
    tb = "".join(f'  File "app.py", line {n}, in f{n}\n    frame_{n}()\n' for n in range(1, 6))
    errors = [
        {"step": "charge", "attempt": 0, "at": "2030-01-02T03:04:05.123456+00:00",
         "type": "KeyError", "message": "'customer_id'",
         "traceback": "Traceback (most recent call last):\n" + tb + "KeyError: 'customer_id'\n"},
        {"step": "charge", "attempt": 1, "at": "2030-01-02T03:04:06+00:00",
         "type": "RuntimeError", "message": "handle bug", "handling": "KeyError: 'x'",
         "traceback": "RuntimeError: handle bug\n"},
        {"step": "charge", "attempt": 2, "at": "2030-01-02T03:04:07+00:00",
         "type": "LeaseExpired", "message": "the lease of n:1 expired", "traceback": None},
    ]  # fmt: skip
    db("UPDATE S.gen_durable SET errors = %s, crash_count = 1 WHERE id = %s", Jsonb(errors), iid)
    text = cli("show", str(iid), *on).out
    history = text[text.index("errors (3, oldest first)") :].splitlines()
    at = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC).astimezone()
    assert history[1] == (
        f"  {at:%Y-%m-%d %H:%M:%S}  step 'charge' attempt 0  KeyError: 'customer_id'"
    )
    # The traceback's last lines: the frame that raised and the exception.
    assert history[2:8] == [
        "        frame_3()",
        '      File "app.py", line 4, in f4',
        "        frame_4()",
        '      File "app.py", line 5, in f5',
        "        frame_5()",
        "    KeyError: 'customer_id'",
    ]
    assert "frame_2()" not in text
    assert history[8].endswith("  step 'charge' attempt 1  RuntimeError: handle bug")
    assert history[9:11] == ["    while handling KeyError: 'x'", "    RuntimeError: handle bug"]
    assert history[11].endswith("attempt 2  LeaseExpired: the lease of n:1 expired")
    assert len(history) == 12
    assert "crash_count" in text
    shown = json.loads(cli("show", str(iid), "--json", *on).out)
    assert shown["errors"] == errors and shown["crash_count"] == 1
    fresh = insert_greeter(cli, on, "fine")
    assert "errors (none)" in cli("show", str(fresh), *on).out


def test_status_counts_backlog_and_expired_leases(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    ids = [insert_greeter(cli, on, n) for n in ("a", "b", "c")]
    db("UPDATE S.gen_durable SET eligible_at = now() - interval '90 seconds' WHERE id = %s", ids[0])
    db(
        "UPDATE S.gen_durable SET status = 'executing', locked_by = 'gone-node:1',"
        " lease_expires_at = now() - interval '30 seconds' WHERE id = %s",
        ids[1],
    )
    db("INSERT INTO S.gen_durable (fsm, step, queue, status) VALUES ('x', 's', 'mail', 'failed')")
    res = gdcli("status", "--json", *on)
    assert res.code == 0, res
    out = json.loads(res.out)
    assert out["queues"]["default"] == {
        "runnable": 2,
        "executing": 1,
        "awaiting_signal": 0,
        "awaiting_children": 0,
        "done": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert out["queues"]["mail"]["failed"] == 1
    [backlog] = out["backlog"]
    assert (backlog["queue"], backlog["ready"], backlog["scheduled"]) == ("default", 2, 0)
    assert 85 < backlog["oldest_ready_age"] < 600
    [expired] = out["expired_leases"]
    assert (expired["id"], expired["locked_by"]) == (ids[1], "gone-node:1")
    assert 25 < expired["expired_for"] < 600
    text = cli("status", *on).out
    assert "executing with an expired lease: 1" in text
    assert "gone-node:1" in text


def test_status_and_show_name_rows_waiting_for_a_machine_no_node_has(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    [(missing,)] = db(
        "INSERT INTO S.gen_durable (fsm, fsm_version, step) VALUES ('billing.Charge', 2, 'start')"
        " RETURNING id"
    )
    # A reason left behind by a row that has run a step since (eligible_at = updated_at).
    db("INSERT INTO S.gen_durable (fsm, step, queue, last_error) VALUES ('x', 'b', 'elsewhere',"
       " 'no machine ''x'' v1 on node n (handed back, retried in 30s)')")  # fmt: skip
    worker = start_worker("--app", APP, *WORKER_FAST, "--node-id", "deploy-test:1", *on)
    log = StderrLines(worker)
    try:
        wait_until(
            lambda: (
                db("SELECT last_error FROM S.gen_durable WHERE id = %s", missing)[0][0] is not None
            )
        )
        wait_until(lambda: "billing.Charge" in log.text())
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=30)
    err = log.close()
    reason = "no machine 'billing.Charge' v2 on node deploy-test:1 (handed back, retried in 30s)"
    assert f"ERROR gen_durable: {reason}: 1 instance(s)" in err
    out = json.loads(cli("status", "--json", *on).out)
    assert out["waiting_for_machine"] == [
        {"fsm": "billing.Charge", "fsm_version": 2, "rows": 1, "last_error": reason}
    ]
    text = cli("status", *on).out
    assert "runnable rows handed back by a node that lacks their machine: 1" in text
    assert reason in text
    shown = cli("show", str(missing), *on).out
    assert ["last_error", reason] in [line.split(None, 1) for line in shown.splitlines()]


# -- worker ----------------------------------------------------------------------------


WORKER_FAST = [
    "--poll-interval", "0.05", "--max-poll-interval", "0.2", "--heartbeat-interval", "1",
    "--lease-ttl", "10", "--reap-interval", "1",
]  # fmt: skip


def start_worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gen_durable", "worker", *args],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_worker_runs_machines_and_stops_gracefully_on_sigterm(
    loop: str, on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    worker = start_worker(
        "--app", APP, "--queue", "default=4", *WORKER_FAST, "--drain-timeout", "15", *on,
        "--loop", loop,
    )  # fmt: skip
    try:
        greeter = insert_greeter(cli, on, "grace")

        def status(iid: int) -> str:
            return str(db("SELECT status::text FROM S.gen_durable WHERE id = %s", iid)[0][0])

        wait_until(lambda: status(greeter) == "awaiting_signal")
        assert cli("signal", str(greeter), "go", *on).code == 0
        wait_until(lambda: status(greeter) == "done")
        assert db("SELECT result FROM S.gen_durable WHERE id = %s", greeter) == [
            ({"greeting": "hello grace"},)
        ]
        slow = int(cli("insert", "tests.cli_machines.Slow", "--args", '{"seconds": 2}', *on).out)
        wait_until(lambda: status(slow) == "executing")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    assert "SIGTERM received" in err and "stopped" in err and "Traceback" not in err
    assert f"({loop} loop)" in err
    assert status(slow) == "done"  # the running step was given time to commit
    assert db("SELECT count(*) FROM S.gen_durable WHERE status = 'executing'") == [(0,)]


def test_worker_serves_the_queues_of_its_machines_unless_told_otherwise(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    def status(iid: int) -> str:
        return str(db("SELECT status::text FROM S.gen_durable WHERE id = %s", iid)[0][0])

    def serve(*given: str, until: Callable[[], bool]) -> str:
        worker = start_worker("--app", APP, *WORKER_FAST, *given, *on)
        log = StderrLines(worker)
        try:
            wait_until(lambda: "running on schema" in log.text() and until())
        finally:
            worker.send_signal(signal.SIGINT)
            worker.wait(timeout=30)
        err = log.close()
        assert worker.returncode == 0, err
        return err

    echo = int(cli("insert", "tests.cli_machines.Echo", "--args", "{}", *on).out)
    mail = int(cli("insert", "tests.cli_machines.Mailer", *on).out)
    err = serve(until=lambda: status(echo) == status(mail) == "done")
    assert "queues default=10, mail=10 (" in err and "is not served" not in err
    err = serve("--queue", "default=2", until=lambda: True)
    assert "queues default=2 (" in err
    [warning] = [line for line in err.splitlines() if "is not served" in line]
    assert "WARNING" in warning and "queue 'mail'" in warning
    assert "tests.cli_machines.Mailer v1" in warning and "--queue mail=N" in warning


def test_worker_loop_uvloop_without_uvloop_is_a_usage_error(
    on: list[str], cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    res = cli("worker", "--app", APP, "--loop", "uvloop", *on)
    assert res.code == 2
    assert "uvloop is not installed" in res.err and "gen_durable[uvloop]" in res.err


def test_worker_waits_for_the_database_then_gives_up_clearly() -> None:
    port = free_port()
    down = f"postgresql://postgres@127.0.0.1:{port}/test"
    proc = start_worker("--dsn", down, "--startup-timeout", "1.5")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "retrying in" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gen-durable: error: cannot connect") and "gave up after" in last
    assert "Traceback" not in err


def test_worker_connects_once_the_database_comes_up(
    dsn: str, schema: str, db: Any, cli: Callable[..., Result]
) -> None:
    """Start the worker while its database address refuses connections; once it has said
    it is retrying, open a TCP relay to the real server: the worker must connect and run
    work."""
    port = free_port()
    relay_dsn = make_conninfo(dsn, host="127.0.0.1", port=str(port), hostaddr="")
    worker = start_worker("--app", APP, *WORKER_FAST, "--dsn", relay_dsn, "--schema", schema)
    log = StderrLines(worker)
    relay = None
    try:
        wait_until(lambda: "retrying in" in log.text(), timeout=60)
        assert worker.poll() is None
        relay = Relay(port, upstream_address(dsn))
        echo = cli("insert", "tests.cli_machines.Echo", "--args", '{"a": 1}', "--dsn", dsn,
                   "--schema", schema)  # fmt: skip
        iid = int(echo.out)
        wait_until(
            lambda: db("SELECT status::text FROM S.gen_durable WHERE id = %s", iid) == [("done",)]
        )
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if relay is not None:
            relay.close()
    err = log.close()
    assert worker.returncode == 0, err
    assert "cannot connect to the database" in err and "running on schema" in err


class StderrLines:
    """Collects a subprocess's stderr as it is written, so a test can wait on a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        self.stream = proc.stderr
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.stream:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def close(self) -> str:
        self.thread.join(timeout=30)
        return self.text()


def test_worker_fails_at_once_on_mistakes_retrying_cannot_fix(dsn: str) -> None:
    """A missing schema or a malformed DSN is not waited out like a database that is down."""
    for args, needle in (
        (["--dsn", dsn, "--schema", "t_absent_" + uuid.uuid4().hex[:8]], "gen-durable migrate"),
        (["--dsn", "nonsense"], "invalid database DSN"),
    ):
        start = time.monotonic()
        proc = start_worker(*args, "--startup-timeout", "120")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        last = err.strip().splitlines()[-1]
        assert last.startswith("gen-durable: error: ") and needle in last
        assert "retrying" not in err
        assert time.monotonic() - start < 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def upstream_address(dsn: str) -> tuple[int, Any]:
    """Where the real server listens: a TCP address or a Unix socket path."""
    info = conninfo_to_dict(dsn)
    host, port = str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (host, port)


class Relay:
    """A tiny TCP forwarder: the database "comes up" when it starts listening."""

    def __init__(self, port: int, target: tuple[int, Any]) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.target = target
        self.sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(self.target[0], socket.SOCK_STREAM)
            upstream.connect(self.target[1])
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def test_signal_and_show_by_key(on: list[str], db: Any, cli: Callable[..., Result]) -> None:
    res = cli(
        "insert", GREETER, "--app", APP, "--state", '{"name": "k"}', "--unique-key", "order-7", *on
    )
    assert res.code == 0, res
    iid = int(res.out)
    res = gdcli("signal", "go", "--key", "order-7", "--payload", '{"n": 1}', *on)
    assert res.code == 0, res
    assert res.out == "signal 'go' stored for key 'order-7' (now runnable)\n"
    res = cli("signal", "go", "--key", "order-7", "--json", *on)
    assert json.loads(res.out)["id"] == iid and json.loads(res.out)["stored"] is True
    shown = json.loads(gdcli("show", "--key", "order-7", "--json", *on).out)
    assert shown["id"] == iid and [s["name"] for s in shown["inbox"]] == ["go", "go"]
    assert f"instance {iid}: {GREETER} v1" in cli("show", "--key", "order-7", *on).out
    before = snapshot(db)
    one_line_error(gdcli("signal", "go", "--key", "nope", *on), 1, "ever carried")
    one_line_error(gdcli("show", "--key", "nope", *on), 1, "no key 'nope'")
    one_line_error(cli("signal", str(iid), "go", "--key", "order-7", *on), 2, "exactly one")
    one_line_error(cli("show", *on), 2, "exactly one")
    assert snapshot(db) == before
    db("UPDATE S.gen_durable SET status = 'done', unique_guard = NULL WHERE id = %s", iid)
    one_line_error(cli("signal", "late", "--key", "order-7", *on), 1, "key 'order-7' is done")
