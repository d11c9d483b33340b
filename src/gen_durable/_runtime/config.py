"""Engine options: each declared once, here (SPEC §8, §11).

Every option is a field of :class:`Config` with its type, its default and, in the
field's metadata, its bounds and its help text. Everything else derives from that
declaration: the validation in :func:`build_config`, the ``gen-durable worker`` flags
(fields marked ``cli``), and the checks that keep ``Engine.__init__``'s explicit
keywords and the README's configuration table in step (``tests/test_config.py``).

Adding an option: declare the field here (with ``opt(...)``), add the keyword to
``Engine.__init__`` — the test fails until both agree — and a row to the README table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError

SECONDS = "seconds"
COUNT = "count"


def opt(
    default: Any,
    help: str,
    *,
    unit: str = "",
    low: float | None = None,
    strict: bool = True,
    cli: bool = False,
    check: Callable[[str, Any], Any] | None = None,
) -> Any:
    """Declare one option: ``low`` is its lower bound (``strict``: the bound itself is
    refused), ``unit`` says how values read (seconds or a count), ``cli`` makes it a
    ``gen-durable worker`` flag; ``check`` validates a value of a shape the plain
    kinds do not cover (and returns it normalised)."""
    meta: dict[str, Any] = {"help": help, "unit": unit, "low": low, "strict": strict, "cli": cli}
    if check is not None:
        meta["check"] = check
    return field(default=default, metadata=meta)


class Durations(Mapping[str, float]):
    """An immutable, hashable mapping of terminal status to seconds: the normalised
    ``retention`` (a status it does not name is kept forever)."""

    __slots__ = ("_items",)

    def __init__(self, **seconds: float) -> None:
        self._items = dict(seconds)

    def __getitem__(self, key: str) -> float:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return f"Durations({self._items!r})"


RETENTION = Durations(done=86400.0, failed=604800.0, cancelled=604800.0)
"""SPEC §22's default: finished rows 1 day, failed and cancelled ones 7 days."""

_TERMINAL = ("done", "failed", "cancelled")


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive duration (seconds), got {value!r}")
    if math.isinf(value):
        raise ConfigurationError(f"{name} must be finite (None keeps rows forever)")
    return float(value)


