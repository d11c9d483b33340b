"""Faults on a running multi-node cluster: nothing lost, nothing double-committed (SPEC §0).

Each test starts worker nodes as OS processes (``tests/cluster``), inserts the mixed
workload, lets an external sender deliver signals, attacks the cluster while it runs,
waits for every instance to finish, stops the nodes and runs the invariant checker
(``tests/cluster/checker.py``) over the database and the effect log. Re-executions
are allowed only up to what the injected faults can explain: a killed, frozen or
disconnected node can lose at most the steps it was running (``concurrency`` each).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import workload
from .cluster.checker import Report, check
from .cluster.harness import (
    Cluster,
    OwnedServer,
    SignalSender,
    counts,
    insert,
    prepare,
    query,
    wait_done,
)

# Small enough for CI, long enough (steps sleep up to `pause`) for faults to land
# mid-run: ~300 steps, a few seconds on three nodes.
SIZES: dict[str, int] = dict(
    chains=16, length=4, keys=4, keyed=12, waiters=20, flaky=8, parents=4, kids=3, jobs=16
)


@pytest.fixture
def cluster_of(dsn: str, schema: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**opts: Any) -> Cluster:
        target_dsn = opts.pop("dsn", dsn)
        target_schema = opts.pop("schema", schema)
        prepare(target_dsn, target_schema)
        workdir = tmp_path / f"cluster{len(made)}"
        workdir.mkdir()
        cluster = Cluster(target_dsn, target_schema, workdir, **opts)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def waiters(dsn: str, schema: str) -> list[int]:
    rows = query(
        dsn,
        "SELECT id FROM {s}.gen_durable WHERE fsm LIKE %s ORDER BY id",
        ("%.Waiter",),
        schema=schema,
    )
    return [r[0] for r in rows]


def run(
    cluster: Cluster,
    *,
    sizes: dict[str, int] = SIZES,
    fault: Callable[[], None] | None = None,
    timeout: float = 90,
    senders: int = 1,
) -> list[int]:
    """Start the nodes, insert, signal, inject ``fault`` between polls, wait for the end."""
    cluster.start()
    ids = insert(cluster.dsn, cluster.schema, workload.build(**sizes))
    targets = waiters(cluster.dsn, cluster.schema)
    group = [
        SignalSender(cluster.dsn, cluster.schema, targets[i::senders], seed=i)
        for i in range(senders)
    ]
    for sender in group:
        sender.start()
    try:
        wait_done(cluster.dsn, cluster.schema, timeout, tick=fault)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.stderr_tail()}") from None
    finally:
        for sender in group:
            sender.halt()
    cluster.terminate()
    return ids


def verify(cluster: Cluster, ids: list[int], max_reexecutions: int) -> Report:
    report = check(cluster.dsn, cluster.schema, ids, max_reexecutions=max_reexecutions)
    assert report.ok, f"{report}\n{cluster.stderr_tail()}"
    assert report.terminal == report.instances
    # Whatever the fault, the nodes only warned: no dead service, no unhandled crash.
    for needle in ("CRITICAL", "Traceback", " ERROR "):
        assert cluster.log_lines(needle) == 0, cluster.stderr_tail()
    return report


class Every:
    """A fault injector: call ``action`` every ``period`` seconds, at most ``limit`` times."""

    def __init__(self, period: float, action: Callable[[], None], limit: int = 100) -> None:
        self.period, self.action, self.limit = period, action, limit
        self.count = 0
        self._next = time.monotonic() + period

    def __call__(self) -> None:
        if self.count < self.limit and time.monotonic() >= self._next:
            self.action()
            self.count += 1
            self._next = time.monotonic() + self.period


def test_no_fault_run_has_no_reexecution(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(nodes=2, pause=0.02)
    ids = run(cluster)
    report = verify(cluster, ids, max_reexecutions=0)
    assert report.reexecutions == 0
    assert report.executions == report.committed
    assert report.awaited + report.early == SIZES["waiters"]
    assert cluster.log_lines("ERROR") == 0, cluster.stderr_tail()


def test_sigkill_random_node_every_two_seconds(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(nodes=3, concurrency=4, pause=0.25)
    rng = random.Random(1)

    def kill_and_restart() -> None:
        # A random node among those running steps right now, so each kill strands work.
        busy = holders(cluster)
        victim = rng.choice(sorted(busy) or cluster.node_ids)
        cluster.kill(victim)
        cluster.spawn(victim)

    fault = Every(2.0, kill_and_restart, limit=5)
    ids = run(cluster, fault=fault)
    assert fault.count >= 2, "the run ended before the faults could land"
    report = verify(cluster, ids, max_reexecutions=fault.count * cluster.concurrency)
    # The stranded steps came back through the reaper and ran again.
    assert report.reexecutions >= 1
    assert cluster.log_lines("reaper:") >= 1, cluster.stderr_tail()
    print(f"kills={fault.count} {report}")


def holders(cluster: Cluster) -> dict[str, int]:
    """Executing rows per node (the claim token is ``<node id>:<pick sequence>``)."""
    rows = query(
        cluster.dsn,
        "SELECT split_part(locked_by, ':', 1), count(*) FROM {s}.gen_durable"
        " WHERE status = 'executing' GROUP BY 1",
        schema=cluster.schema,
    )
    return {node: int(n) for node, n in rows}


def test_postgres_restart_mid_run(cluster_of: Callable[..., Cluster], tmp_path: Path) -> None:
    server = OwnedServer(tmp_path)
    try:
        cluster = cluster_of(dsn=server.dsn, schema="faults", nodes=2, concurrency=4, pause=0.25)
        downtime: list[float] = []

        def restart() -> None:
            # The first outage is brief; the second outlasts lease_ttl, so every lease
            # in flight expires while the nodes cannot reach the server.
            down = 0.0 if not downtime else 2 * cluster.lease_ttl
            downtime.append(server.restart(down=down))

        fault = Every(2.5, restart, limit=2)
        ids = run(cluster, fault=fault, timeout=120)
        assert fault.count == 2, "the run ended before both restarts"
        # No crash loop: the very processes we started are the ones that finished.
        assert cluster.incarnations == cluster.nodes
        report = verify(
            cluster, ids, max_reexecutions=fault.count * cluster.nodes * cluster.concurrency
        )
        # No error flood: warnings only, each service retrying with backoff — a few
        # lines per second of outage for the whole cluster, not a tight retry loop.
        lines = cluster.log_lines()
        assert lines <= 100 + 60 * sum(downtime), cluster.stderr_tail()
        print(f"restarts={fault.count} down={downtime} stderr_lines={lines} {report}")
    finally:
        server.close()


def test_backends_terminated_at_random(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(nodes=2, concurrency=4, pause=0.25)
    rng = random.Random(3)
    terminated: list[int] = []

    def terminate() -> None:
        terminated.append(cluster.terminate_backends())

    fault = Every(1.0, terminate, limit=8)
    fault.period = rng.uniform(0.7, 1.3)
    ids = run(cluster, fault=fault)
    assert fault.count >= 3 and sum(terminated) > 0
    assert cluster.incarnations == cluster.nodes
    assert not [n for n in cluster.node_ids if n not in cluster.procs]
    report = verify(
        cluster, ids, max_reexecutions=fault.count * cluster.nodes * cluster.concurrency
    )
    lines = cluster.log_lines()
    assert lines <= 60 * fault.count, cluster.stderr_tail()
    print(f"rounds={fault.count} backends={sum(terminated)} stderr_lines={lines} {report}")


def test_frozen_node_outcomes_are_dropped(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(nodes=2, concurrency=4, pause=0.4, lease_ttl=2.0)
    victim = "n1"
    froze: list[int] = []

    def held_by_victim() -> int:
        return holders(cluster).get(victim, 0)

    def freeze_once() -> None:
        if froze or held_by_victim() < 2:
            return
        cluster.freeze(victim)
        froze.append(held_by_victim())
        # Frozen well past lease_ttl: the other node's reaper takes its rows back.
        time.sleep(cluster.lease_ttl + 2.0)
        cluster.thaw(victim)

    ids = run(cluster, fault=freeze_once)
    assert froze, "the victim never held work to freeze"
    # After its claims were lost, its steps were either stopped by its own heartbeat
    # (which finds the claim gone) or returned outcomes that were dropped, not
    # written (§18.2); which one comes first after the thaw is a race.
    stale = cluster.log_lines("its claim was lost")
    assert stale >= 1, cluster.stderr_tail()
    # ...and nothing was overwritten: every path is exactly the expected one.
    report = verify(cluster, ids, max_reexecutions=cluster.concurrency)
    assert report.reexecutions >= 1
    print(f"frozen_with={froze} stale={stale} {report}")


def test_signals_racing_parks_are_never_lost(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(nodes=2, concurrency=16, pause=0.0)
    sizes = dict(chains=0, keyed=0, waiters=1000, flaky=0, parents=0, jobs=0)
    ids = run(cluster, sizes=sizes, senders=4, timeout=150)
    report = verify(cluster, ids, max_reexecutions=0)
    assert report.awaited + report.early == 1000
    assert report.awaited > 0
    print(report)


def test_graceful_stop_releases_everything_at_once(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(nodes=3, concurrency=4, pause=0.2)
    stopped: list[dict[str, int]] = []

    def stop_all_midway() -> None:
        if stopped or counts(cluster.dsn, cluster.schema).get("done", 0) < 40:
            return
        began = time.monotonic()
        cluster.terminate()
        took = time.monotonic() - began
        # Right after the nodes exit: nothing is executing, nobody waits for a lease.
        stopped.append(counts(cluster.dsn, cluster.schema))
        assert took < cluster.lease_ttl + cluster.drain_timeout
        cluster.start()

    ids = run(cluster, fault=stop_all_midway)
    assert stopped, "the run ended before the stop"
    assert stopped[0].get("executing", 0) == 0, stopped[0]
    assert sum(n for s, n in stopped[0].items() if s not in ("done", "failed")) > 0
    # Every step running at the stop finished and committed: nothing ran twice.
    report = verify(cluster, ids, max_reexecutions=0)
    assert cluster.log_lines("reaper:") == 0, cluster.stderr_tail()
    print(f"at_stop={stopped[0]} {report}")


def test_checker_catches_a_double_commit(cluster_of: Callable[..., Cluster]) -> None:
    """The checker itself must fail on the defects it exists to catch."""
    cluster = cluster_of(nodes=1, pause=0.0)
    sizes = dict(chains=3, keyed=2, keys=1, waiters=2, flaky=1, parents=1, kids=2, jobs=1)
    ids = run(cluster, sizes=sizes)
    assert check(cluster.dsn, cluster.schema, ids).ok
    chain = query(
        cluster.dsn,
        "SELECT id FROM {s}.gen_durable WHERE fsm LIKE '%%.Chain' ORDER BY id LIMIT 1",
        schema=cluster.schema,
    )[0][0]
    # A transition committed twice, an execution with no outcome, a lost instance.
    query(
        cluster.dsn,
        "UPDATE {s}.gen_durable SET result = jsonb_set(result, '{{path,0}}', '\"s1:next\"')"
        " WHERE id = %s",
        (chain,),
        schema=cluster.schema,
    )
    query(
        cluster.dsn,
        "INSERT INTO {s}.effects SELECT gen_random_uuid(), instance, fsm, step, seq, attempt,"
        " node, pkey, started_at, finished_at FROM {s}.effects WHERE instance = %s AND seq = 1",
        (chain,),
        schema=cluster.schema,
    )
    report = check(cluster.dsn, cluster.schema, [*ids, 10**9])
    text = "\n".join(report.violations)
    assert f"instance {chain} (Chain): path" in text
    assert f"instance {chain} transition 1: attempt(s) [0] executed twice" in text
    assert "re-executions, more than" in text
    assert f"instance {10**9}: lost" in text
