"""The dashboard's reads, each one statement of ``_db/statements/dashboard.py`` (or a
client call), run on the engine's client pool."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from .._db import runner
from .._db.statements import dashboard as q
from .._db.statements.common import STATUSES
from ..engine import Engine
from ..instance import Instance
from ..machine import Signal

PAGE = 50
TREE_DEPTH = 6
TREE_LIMIT = 500
THROUGHPUT_MINUTES = 5

FILTERS = ("fsm", "queue", "status", "step", "partition_key", "parent", "error")


class BadFilter(ValueError):
    """A list filter the page cannot use; shown in the page, nothing is read."""


@dataclass
class Overview:
    live: list[q.LiveCount]
    estimates: list[q.StatusEstimate]
    throughput: list[q.Finished]
    nodes: list[q.LeaseHolder]
    expired: int
    minutes: int = THROUGHPUT_MINUTES

    @property
    def queues(self) -> list[str]:
        return sorted({c.queue for c in self.live})

    def count(self, queue: str, status: str) -> int:
        return sum(c.count for c in self.live if c.queue == queue and c.status == status)

    def oldest(self, queue: str) -> float | None:
        ages = [c.oldest_age for c in self.live if c.queue == queue and c.oldest_age]
        return max(ages) if ages else None

    def capped(self, queue: str, status: str) -> bool:
        return any(c.capped for c in self.live if c.queue == queue and c.status == status)


@dataclass
class Detail:
    row: Instance
    inbox: list[Signal]
    tree: list[q.TreeNode]
    extra: dict[str, Any] = field(default_factory=dict)


async def overview(engine: Engine) -> Overview:
    s = engine.queries.schema
    cap = {"cap": q.CAP}
    live, estimates, throughput, nodes, expired = await asyncio.gather(
        _all(engine, q.LIVE.bind(s, cap)),
        _all(engine, q.ESTIMATES.bind(s, {"schema": s})),
        _all(engine, q.THROUGHPUT.bind(s, {"minutes": THROUGHPUT_MINUTES})),
        _all(engine, q.NODES.bind(s, cap)),
        _all(engine, q.EXPIRED.bind(s)),
    )
    return Overview(live, estimates, throughput, nodes, expired[0].count)


def parse_filters(query: dict[str, str]) -> dict[str, Any]:
    """The list filters present in a query string, checked (``BadFilter`` otherwise)."""
    found: dict[str, Any] = {}
    for name in FILTERS:
        value = query.get(name, "").strip()
        if not value:
            continue
        if name == "status" and value not in STATUSES:
            raise BadFilter(f"unknown status {value!r}; one of {', '.join(STATUSES)}")
        if name == "parent":
            found[name] = parse_id(value)
            continue
        found[name] = value
    return found


def parse_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadFilter(f"{text!r} is not an instance id") from None
    if not 0 < value < 2**63:
        raise BadFilter(f"{text!r} is not an instance id")
    return value


async def page(engine: Engine, filters: dict[str, Any], before: int | None) -> list[q.Row]:
    params = q.list_params(filters, before, PAGE)
    return await _all(engine, q.LIST.bind(engine.queries.schema, params))


async def detail(engine: Engine, instance_id: int) -> Detail | None:
    row = await engine.get(instance_id)
    if row is None:
        return None
    params = {"id": instance_id, "depth": TREE_DEPTH, "limit": TREE_LIMIT}
    inbox, tree = await asyncio.gather(
        engine.inbox(instance_id),
        _all(engine, q.TREE.bind(engine.queries.schema, params)),
    )
    return Detail(row, inbox, tree)


def pretty(value: Any) -> str:
    """JSON for a ``<pre>``; the template escapes it."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


async def _all(engine: Engine, stmt: Any) -> list[Any]:
    return await runner.fetch(engine._require_pool(), stmt)