def _retention(name: str, value: Any) -> Durations | None:
    """A duration for every terminal status, a mapping per status, or None (keep all)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = set(value) - set(_TERMINAL)
        if unknown:
            raise ConfigurationError(
                f"{name} names no terminal status {sorted(unknown, key=str)}; "
                f"statuses are {', '.join(_TERMINAL)}"
            )
        kept = {k: _seconds(f"{name}[{k!r}]", v) for k, v in value.items() if v is not None}
        return Durations(**kept)
    age = _seconds(name, value)
    return Durations(**dict.fromkeys(_TERMINAL, age))


@dataclass(frozen=True, slots=True)
class Config:
    dsn: str
    queues: dict[str, int] = field(
        default_factory=lambda: {"default": 10},
        metadata={"help": "queue name -> concurrency (steps running at once on this node)"},
    )
    schema: str = opt("public", "the PostgreSQL schema holding the tables")
    lease_ttl: float = opt(
        60.0, "seconds a claim stays valid without a heartbeat", unit=SECONDS, low=0, cli=True
    )
    heartbeat_interval: float = opt(
        20.0, "seconds between lease extensions", unit=SECONDS, low=0, cli=True
    )
    poll_interval: float = opt(1.0, "base idle poll, seconds", unit=SECONDS, low=0, cli=True)
    max_poll_interval: float = opt(5.0, "idle poll ceiling, seconds", unit=SECONDS, low=0, cli=True)
    reap_interval: float = opt(
        30.0, "seconds between expired-lease sweeps", unit=SECONDS, low=0, cli=True
    )
    prefetch: int | None = opt(
        None, "rows claimed beyond the running slots (unset: adapts, from the concurrency)",
        unit=COUNT, low=0, strict=False, cli=True,
    )  # fmt: skip
    min_demand: int | None = opt(
        None, "free slots needed before picking (unset: a tenth of concurrency + prefetch)",
        unit=COUNT, low=1, strict=False, cli=True,
    )  # fmt: skip
    drain_timeout: float = opt(
        5.0,
        "seconds running steps get to finish on stop",
        unit=SECONDS,
        low=0,
        strict=False,
        cli=True,
    )
    listen: bool = opt(True, "LISTEN for insert/wake notifications (polling stays the truth)")
    pool_size: int | None = opt(
        None, "size of the client-call pool (default len(queues) + 6)", unit=COUNT, low=2,
        strict=False,
    )  # fmt: skip
    unknown_retry: float = opt(
        30.0, "seconds before a row of a machine this node lacks is offered again",
        unit=SECONDS, low=0,
    )  # fmt: skip
    reap_batch: int = opt(1000, "rows per reaper statement", unit=COUNT, low=1, strict=False)
    node_id: str | None = opt(None, "the node's name in locked_by (default host:pid:random)")
    run_ahead: int = opt(
        16, "consecutive Next steps an instance may run on one claim (0: off)", unit=COUNT,
        low=0, strict=False,
    )  # fmt: skip
    crash_limit: int = opt(
        10, "lease expiries on one step before the reaper fails the row", unit=COUNT, low=1,
        strict=False, cli=True,
    )  # fmt: skip
    retention: float | Mapping[str, float] | None = opt(
        RETENTION, "how long terminal rows are kept: seconds, a mapping per status, or None",
        check=_retention,
    )  # fmt: skip
    gc_interval: float = opt(
        60.0, "seconds between retention sweeps", unit=SECONDS, low=0, cli=True
    )
    gc: bool = opt(True, "run the retention sweep on this node")

    def prefetch_for(self, concurrency: int) -> int:
        """The buffer of a queue of ``concurrency`` slots when it starts: the given
        ``prefetch``, or as many rows as slots — from there an unset one adapts to the
        rate steps start at (``slots.Prefetch``)."""
        return concurrency if self.prefetch is None else self.prefetch

    def min_demand_for(self, concurrency: int, prefetch: int | None = None) -> int:
        """Free slots a queue waits for before it picks: by default a tenth of what it
        may hold (``prefetch``: the buffer's current size), so a busy queue claims in
        batches rather than a row per finished step (an idle queue picks at once
        whatever this says)."""
        if self.min_demand is not None:
            return self.min_demand
        held = concurrency + (self.prefetch_for(concurrency) if prefetch is None else prefetch)
        return max(1, held // 10)


def options() -> list[dataclasses.Field[Any]]:
    """The engine options, in declaration order (``dsn`` and ``queues`` excluded)."""
    return [f for f in dataclasses.fields(Config) if f.name not in ("dsn", "queues")]


def cli_options() -> list[dataclasses.Field[Any]]:
    return [f for f in options() if f.metadata.get("cli")]


_HINTS: dict[str, Any] = {}


def kind_of(f: dataclasses.Field[Any]) -> type:
    """The option's value type (``int | None`` reads as ``int``)."""
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(Config))
    hint = _HINTS[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return typing.cast(type, args[0] if args else hint)


def _check(f: dataclasses.Field[Any], value: Any) -> Any:
    kind = kind_of(f)
    meta = f.metadata
    if "check" in meta:
        return meta["check"](f.name, value)
    if value is None and f.default is None:
        return None
    low, strict = meta.get("low"), meta.get("strict", True)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigurationError(f"{f.name} must be a bool, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ConfigurationError(f"{f.name} must be a non-empty str, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < (low or 0):
            raise ConfigurationError(f"{f.name} must be an int >= {low}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigurationError(f"{f.name} must be a number of seconds, got {value!r}")
    low = 0 if low is None else low
    if value < low or (strict and value == low) or math.isinf(value):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigurationError(f"{f.name} must be {bound} and finite, got {value!r}")
    return float(value)


def _queues(queues: Mapping[str, int] | None) -> dict[str, int]:
    if queues is None:
        return {"default": 10}
    if not isinstance(queues, Mapping):
        raise ConfigurationError(
            f"queues must be a mapping of queue name to concurrency, e.g. {{'default': 10}}; "
            f"got {queues!r}"
        )
    checked: dict[str, int] = {}
    for name, conc in queues.items():
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ConfigurationError(f"queue names must be non-empty str, got {name!r}")
        if isinstance(conc, bool) or not isinstance(conc, int) or conc < 1:
            raise ConfigurationError(
                f"queues[{name!r}] (concurrency) must be an int >= 1, got {conc!r}"
            )
        checked[name] = conc
    return checked


def build_config(dsn: str, queues: Mapping[str, int] | None, **opts: Any) -> Config:
    """Validate every option against its declaration, then the rules between them."""
    known = {f.name: f for f in options()}
    unknown = set(opts) - set(known)
    if unknown:
        raise ConfigurationError(
            f"unknown Engine option(s): {sorted(unknown)}; options are {sorted(known)}"
        )
    values = {name: _check(known[name], value) for name, value in opts.items()}
    cfg = Config(dsn=dsn, queues=_queues(queues), **values)
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
    for name, conc in cfg.queues.items():
        room = conc + cfg.prefetch_for(conc)
        if cfg.min_demand_for(conc) > room:
            raise ConfigurationError(
                f"min_demand ({cfg.min_demand}) exceeds queue {name!r}'s concurrency + prefetch "
                f"({room}); it would never pick"
            )
    return cfg
