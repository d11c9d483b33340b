"""Prometheus metrics (SPEC §25): counters fed by telemetry, gauges from the database,
``gen-durable worker --metrics-port`` and an exporter on a host's own registry."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gen_durable import telemetry
from gen_durable.prometheus import Exporter
from tests.dashboard_machines import Broken, Waiter

ROOT = Path(__file__).resolve().parent.parent


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_worker_serves_metrics_matching_the_database(dsn: str, schema: str) -> None:
    port = _free_port()
    fsm = "tests.cli_machines.Echo"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{schema}".gen_durable (fsm, step, state) '
            "SELECT %s, 'start', jsonb_build_object('args', jsonb_build_object('n', i)) "
            "FROM generate_series(1, 40) i",
            (fsm,),
        )
    worker = subprocess.Popen(
        [sys.executable, "-m", "gen_durable", "worker", "--dsn", dsn, "--schema", schema,
         "--app", "tests.cli_machines", "--queue", "default=4", "--poll-interval", "0.05",
         "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        key = ("gen_durable_steps_total", (("fsm", fsm), ("kind", "done")))
        while True:
            assert worker.poll() is None, worker.communicate()
            try:
                found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            except httpx.TransportError:
                found = {}
            if found.get(key) == 40:
                break
            assert time.monotonic() < deadline, f"steps never reached 40: {found.get(key)}"
            time.sleep(0.2)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                f"SELECT count(*) FROM \"{schema}\".gen_durable WHERE status = 'done'"
            ).fetchone()
        assert row is not None and row[0] == found[key]
        hist = ("gen_durable_step_duration_seconds_count", (("fsm", fsm),))
        assert found[hist] == 40
        assert found[("gen_durable_expired_leases", ())] == 0
        assert sum(v for (n, _), v in found.items() if n == "gen_durable_picked_rows_total") >= 40
    finally:
        worker.terminate()
        worker.wait(timeout=60)


async def test_exporter_on_a_host_registry(make_engine: Any, dsn: str, schema: str) -> None:
    registry = CollectorRegistry()
    exporter = Exporter(registry, dsn=dsn, schema=schema, interval=0).attach()
    try:
        engine = make_engine(queues={"default": 2}, fsms=[Waiter, Broken])
        await engine.start()
        waiting = [await engine.insert(Waiter, queue="default") for _ in range(3)]
        later = await engine.insert(Waiter, queue="later", schedule_in=3600)
        broken = await engine.insert(Broken)
        await engine.wait(broken, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            rows = [await engine.get(i) for i in waiting]
            if all(r is not None and r.status == "awaiting_signal" for r in rows):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        found = samples(generate_latest(registry).decode())
        name = Broken.__gd_name__
        assert found[("gen_durable_step_exceptions_total", (("fsm", name),))] == 1
        kinds = {
            dict(lb)["kind"]: v
            for (n, lb), v in found.items()
            if n == "gen_durable_steps_total" and dict(lb)["fsm"] == name
        }
        assert sum(kinds.values()) == 1 and "await" not in kinds, kinds
        assert (
            found[("gen_durable_steps_total", (("fsm", Waiter.__gd_name__), ("kind", "await")))]
            == 3
        )
        assert found[("gen_durable_instances", (("queue", "later"), ("status", "scheduled")))] == 1
        assert later
    finally:
        exporter.detach()
    assert not telemetry.listening("step.stop")


def test_import_gen_durable_loads_no_extra() -> None:
    code = (
        "import sys, gen_durable; "
        "bad = [m for m in ('starlette', 'jinja2', 'prometheus_client', 'opentelemetry', "
        "'gen_durable.dashboard', 'gen_durable.prometheus', 'gen_durable.tracing') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
