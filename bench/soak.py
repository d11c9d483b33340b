"""The reliability soak: a large mixed workload on several nodes under injected faults.

::

    make soak                                          # 100,000 instances, 4 nodes
    python bench/soak.py --instances 20000 --nodes 4 --json bench/results/soak.json
    python bench/soak.py --dsn postgresql://... --instances 5000   # no restart fault

Runs the reliability workload (``tests/cluster/workload.py``: Next chains, keyed
chains, signal waiters, retries, fan-out/join with a failing child, jobs) on worker
node processes, while a fault loop injects, every ``--fault-period`` seconds, one of:
SIGKILL of a busy node (restarted at once), a SIGSTOP beyond ``lease_ttl`` then
SIGCONT, ``pg_terminate_backend`` of every node connection, and a fast restart of
PostgreSQL. By default the soak starts a private embedded PostgreSQL server so that
it may restart it; with ``--dsn`` it uses that server and never restarts it.

With ``--ops`` (on by default) an operator acts alongside the faults, every
``--ops-period`` seconds, through the public API (SPEC §21): it cancels a few parents
while their children run (cascade), retries half of them at once, and retries failed
children whose parent still waits (or has just moved on). The checker then also
verifies that no child of a cancelled parent moved after the cancel and that every
barrier count is back to 0.

When every instance is terminal the nodes are stopped and the invariant checker
(``tests/cluster/checker.py``) reads the database and the effect log. The report
gives throughput, the runnable→started gap of Next/Replay transitions (p50/p99), the
re-executions attributed to each fault kind, and the checker's verdict. Exit status
is 1 when the checker found any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gen_durable as gd  # noqa: E402
from tests.cluster import workload  # noqa: E402
from tests.cluster.checker import Control, check, dump  # noqa: E402
from tests.cluster.harness import (  # noqa: E402
    Cluster,
    OwnedServer,
    SignalSender,
    insert,
    prepare,
    query,
    unfinished,
)

FAULTS = ("kill", "freeze", "terminate_backends", "restart_postgres")


def sizes_for(instances: int) -> dict[str, int]:
    """Top-level instance counts per machine for ``instances`` in total."""
    unit = max(instances // 100, 1)
    share = dict(chains=30, keyed=20, waiters=20, flaky=10, parents=5, jobs=15)
    sizes = {k: v * unit for k, v in share.items()}
    sizes["chains"] += instances - sum(sizes.values())  # rounding goes to plain chains
    return dict(sizes, length=4, kids=3, keys=max(sizes["keyed"] // 5, 1))


class Faults:
    """Injects one random fault every ``period`` seconds and records when."""

    def __init__(self, cluster: Cluster, server: OwnedServer | None, period: float, seed: int):
        self.cluster, self.server, self.period = cluster, server, period
        self.rng = random.Random(seed)
        self.kinds = [k for k in FAULTS if k != "restart_postgres" or server is not None]
        self.log: list[tuple[float, str]] = []
        self._next = time.monotonic() + period

    def busiest(self) -> str:
        rows = query(
            self.cluster.dsn,
            "SELECT split_part(locked_by, ':', 1), count(*) FROM {s}.gen_durable"
            " WHERE status = 'executing' GROUP BY 1 ORDER BY 2 DESC",
            schema=self.cluster.schema,
        )
        live = self.cluster.alive()
        busy = [node for node, _ in rows if node in live]
        return busy[0] if busy else self.rng.choice(live)

    def tick(self) -> None:
        if time.monotonic() < self._next:
            return
        kind = self.kinds[len(self.log) % len(self.kinds)]
        if kind == "kill":
            victim = self.busiest()
            self.cluster.kill(victim)
            self.cluster.spawn(victim)
        elif kind == "freeze":
            victim = self.busiest()
            self.cluster.freeze(victim)
            time.sleep(self.cluster.lease_ttl + 1.5)
            self.cluster.thaw(victim)
        elif kind == "terminate_backends":
            self.cluster.terminate_backends()
        else:
            assert self.server is not None
            self.server.restart()
        # Stamped once it has landed: every execution it interrupted began before.
        self.log.append((time.time(), kind))
        print(f"  fault {len(self.log)}: {kind}", flush=True)
        self._next = time.monotonic() + self.period

    def bound(self) -> int:
        """Re-executions the injected faults can explain (steps in flight they hit)."""
        per_node = self.cluster.concurrency
        whole = self.cluster.nodes * per_node
        cost = {"kill": per_node, "freeze": per_node}
        return sum(cost.get(kind, whole) for _, kind in self.log)


class Operator:
    """Cancels and retries instances through the API while the soak runs (SPEC §21)."""

    def __init__(self, dsn: str, schema: str, period: float, seed: int) -> None:
        self.dsn, self.schema, self.period = dsn, schema, period
        self.rng = random.Random(seed + 1)
        self.control = Control()
        self.errors = 0
        self._next = time.monotonic() + period

    def tick(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.period
        try:
            asyncio.run(self._act())
        except gd.GenDurableError as exc:  # a fault took the database away: next time
            self.errors += 1
            print(f"  operator: {exc}", flush=True)

    async def _act(self) -> None:
        async with gd.Engine(self.dsn, schema=self.schema, queues={}, pool_size=2) as client:
            ops = self.control
            parents = await client.list(
                machine=workload.Parent, status="awaiting_children", limit=50
            )
            for p in self.rng.sample(parents, min(2, len(parents))):
                if p.id in ops.cancelled or p.id in ops.retried:
                    continue
                if not await client.cancel(p.id, "soak operator"):
                    continue
                if self.rng.random() < 0.5:
                    ops.cancelled.add(p.id)
                elif await client.retry(p.id):
                    ops.retried.add(p.id)
                else:
                    ops.cancelled.add(p.id)
            kids = await client.list(machine=workload.BadKid, status="failed", limit=50)
            for k in self.rng.sample(kids, min(3, len(kids))):
                if k.id not in ops.retried_kids and await client.retry(k.id):
                    ops.retried_kids.add(k.id)


def effects(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = query(
        dsn,
        "SELECT e.instance, e.fsm, e.seq, e.started_at, e.finished_at, e.pkey"
        " FROM {s}.effects e ORDER BY e.instance, e.seq, e.started_at",
        schema=schema,
    )
    return rows


def gaps(rows: list[tuple[Any, ...]]) -> list[float]:
    """Runnable→started: from the end of one committed transition of a Next/Replay
    machine (unkeyed Chain, Flaky) to the start of the next one's execution. Keyed
    chains are left out: their wait for the key's other instances is not latency."""
    last: dict[tuple[int, int], tuple[float, float | None]] = {}
    for inst, fsm, seq, started, finished, pkey in rows:
        if fsm in ("Chain", "Flaky") and pkey is None:
            # The latest execution of a transition is the one whose outcome counted.
            last[(inst, seq)] = (started.timestamp(), finished.timestamp() if finished else None)
    out: list[float] = []
    for (inst, seq), (started, _) in last.items():
        prev = last.get((inst, seq - 1))
        if prev is not None and prev[1] is not None:
            out.append(max(started - prev[1], 0.0))
    return out


