"""The ``gen-durable`` command line, run for real: ``python -m gen_durable`` subprocesses
against the test database. Every failure case checks the contract of the CLI — one line
on stderr, a non-zero exit code — and that nothing was written."""

from __future__ import annotations

import contextlib
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
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import gen_durable as gd

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.cli_machines"
GREETER = "tests.cli_machines.Greeter"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GEN_DURABLE_DSN", "DATABASE_URL")}
    env.update(extra)
    return env


def gdcli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gen_durable", *args],
        cwd=ROOT,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The failure contract: exit code, exactly one line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
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
        db("SELECT id, status::text, state, step, attempt FROM S.gen_durable ORDER BY id"),
        db("SELECT id, target_id, name, payload, dedup_key FROM S.signals ORDER BY id"),
    )


def insert_greeter(on: list[str], name: str = "ada", *extra: str) -> int:
    proc = gdcli(
        "insert", GREETER, "--app", APP, "--state", json.dumps({"name": name}), *on, *extra
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


# -- help and usage --------------------------------------------------------------------


def test_help_everywhere_and_usage_errors_exit_2() -> None:
    for cmd in ([], ["migrate", "sql"], ["worker"]):
        proc = gdcli(*cmd, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "usage: gen-durable" in proc.stdout
    one_line_error(gdcli("frobnicate"), 2, "invalid choice")
    one_line_error(gdcli("worker", "--queue", "default=lots"), 2, "NAME=CONCURRENCY")


def test_no_database_configured_is_a_usage_error() -> None:
    one_line_error(gdcli("status"), 2, "no database configured", "GEN_DURABLE_DSN")


def test_dsn_from_environment(dsn: str, schema: str) -> None:
    proc = gdcli("migrate", "status", "--schema", schema, env=cli_env(DATABASE_URL=dsn))
    assert proc.returncode == 0, proc.stderr
    assert "installed version 1" in proc.stdout


def test_bad_dsn_is_one_clear_line() -> None:
    bad = "postgresql://postgres@127.0.0.1:1/test"
    for cmd in (["status"], ["show", "1"]):
        one_line_error(gdcli(*cmd, "--dsn", bad), 1, "gen-durable: error: cannot connect")
    proc = gdcli("status", "--dsn", bad, "-v")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr  # -v asks for the details


# -- migrate ---------------------------------------------------------------------------


def test_migrate_up_status_down_and_unknown_version(dsn: str) -> None:
    schema = "t_cli_" + uuid.uuid4().hex[:10]
    on = ["--dsn", dsn, "--schema", schema]

    def version() -> Any:
        proc = gdcli("migrate", "status", "--json", *on)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    try:
        assert version() == {"schema": schema, "installed": 0, "latest": 1, "pending": 1}
        proc = gdcli("migrate", "--json", *on)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"schema": schema, "from": 0, "to": 1, "latest": 1}
        assert "already at version 1" in gdcli("migrate", *on).stdout
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{schema}".gen_durable (fsm, step) VALUES (%s, %s)', ("x", "start")
            )
        for args, needle in (
            (["--to", "7"], "unknown schema version 7"),
            (["--down", "--to", "2"], "unknown schema version 2"),
            (["--to", "0"], "add --down"),
        ):
            one_line_error(gdcli("migrate", *args, *on), 1, needle)
        assert version()["installed"] == 1
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(f'SELECT count(*) FROM "{schema}".gen_durable').fetchone() == (1,)
        proc = gdcli("migrate", "--down", *on)
        assert proc.returncode == 0, proc.stderr
        assert "from version 1 to 0" in proc.stdout
        assert version()["installed"] == 0
        assert gdcli("migrate", "--to", "1", *on).returncode == 0
        assert version()["installed"] == 1
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_migrate_sql_prints_the_ddl_without_a_database() -> None:
    proc = gdcli("migrate", "sql", "--schema", "shop")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "-- gen_durable schema version 1 (up)\n"
        + gd.migration_sql(1, schema="shop").rstrip()
        + "\n\n"
    )
    down = gdcli("migrate", "sql", "--version", "1", "--down")
    assert 'DROP TABLE IF EXISTS "public".gen_durable' in down.stdout
    one_line_error(gdcli("migrate", "sql", "--version", "9"), 1, "unknown schema version 9")


