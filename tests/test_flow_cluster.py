"""Flow control with three engines in separate processes (SPEC §23, §27.4, §27.5).

Each node is a ``tests.flow.node`` process; steps record their start and end in the
schema's ``flow_log`` table, so the checks below read what actually ran, on every
node, from one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gen_durable as gd

from .cluster.harness import query, wait_until
from .flow.machines import Call, Span

ROOT = Path(__file__).resolve().parent.parent


class Nodes:
    """Worker processes on one schema, started and stopped by name."""

    def __init__(self, dsn: str, schema: str, workdir: Path) -> None:
        self.dsn, self.schema, self.workdir = dsn, schema, workdir
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path, Path]] = {}
        self.runs = 0

    def spawn(self, node_id: str, *flags: str, wait: bool = True) -> None:
        self.runs += 1
        out = self.workdir / f"{node_id}.{self.runs}.out"
        err = self.workdir / f"{node_id}.{self.runs}.err"
        cmd = [sys.executable, "-m", "tests.flow.node", "--dsn", self.dsn]
        cmd += ["--schema", self.schema, "--node-id", node_id, *flags]
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fo, stderr=fe, env=dict(os.environ))
        self.procs[node_id] = (proc, out, err)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        def ready() -> bool:
            for node_id, (proc, _, err) in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{node_id} exited: {err.read_text()[-2000:]}")
            return all("ready" in out.read_text() for _, out, _ in self.procs.values())

        wait_until(ready, 60, "nodes ready", interval=0.05)

    def kill(self, node_id: str) -> None:
        proc = self.procs.pop(node_id)[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def terminate(self, *node_ids: str) -> None:
        for node_id in node_ids or list(self.procs):
            proc = self.procs.pop(node_id)[0]
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def errors(self) -> str:
        return "".join(p.read_text() for p in self.workdir.glob("*.err"))


@pytest.fixture
def nodes(dsn: str, schema: str, tmp_path: Path) -> Iterator[Nodes]:
    query(
        dsn,
        "CREATE TABLE {s}.flow_log (tag text, node text, started float8, ended float8)",
        schema=schema,
    )
    group = Nodes(dsn, schema, tmp_path)
    try:
        yield group
    finally:
        with contextlib.suppress(Exception):
            group.terminate()


def spans(dsn: str, schema: str, tag: str) -> list[tuple[float, float]]:
    rows = query(
        dsn, "SELECT started, ended FROM {s}.flow_log WHERE tag = %s", (tag,), schema=schema
    )
    return [(a, b) for a, b in rows]


def peak(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end before a start at the same time)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    return max(itertools.accumulate(d for _, d in events))


def statuses(dsn: str, schema: str) -> dict[str, int]:
    rows = query(
        dsn, "SELECT status::text, count(*) FROM {s}.gen_durable GROUP BY 1", schema=schema
    )
    return dict(rows)


def all_done(dsn: str, schema: str, total: int) -> bool:
    return statuses(dsn, schema).get("done", 0) == total


def test_k_three_on_one_key_across_three_processes(dsn, schema, nodes) -> None:
    # Two slots per node: six in all, so the key's limit (not the nodes) caps it at
    # three, and reaching three takes at least two nodes. No buffer: a buffered row
    # holds one of the key's slots while its node's slots run other rows, so with one
    # the three could be claimed yet never all run at once (1 run in 8 peaked at 2).
    for n in ("n1", "n2", "n3"):
        nodes.spawn(n, "--concurrency", "2", "--prefetch", "0", wait=False)
    nodes.wait_ready()
    with gd.SyncClient(dsn, schema=schema) as client:
        client.insert_all(
            [gd.Spec(Span, args={"tag": "k3"}, partition_key="hot", partition_limit=3)] * 60
            + [gd.Spec(Span, args={"tag": "k1"}, partition_key="solo")] * 15
        )
    wait_until(lambda: all_done(dsn, schema, 75), 90, "all 75 done")
    hot, solo = spans(dsn, schema, "k3"), spans(dsn, schema, "k1")
    assert len(hot) == 60 and len(solo) == 15
    assert peak(hot) == 3, peak(hot)  # reached, never exceeded
    assert peak(solo) == 1  # K = 1 unchanged
    nodes_used = query(dsn, "SELECT count(DISTINCT node) FROM {s}.flow_log", schema=schema)
    assert nodes_used[0][0] >= 2  # the guard held between processes, not inside one
    assert "Traceback" not in nodes.errors()


def test_sigkilled_worker_frees_its_slots_after_the_lease(dsn, schema, nodes) -> None:
    nodes.spawn("hang", "--hang")
    with gd.SyncClient(dsn, schema=schema) as client:
        ids = client.insert_all(
            [gd.Spec(Span, args={"tag": "x"}, partition_key="x", partition_limit=2)] * 3
        )

    def executing() -> int:
        return statuses(dsn, schema).get("executing", 0)

    wait_until(lambda: executing() == 2, 30, "the hanging node holds both slots")
    nodes.kill("hang")
    killed = time.monotonic()
    nodes.spawn("n2")
    # The third row waits for a slot: none is free until the dead node's lease runs out.
    assert statuses(dsn, schema).get("runnable", 0) >= 1
    wait_until(lambda: all_done(dsn, schema, 3), 60, "all three done after the lease")
    assert time.monotonic() - killed >= 2.0  # lease_ttl 2.5 s: not before the lease
    assert sorted(r[0] for r in query(dsn, "SELECT id FROM {s}.gen_durable", schema=schema)) == ids


def test_bucket_conserves_starts_across_three_processes(dsn, schema, nodes) -> None:
    """§27.4: 20/s, burst 5, 400 rows over two parts on three nodes: per part, starts in
    every window <= burst + rate x window; the unthrottled rows are not held up."""
    _set_limit(dsn, schema, "api", 20, burst=5)
    with gd.SyncClient(dsn, schema=schema) as client:
        for n in ("n1", "n2", "n3"):
            nodes.spawn(n, "--concurrency", "10", wait=False)
        nodes.wait_ready()
        began = time.time()
        client.insert_all(
            [gd.Spec(Call, args={"tag": f"p{i % 2}"}, rate_limit=f"api:p{i % 2}")
             for i in range(400)]
        )  # fmt: skip
        client.insert_all([gd.Spec(Call, args={"tag": "free"})] * 100)
    wait_until(lambda: all_done(dsn, schema, 500), 120, "all 500 done")
    free = sorted(s for s, _ in spans(dsn, schema, "free"))
    for part in ("p0", "p1"):
        starts = sorted(s for s, _ in spans(dsn, schema, part))
        assert len(starts) == 200
        for i, a in enumerate(starts):
            for j in range(i, len(starts)):
                window = starts[j] - a
                # +2: a start is recorded in the step, a little after its claim.
                assert j - i + 1 <= 5 + 20 * window + 2, (part, j - i + 1, window)
        took = starts[-1] - starts[0]
        assert (200 - 5) / 20 * 0.9 <= took <= (200 - 5) / 20 * 2.5, (part, took)
        # The unthrottled rows of the same queue were done long before the backlog.
        assert free[-1] - began < (starts[-1] - began) / 2, (free[-1] - began, took)


def test_schedule_one_instance_per_slot_with_restarts(dsn, schema, nodes) -> None:
    """§27.5: three nodes, one every-second schedule, a node restarted in the middle:
    one instance per slot and no slot missing; after all nodes were down, one
    catch-up slot and no backfill."""
    for n in ("n1", "n2", "n3"):
        nodes.spawn(n, "--schedule", wait=False)
    nodes.wait_ready()

    def inserted(n: int) -> bool:
        return len(_slots(dsn, schema)) >= n

    wait_until(lambda: inserted(4), 30, "four slots on three nodes")
    nodes.terminate("n2")
    nodes.spawn("n2", "--schedule")
    target = len(_slots(dsn, schema)) + 4
    wait_until(lambda: inserted(target), 30, "four more slots, n2 back among the nodes")
    nodes.terminate()
    before = _slots(dsn, schema)
    assert len(before) >= 6, before
    assert all(b - a == dt.timedelta(seconds=1) for a, b in itertools.pairwise(before)), before
    time.sleep(5)  # the scenario itself: every node down for five slots
    nodes.spawn("n1", "--schedule")
    wait_until(lambda: len(_slots(dsn, schema)) >= len(before) + 3, 30, "slots after restart")
    nodes.terminate()
    after = _slots(dsn, schema)[len(before) :]
    assert after[0] - before[-1] >= dt.timedelta(seconds=5)  # the gap was not backfilled
    assert all(b - a == dt.timedelta(seconds=1) for a, b in itertools.pairwise(after)), after
    keys = query(
        dsn, "SELECT count(*), count(DISTINCT unique_key) FROM {s}.gen_durable", schema=schema
    )
    assert keys[0][0] == keys[0][1]


def _slots(dsn: str, schema: str) -> list[dt.datetime]:
    rows = query(
        dsn,
        "SELECT convert_from(unique_key, 'UTF8') FROM {s}.gen_durable "
        "WHERE unique_key IS NOT NULL ORDER BY 1",
        schema=schema,
    )
    out = []
    for (key,) in rows:
        assert key.startswith("cron:tick:"), key
        out.append(dt.datetime.fromisoformat(key.removeprefix("cron:tick:")))
    return sorted(out)


def _set_limit(dsn: str, schema: str, name: str, rate: float, *, burst: float) -> None:
    async def run() -> None:
        async with gd.Engine(dsn, schema=schema, queues={}) as engine:
            await engine.set_rate_limit(name, rate, burst=burst)

    asyncio.run(run())