def attribute(rows: list[tuple[Any, ...]], log: list[tuple[float, str]]) -> dict[str, int]:
    """Each superseded execution is charged to the first fault that landed after it began."""
    runs: dict[tuple[int, int], list[float]] = defaultdict(list)
    for inst, _, seq, started, _, _ in rows:
        runs[(inst, seq)].append(started.timestamp())
    charged: Counter[str] = Counter()
    for starts in runs.values():
        for began in sorted(starts)[:-1]:
            kind = next((k for at, k in log if at >= began), "unattributed")
            charged[kind] += 1
    return dict(charged)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=100_000)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--lease-ttl", type=float, default=3.0)
    p.add_argument("--fault-period", type=float, default=4.0)
    p.add_argument("--no-faults", action="store_true")
    p.add_argument(
        "--ops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cancel and retry instances during the run (default: on)",
    )
    p.add_argument("--ops-period", type=float, default=2.0)
    p.add_argument("--dsn", help="use this server (never restarted) instead of an embedded one")
    p.add_argument("--timeout", type=float, default=6 * 3600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="gen_durable-soak-"))
    server = None if args.dsn else OwnedServer(work)
    dsn = args.dsn or (server.dsn if server else "")
    schema = f"soak_{int(time.time())}"
    prepare(dsn, schema)
    (work / "nodes").mkdir()
    cluster = Cluster(
        dsn,
        schema,
        work / "nodes",
        nodes=args.nodes,
        concurrency=args.concurrency,
        lease_ttl=args.lease_ttl,
        heartbeat=args.lease_ttl / 5,
        reap=0.5,
        pause=0.0,
    )
    faults = Faults(cluster, server, args.fault_period, args.seed)
    operator = Operator(dsn, schema, args.ops_period, args.seed)
    sizes = sizes_for(args.instances)
    print(f"soak: {args.instances} instances {sizes} on {args.nodes} nodes, schema {schema}")
    print(f"  node logs in {work / 'nodes'}", flush=True)
    senders: list[SignalSender] = []
    try:
        cluster.start()
        began = time.monotonic()
        ids = insert(dsn, schema, workload.build(**sizes, seed=args.seed))
        print(f"  inserted {len(ids)} in {time.monotonic() - began:.1f}s", flush=True)
        targets = [
            r[0]
            for r in query(
                dsn,
                "SELECT id FROM {s}.gen_durable WHERE fsm LIKE %s ORDER BY id",
                ("%.Waiter",),
                schema=schema,
            )
        ]
        senders = [SignalSender(dsn, schema, targets[i::4], seed=i, interval=0.5) for i in range(4)]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + args.timeout
        last_report = 0.0
        while (left := unfinished(dsn, schema)) > 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"soak: {left} instances unfinished at the timeout")
            if not args.no_faults:
                faults.tick()
            if args.ops:
                operator.tick()
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                print(f"  {left} unfinished after {last_report - began:.0f}s", flush=True)
            time.sleep(0.5)
        elapsed = time.monotonic() - began
        for sender in senders:
            sender.halt()
        senders = []
        cluster.terminate()
        report = check(dsn, schema, ids, max_reexecutions=faults.bound(), control=operator.control)
        rows = effects(dsn, schema)
        lat = gaps(rows)
        executing = query(
            dsn, "SELECT count(*) FROM {s}.gen_durable WHERE status = 'executing'", schema=schema
        )[0][0]
        result = {
            "instances": args.instances,
            "rows": report.instances,
            "nodes": args.nodes,
            "concurrency": args.concurrency,
            "lease_ttl": args.lease_ttl,
            "elapsed_s": round(elapsed, 1),
            "executions": report.executions,
            "committed": report.committed,
            "throughput_steps_per_s": round(report.committed / elapsed, 1),
            "gap_p50_ms": round(pct(lat, 50) * 1000, 1),
            "gap_p99_ms": round(pct(lat, 99) * 1000, 1),
            "faults": dict(Counter(kind for _, kind in faults.log)),
            "reexecutions": report.reexecutions,
            "reexecutions_by_fault": attribute(rows, faults.log),
            "executing_after_stop": executing,
            "node_stderr_lines": cluster.log_lines(),
            "stale_outcomes_dropped": cluster.log_lines("outcome dropped"),
            "cancelled": len(operator.control.cancelled),
            "cancelled_then_retried": len(operator.control.retried),
            "children_retried": len(operator.control.retried_kids),
            "operator_errors": operator.errors,
            "violations": len(report.violations),
            "verdict": "ok" if report.ok else "VIOLATIONS",
        }
        print(json.dumps(result, indent=2))
        print(report.summary())
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps({"result": result, "checker": json.loads(dump(report))}, indent=2)
            )
        return 0 if report.ok else 1
    finally:
        for sender in senders:
            sender.halt()
        cluster.stop()
        if server is not None:
            server.close()


if __name__ == "__main__":
    raise SystemExit(main())