def test_commands_on_an_unmigrated_schema_say_how_to_fix_it(dsn: str) -> None:
    missing = ["--dsn", dsn, "--schema", "t_nothing_" + uuid.uuid4().hex[:8]]
    one_line_error(gdcli("status", *missing), 1, "has no gen_durable tables", "gen-durable migrate")


# -- insert / signal / show / status ---------------------------------------------------


def test_insert_prints_the_id_and_stores_the_state(on: list[str], db: Any) -> None:
    first = insert_greeter(on, "ada")
    proc = gdcli(
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
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"id": out["id"], "fsm": "tests.cli_machines.Echo", "version": 1}
    rows = db(
        "SELECT id, fsm, state, queue, priority, partition_key, unique_key,"
        " eligible_at > now() + interval '50 minutes' FROM S.gen_durable ORDER BY id"
    )
    assert rows == [
        (first, GREETER, {"name": "ada"}, "default", 0, None, None, False),
        (out["id"], "tests.cli_machines.Echo", {"n": 1}, "other", -3, "k1", b"u1", True),
    ]


def test_insert_refusals_write_nothing(on: list[str], db: Any) -> None:
    insert_greeter(on, "ada", "--unique-key", "only-one")
    before = snapshot(db)
    one_line_error(
        gdcli("insert", GREETER, "--app", APP, "--state", "{name: ada}", *on),
        2,
        "argument --state: not valid JSON",
    )
    one_line_error(
        gdcli("insert", GREETER, "--app", APP, "--state", '{"nom": "x"}', *on),
        1,
        "invalid state",
        "name",
    )
    one_line_error(
        gdcli(
            "insert",
            GREETER,
            "--app",
            APP,
            "--state",
            '{"name": "b"}',
            "--unique-key",
            "only-one",
            *on,
        ),
        1,
        "already occupies unique_key",
    )
    one_line_error(gdcli("insert", "no.such.Machine", *on), 1, "unknown machine 'no.such.Machine'")
    one_line_error(gdcli("insert", GREETER, "--app", "no_such_module", *on), 1, "cannot import")
    assert snapshot(db) == before


def test_signal_stores_dedups_and_refuses(on: list[str], db: Any) -> None:
    target = insert_greeter(on)
    for _ in range(2):
        proc = gdcli("signal", str(target), "go", "--payload", '{"n": 1}', "--dedup-key", "d1", *on)
        assert proc.returncode == 0, proc.stderr
        assert f"stored for instance {target}" in proc.stdout
    assert db("SELECT target_id, name, payload, dedup_key FROM S.signals") == [
        (target, "go", {"n": 1}, "d1")
    ]
    before = snapshot(db)
    one_line_error(gdcli("signal", "987654", "go", *on), 1, "no instance with id 987654")
    one_line_error(
        gdcli("signal", str(target), "go", "--payload", "[1,", *on), 2, "--payload: not valid JSON"
    )
    one_line_error(gdcli("signal", "abc", "go", *on), 2, "instance id is an integer")
    assert snapshot(db) == before
    db("UPDATE S.gen_durable SET status = 'done' WHERE id = %s", target)
    before = snapshot(db)
    one_line_error(gdcli("signal", str(target), "late", *on), 1, "is done", "nothing was stored")
    assert snapshot(db) == before


def test_show_one_instance_with_inbox_and_children(on: list[str], db: Any) -> None:
    parent = insert_greeter(on, "parent")
    child = db(
        "INSERT INTO S.gen_durable (fsm, step, status, parent_id, result)"
        " VALUES ('kid', 'start', 'done', %s, '{\"ok\": true}') RETURNING id",
        parent,
    )[0][0]
    assert gdcli("signal", str(parent), "go", "--payload", '{"x": 2}', *on).returncode == 0
    proc = gdcli("show", str(parent), "--json", *on)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["id"] == parent and shown["fsm"] == GREETER and shown["status"] == "runnable"
    assert shown["state"] == {"name": "parent"}
    assert [(s["name"], s["payload"]) for s in shown["inbox"]] == [("go", {"x": 2})]
    assert [(c["id"], c["status"], c["result"]) for c in shown["children"]] == [
        (child, "done", {"ok": True})
    ]
    text = gdcli("show", str(parent), *on).stdout
    assert f"instance {parent}: {GREETER} v1" in text
    assert "inbox (1 signal(s))" in text and "children (1)" in text
    one_line_error(gdcli("show", "424242", *on), 1, "no instance with id 424242")


