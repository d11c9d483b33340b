"""Prometheus metrics (SPEC §25), in the ``gen_durable[prometheus]`` extra.

::

    from prometheus_client import REGISTRY
    from gen_durable.prometheus import Exporter

    exporter = Exporter(registry=REGISTRY, dsn=dsn)   # the host's own registry
    exporter.attach()                                 # counters start counting

Counters and histograms are fed by the telemetry events (SPEC §14): nothing is
attached, so nothing runs on the hot path, until :meth:`Exporter.attach`. Gauges read
the database when scraped, at most once per ``interval`` seconds, with the dashboard's
overview statements: the partial indexes for live work and the planner's statistics
for the rest, so their cost does not grow with finished rows. Labels are machine,
queue, status, outcome kind and service names — never ids — so the number of series
stays bounded by the application's definitions. The metric list is in
``docs/observability.md``.

Not imported by ``import gen_durable``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import telemetry
from ._db import runner
from ._db.statements import dashboard as q
from ._dsn import resolve_dsn, without_jit

log = logging.getLogger("gen_durable")

STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Exporter:
    """gen_durable's metrics on ``registry`` (a new one when not given)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        dsn: str | None = None,
        schema: str = "public",
        interval: float = 5.0,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.steps = Counter(
            "gen_durable_steps",
            "Steps committed, by machine and outcome kind",
            ["fsm", "kind"],
            registry=r,
        )
        self.duration = Histogram(
            "gen_durable_step_duration_seconds",
            "Step run time to its outcome's commit",
            ["fsm"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.exceptions = Counter(
            "gen_durable_step_exceptions", "Steps that raised", ["fsm"], registry=r
        )
        self.stale = Counter(
            "gen_durable_outcomes_stale",
            "Outcomes dropped: the claim was lost",
            ["fsm"],
            registry=r,
        )
        self.reaped = Counter(
            "gen_durable_reaped", "Expired leases returned to runnable", registry=r
        )
        self.poisoned = Counter(
            "gen_durable_poisoned", "Rows failed by the reaper at the crash limit", registry=r
        )
        self.picks = Counter("gen_durable_picks", "Pick statements run", ["queue"], registry=r)
        self.picked = Counter(
            "gen_durable_picked_rows", "Rows claimed by picks", ["queue"], registry=r
        )
        self.restarts = Counter(
            "gen_durable_service_restarts",
            "Service loops restarted after a fault",
            ["service"],
            registry=r,
        )
        self.not_found = Counter(
            "gen_durable_handed_back",
            "Rows handed back: machine not on this node",
            ["fsm"],
            registry=r,
        )
        self.timeouts = Counter(
            "gen_durable_await_timeouts", "Waits ended by their deadline", registry=r
        )
        self.throttled = Counter(
            "gen_durable_rate_limit_throttled",
            "Rows left unclaimed by a pick: their bucket was empty",
            ["queue", "rate_limit"],
            registry=r,
        )
        self.unknown_limits = Counter(
            "gen_durable_rate_limit_unknown",
            "Rows held: their rate limit is not defined",
            ["queue"],
            registry=r,
        )
        self.scheduled = Counter(
            "gen_durable_schedule_inserted",
            "Instances this node inserted for schedule slots",
            ["schedule"],
            registry=r,
        )
        self.cancelled = Counter(
            "gen_durable_cancelled", "Instances cancelled, descendants included", registry=r
        )
        self.swept = Counter(
            "gen_durable_gc_swept",
            "Expired terminal rows deleted by retention",
            ["status"],
            registry=r,
        )
        self.dropped_sends = Counter(
            "gen_durable_sends_dropped",
            "Signals of committed outcomes whose target was finished or unknown",
            ["reason"],
            registry=r,
        )
        self._handlers: dict[str, telemetry.Handler] = {
            "step.stop": self._on_step,
            "step.exception": self._on_exception,
            "outcome.stale": lambda e, m, md: self.stale.labels(md["fsm"]).inc(),
            "reaper.reaped": lambda e, m, md: self.reaped.inc(m["count"]),
            "reaper.poisoned": lambda e, m, md: self.poisoned.inc(m["count"]),
            "pick.stop": self._on_pick,
            "service.restarted": lambda e, m, md: self.restarts.labels(md["service"]).inc(),
            "registry.not_found": lambda e, m, md: self.not_found.labels(md["fsm"]).inc(m["count"]),
            "await.timeout": lambda e, m, md: self.timeouts.inc(m["count"]),
            "rate_limit.throttled": lambda e, m, md: self.throttled.labels(
                md["queue"], _bucket_name(md["rate_limit"])
            ).inc(m["count"]),
            "rate_limit.unknown": lambda e, m, md: self.unknown_limits.labels(md["queue"]).inc(
                m["count"]
            ),
            "schedule.inserted": lambda e, m, md: self.scheduled.labels(md["schedule"]).inc(
                m["count"]
            ),
            "instance.cancelled": lambda e, m, md: self.cancelled.inc(m["count"]),
            "gc.swept": lambda e, m, md: self.swept.labels(md["status"]).inc(m["count"]),
            "send.dropped": lambda e, m, md: self.dropped_sends.labels(md["reason"]).inc(
                m["count"]
            ),
        }
        self.gauges: DatabaseGauges | None = None
        if dsn is not None:
            self.gauges = DatabaseGauges(without_jit(resolve_dsn(dsn)), schema, interval)
            r.register(self.gauges)

    def attach(self) -> Exporter:
        """Start counting: attach the telemetry handlers (idempotent)."""
        for event, handler in self._handlers.items():
            telemetry.attach(event, handler)
        return self

    def detach(self) -> None:
        for event, handler in self._handlers.items():
            telemetry.detach(event, handler)
        if self.gauges is not None:
            self.gauges.close()

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` of this registry from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)

    def _on_step(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        self.steps.labels(md["fsm"], md["kind"]).inc()
        self.duration.labels(md["fsm"]).observe(m["duration"])

    def _on_exception(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        self.exceptions.labels(md["fsm"]).inc()

    def _on_pick(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        self.picks.labels(md["queue"]).inc()
        if m["count"]:
            self.picked.labels(md["queue"]).inc(m["count"])


class DatabaseGauges(Collector):
    """Instance counts, oldest runnable age and expired leases, read when scraped and
    cached for ``interval`` seconds so a scrape storm cannot load the database."""

    def __init__(self, dsn: str, schema: str, interval: float) -> None:
        self.dsn, self.schema, self.interval = dsn, schema, interval
        self._lock = threading.Lock()
        self._conn: Any = None
        self._read_at = -float("inf")
        self._metrics: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.interval:
                try:
                    self._metrics = self._read()
                except Exception as exc:  # a scrape must not fail the host's endpoint
                    log.warning("gen_durable metrics: database read failed: %s", exc)
                    self._close_conn()
                self._read_at = time.monotonic()
            return iter(list(self._metrics))

    def _read(self) -> list[Metric]:
        if self._conn is None:
            self._conn = runner.connect_sync(self.dsn)
        s = self.schema
        live = runner.fetch_sync(self._conn, q.LIVE.bind(s, {"cap": q.CAP}))
        estimates = runner.fetch_sync(self._conn, q.ESTIMATES.bind(s, {"schema": s}))
        expired_now = runner.fetch_sync(self._conn, q.EXPIRED.bind(s))[0].count
        counts = GaugeMetricFamily(
            "gen_durable_instances",
            "Live instances per queue and status (runnable split into due and scheduled); "
            f"each count stops at {q.CAP}",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "gen_durable_oldest_runnable_age_seconds",
            "Age of the oldest due runnable instance, per queue",
            labels=["queue"],
        )
        for c in live:
            counts.add_metric([c.queue, c.status], c.count)
            if c.oldest_age is not None:
                oldest.add_metric([c.queue], c.oldest_age)
        estimated = GaugeMetricFamily(
            "gen_durable_instances_estimated",
            "All instances per status, estimated from table statistics",
            labels=["status"],
        )
        for e in estimates:
            estimated.add_metric([e.status], e.estimate)
        expired = GaugeMetricFamily(
            "gen_durable_expired_leases", "Executing instances whose lease has expired"
        )
        expired.add_metric([], expired_now)
        return [counts, oldest, estimated, expired]

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close_conn()


def _bucket_name(ref: Any) -> str:
    """A bucket's limit name without its part (``"api:tenant-7"`` → ``"api"``): the
    parts are unbounded (one per tenant), the names are the operator's."""
    return str(ref).partition(":")[0]
