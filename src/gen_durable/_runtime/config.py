"""Engine options, validated once at construction (SPEC §8, §11)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Config:
    dsn: str
    queues: dict[str, int] = field(default_factory=lambda: {"default": 10})
    schema: str = "public"
    lease_ttl: float = 60.0
    heartbeat_interval: float = 20.0
    poll_interval: float = 1.0
    max_poll_interval: float = 5.0
    reap_interval: float = 30.0
    prefetch: int = 0
    min_demand: int = 1
    drain_timeout: float = 5.0
    listen: bool = True
    pool_size: int | None = None
    unknown_retry: float = 30.0
    reap_batch: int = 1000
    node_id: str | None = None
    run_ahead: int = 16
    crash_limit: int = 10


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {bound} and finite, got {value!r}")
    return float(value)


def _count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def build_config(dsn: str, queues: Mapping[str, int] | None, **opts: Any) -> Config:
    if queues is None:
        queues = {"default": 10}
    if not isinstance(queues, Mapping):
        raise ConfigurationError(
            f"queues must be a mapping of queue name to concurrency, e.g. {{'default': 10}}; "
            f"got {queues!r}"
        )
    checked: dict[str, int] = {}
    for name, conc in queues.items():
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ConfigurationError(f"queue names must be non-empty str, got {name!r}")
        checked[name] = _count(f"queues[{name!r}] (concurrency)", conc, 1)
    schema = opts.get("schema", "public")
    if not isinstance(schema, str) or not schema or "\x00" in schema:
        raise ConfigurationError(f"schema must be a non-empty str, got {schema!r}")
    floats: dict[str, float] = {
        k: _positive(k, opts[k])
        for k in (
            "lease_ttl",
            "heartbeat_interval",
            "poll_interval",
            "max_poll_interval",
            "reap_interval",
            "unknown_retry",
        )
        if k in opts
    }
    if "drain_timeout" in opts:
        floats["drain_timeout"] = _positive("drain_timeout", opts["drain_timeout"], allow_zero=True)
    ints: dict[str, int] = {}
    if "prefetch" in opts:
        ints["prefetch"] = _count("prefetch", opts["prefetch"], 0)
    if "min_demand" in opts:
        ints["min_demand"] = _count("min_demand", opts["min_demand"], 1)
    if "run_ahead" in opts:
        ints["run_ahead"] = _count("run_ahead", opts["run_ahead"], 0)
    if "crash_limit" in opts:
        ints["crash_limit"] = _count("crash_limit", opts["crash_limit"], 1)
    if "reap_batch" in opts:
        ints["reap_batch"] = _count("reap_batch", opts["reap_batch"], 1)
    pool_size = opts.get("pool_size")
    if pool_size is not None:
        pool_size = _count("pool_size", pool_size, 2)
    listen = opts.get("listen", True)
    if not isinstance(listen, bool):
        raise ConfigurationError(f"listen must be a bool, got {listen!r}")
    node_id = opts.get("node_id")
    if node_id is not None and (not isinstance(node_id, str) or not node_id or "\x00" in node_id):
        raise ConfigurationError(f"node_id must be a non-empty str, got {node_id!r}")
    extra: dict[str, Any] = {**floats, **ints}
    cfg = Config(
        dsn=dsn,
        queues=checked,
        schema=schema,
        listen=listen,
        pool_size=pool_size,
        node_id=node_id,
        **extra,
    )
    if cfg.heartbeat_interval >= cfg.lease_ttl:
        raise ConfigurationError(
            f"heartbeat_interval ({cfg.heartbeat_interval}s) must be well below lease_ttl "
            f"({cfg.lease_ttl}s); keep 3 x heartbeat_interval <= lease_ttl"
        )
    if cfg.max_poll_interval < cfg.poll_interval:
        raise ConfigurationError(
            f"max_poll_interval ({cfg.max_poll_interval}s) must be >= poll_interval "
            f"({cfg.poll_interval}s)"
        )
    for name, conc in checked.items():
        if cfg.min_demand > conc + cfg.prefetch:
            raise ConfigurationError(
                f"min_demand ({cfg.min_demand}) exceeds queue {name!r}'s concurrency + prefetch "
                f"({conc + cfg.prefetch}); it would never pick"
            )
    return cfg