def test_status_counts_backlog_and_expired_leases(on: list[str], db: Any) -> None:
    ids = [insert_greeter(on, n) for n in ("a", "b", "c")]
    db("UPDATE S.gen_durable SET eligible_at = now() - interval '90 seconds' WHERE id = %s", ids[0])
    db(
        "UPDATE S.gen_durable SET status = 'executing', locked_by = 'gone-node:1',"
        " lease_expires_at = now() - interval '30 seconds' WHERE id = %s",
        ids[1],
    )
    db("INSERT INTO S.gen_durable (fsm, step, queue, status) VALUES ('x', 's', 'mail', 'failed')")
    proc = gdcli("status", "--json", *on)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["queues"]["default"] == {
        "runnable": 2,
        "executing": 1,
        "awaiting_signal": 0,
        "awaiting_children": 0,
        "done": 0,
        "failed": 0,
    }
    assert out["queues"]["mail"]["failed"] == 1
    [backlog] = out["backlog"]
    assert (backlog["queue"], backlog["ready"], backlog["scheduled"]) == ("default", 2, 0)
    assert 85 < backlog["oldest_ready_age"] < 600
    [expired] = out["expired_leases"]
    assert (expired["id"], expired["locked_by"]) == (ids[1], "gone-node:1")
    assert 25 < expired["expired_for"] < 600
    text = gdcli("status", *on).stdout
    assert "executing with an expired lease: 1" in text
    assert "gone-node:1" in text


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


def wait_until(condition: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last {value!r})")
        time.sleep(0.05)


def test_worker_runs_machines_and_stops_gracefully_on_sigterm(on: list[str], db: Any) -> None:
    worker = start_worker("--app", APP, "--queue", "default=4", *WORKER_FAST, *on)
    try:
        greeter = insert_greeter(on, "grace")

        def status(iid: int) -> str:
            return str(db("SELECT status::text FROM S.gen_durable WHERE id = %s", iid)[0][0])

        wait_until(lambda: status(greeter) == "awaiting_signal")
        assert gdcli("signal", str(greeter), "go", *on).returncode == 0
        wait_until(lambda: status(greeter) == "done")
        assert db("SELECT result FROM S.gen_durable WHERE id = %s", greeter) == [
            ({"greeting": "hello grace"},)
        ]
        slow = int(
            gdcli("insert", "tests.cli_machines.Slow", "--args", '{"seconds": 0.5}', *on).stdout
        )
        wait_until(lambda: status(slow) == "executing")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    assert "SIGTERM received" in err and "stopped" in err
    assert status(slow) == "done"  # the running step was given time to commit
    assert db("SELECT count(*) FROM S.gen_durable WHERE status = 'executing'") == [(0,)]


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


def test_worker_connects_once_the_database_comes_up(dsn: str, schema: str, db: Any) -> None:
    """Start the worker while its database address refuses connections; open a TCP relay
    to the real server a moment later: the worker must connect and run work."""
    port = free_port()
    relay_dsn = make_conninfo(dsn, host="127.0.0.1", port=str(port), hostaddr="")
    worker = start_worker("--app", APP, *WORKER_FAST, "--dsn", relay_dsn, "--schema", schema)
    relay = None
    try:
        time.sleep(1.5)  # the behaviour under test: the database is down at start
        assert worker.poll() is None
        relay = Relay(port, upstream_address(dsn))
        echo = gdcli("insert", "tests.cli_machines.Echo", "--args", '{"a": 1}', "--dsn", dsn,
                     "--schema", schema)  # fmt: skip
        iid = int(echo.stdout)
        wait_until(
            lambda: db("SELECT status::text FROM S.gen_durable WHERE id = %s", iid) == [("done",)]
        )
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
        if relay is not None:
            relay.close()
    assert worker.returncode == 0, err
    assert "retrying in" in err and "running on schema" in err


def test_worker_refuses_an_unmigrated_schema_at_once(dsn: str) -> None:
    start = time.monotonic()
    proc = start_worker("--dsn", dsn, "--schema", "t_absent_" + uuid.uuid4().hex[:8])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1].startswith("gen-durable: error: schema")
    assert "gen-durable migrate" in err
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
