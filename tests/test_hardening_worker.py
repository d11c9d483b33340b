"""Real ``gen-durable worker`` processes on the failure paths of steps: a SIGTERM while
``def`` and ``async def`` steps outlive the drain, and steps (or handlers) that raise
``SystemExit``/``KeyboardInterrupt``."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from .cluster.harness import wait_until
from .test_cli import WORKER_FAST, Result, StderrLines, cli, db, on, start_worker

__all__ = ["cli", "db", "on"]  # fixtures used below

APP = "tests.hardening_machines"


def _insert(cli: Callable[..., Result], on: list[str], machine: str, state: Any) -> int:
    res = cli("insert", f"{APP}.{machine}", "--app", APP, "--state", json.dumps(state), *on)
    assert res.code == 0, res
    return int(res.out.strip())


def _reap(worker: subprocess.Popen[str]) -> None:
    if worker.poll() is None:
        worker.kill()
        worker.wait()


def test_sigterm_hands_back_long_def_and_async_steps_and_exits_in_time(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    drain = 1.0
    worker = start_worker(
        "--app", APP, "--queue", "default=4", *WORKER_FAST, "--drain-timeout", str(drain), *on
    )  # fmt: skip
    log = StderrLines(worker)
    try:
        rows = [
            _insert(cli, on, "SlowSync", {"seconds": 12}),
            _insert(cli, on, "SlowAsync", {"seconds": 12}),
        ]

        def executing() -> bool:
            got = db("SELECT count(*) FROM S.gen_durable WHERE status = 'executing'")
            return bool(got == [(2,)])

        wait_until(executing, timeout=30)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        _reap(worker)
    err = log.close()
    assert worker.returncode == 0, err
    assert took < drain + 2, (took, err)
    for iid in rows:  # both handed back, the interrupted attempt counted
        assert db(
            "SELECT status::text, attempt, locked_by FROM S.gen_durable WHERE id = %s", iid
        ) == [("runnable", 1, None)], err
    assert "stopped" in err
    assert " ERROR " not in err and " CRITICAL " not in err, err
    assert "Traceback" not in err and "Event loop is closed" not in err, err


def test_steps_raising_system_exit_or_keyboard_interrupt_go_through_handle(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    worker = start_worker("--app", APP, "--queue", "default=4", *WORKER_FAST, *on)
    log = StderrLines(worker)
    try:
        rows = {
            (machine, exc): _insert(cli, on, machine, {"raise": exc})
            for machine in ("AsyncRaiser", "SyncRaiser")
            for exc in ("SystemExit", "KeyboardInterrupt")
        }
        poisoned_handle = _insert(cli, on, "HandleRaiser", {})

        def all_finished() -> bool:
            got = db("SELECT count(*) FROM S.gen_durable WHERE status IN ('done', 'failed')")
            return bool(got == [(len(rows) + 1,)])

        wait_until(all_finished, timeout=30)
        assert worker.poll() is None, log.text()  # the worker survived every one
        for (_, exc), iid in rows.items():
            assert db("SELECT status::text, result, attempt FROM S.gen_durable WHERE id = %s",
                      iid) == [("done", {"handled": exc}, 0)]  # fmt: skip
        ((status, error),) = db(
            "SELECT status::text, last_error FROM S.gen_durable WHERE id = %s", poisoned_handle
        )
        assert status == "failed" and "SystemExit" in error and "ValueError" in error
        # And it goes on working.
        after = _insert(cli, on, "SlowAsync", {"seconds": 0})
        wait_until(
            lambda: (
                db("SELECT status::text FROM S.gen_durable WHERE id = %s", after) == [("done",)]
            ),
            timeout=30,
        )
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    finally:
        _reap(worker)
    err = log.close()
    assert worker.returncode == 0, err


def test_a_worker_whose_heartbeat_keeps_failing_stops_and_exits_1(on: list[str]) -> None:
    """The supervisor restarts the failing service with backoff, gives up after its
    limit, the node drains itself, and the process exits 1 with a one-line reason (so
    a process manager restarts it) instead of running on without leases."""
    worker = start_worker(
        "--app", "tests.failing_heartbeat_app", *WORKER_FAST, "--heartbeat-interval", "0.1",
        *on,
    )  # fmt: skip
    log = StderrLines(worker)
    try:
        worker.wait(timeout=60)
    finally:
        _reap(worker)
    err = log.close()
    assert worker.returncode == 1, err
    assert err.count("heartbeat service raised") == 4, err  # restarted 4 times
    assert "heartbeat service failed 5 times" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gen-durable: error: the node stopped after repeated failures")
