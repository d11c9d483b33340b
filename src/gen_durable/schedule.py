"""Recurring schedules: ``gd.Schedule`` (SPEC §23).

A schedule names a machine and a cron expression (5 fields, or 6 with seconds first);
every node given it in ``Engine(schedules=[...])`` inserts the instance of each due
slot under the unique key ``cron:<name>:<slot in ISO 8601>``, whose scope holds every
status, the terminal ones included: however many nodes run it, one slot makes one
instance, with no leader. Cron syntax, timezones and DST come from ``cronsim`` (the
``cron`` extra: ``pip install 'gen_durable[cron]'``).

::

    nightly = gd.Schedule("nightly-report", Report, "30 2 * * *", timezone="Europe/Paris")
    engine = gd.Engine(dsn, fsms=[Report], schedules=[nightly])
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigurationError
from .machine import Machine
from .outcomes import Spec

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
SCOPE = ("runnable", "executing", "awaiting_signal", "awaiting_children", "done", "failed")
"""Every status: a slot's key stays taken after its instance finished."""


def _cron() -> Any:
    try:
        import cronsim
    except ImportError:  # pragma: no cover - the extra is part of the dev install
        raise ConfigurationError(
            "gd.Schedule needs the cron parser: pip install 'gen_durable[cron]'"
        ) from None
    return cronsim


def latest_slot(cron: str, timezone: str, now: dt.datetime) -> dt.datetime:
    """The latest slot of ``cron`` in ``timezone`` at or before ``now``, in UTC."""
    local = now.astimezone(ZoneInfo(timezone))
    if not local.microsecond:  # a look exactly on a slot counts that slot
        local = local.replace(microsecond=1)
    slot: dt.datetime = next(_cron().CronSim(cron, local, reverse=True))
    return slot.astimezone(dt.UTC)


def next_slot(cron: str, timezone: str, now: dt.datetime) -> dt.datetime:
    """The first slot of ``cron`` in ``timezone`` strictly after ``now``, in UTC."""
    slot: dt.datetime = next(_cron().CronSim(cron, now.astimezone(ZoneInfo(timezone))))
    return slot.astimezone(dt.UTC)


@dataclass(frozen=True)
class Schedule:
    """Insert ``machine`` at every slot of ``cron`` (in ``timezone``), once cluster-wide.

    ``state`` is the instance's state, or a callable of the slot time (an aware
    datetime) returning it. A schedule seen for the first time starts at its next
    slot; after downtime only the latest missed slot runs (SPEC §23).
    """

    name: str
    machine: type[Machine]
    cron: str
    state: Any = field(default=None, kw_only=True)
    timezone: str = field(default="UTC", kw_only=True)
    queue: str | None = field(default=None, kw_only=True)
    priority: int = field(default=0, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigurationError(
                f"a schedule name is 1-100 letters, digits, '_', '.', '-'; got {self.name!r}"
            )
        m = self.machine
        if not (isinstance(m, type) and issubclass(m, Machine) and not m.__gd_abstract__):
            raise ConfigurationError(f"Schedule {self.name!r}: expected a machine, got {m!r}")
        if not isinstance(self.timezone, str):
            raise ConfigurationError(f"Schedule {self.name!r}: timezone must be a zone name")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(
                f"Schedule {self.name!r}: unknown timezone {self.timezone!r}"
            ) from exc
        cronsim = _cron()
        if not isinstance(self.cron, str):
            raise ConfigurationError(f"Schedule {self.name!r}: cron must be a str")
        try:
            cronsim.CronSim(self.cron, dt.datetime.now(dt.UTC))
        except cronsim.CronSimError as exc:
            raise ConfigurationError(
                f"Schedule {self.name!r}: bad cron expression {self.cron!r}: {exc}"
            ) from exc

    def latest(self, now: dt.datetime) -> dt.datetime:
        """The latest slot at or before ``now``, in UTC."""
        return latest_slot(self.cron, self.timezone, now)

    def after(self, now: dt.datetime) -> dt.datetime:
        """The first slot strictly after ``now``, in UTC."""
        return next_slot(self.cron, self.timezone, now)

    def key(self, slot: dt.datetime) -> str:
        return f"cron:{self.name}:{slot.astimezone(dt.UTC).isoformat()}"

    def spec(self, slot: dt.datetime) -> Spec:
        """The instance of one slot, as ``insert`` takes it."""
        state = self.state(slot) if callable(self.state) else self.state
        options: dict[str, Any] = {
            "state": state,
            "priority": self.priority,
            "unique_key": self.key(slot),
            "unique_scope": list(SCOPE),
        }
        if self.queue is not None:
            options["queue"] = self.queue
        return Spec(self.machine, **options)


def check_schedules(schedules: Iterable[Any], queues: Any = None) -> tuple[Schedule, ...]:
    """``Engine(schedules=...)``: ``gd.Schedule`` items with distinct names, on an
    engine with queues (``queues``: the engine's own)."""
    if isinstance(schedules, str | bytes | Schedule) or not hasattr(schedules, "__iter__"):
        raise ConfigurationError("schedules must be a list of gd.Schedule")
    items = tuple(schedules)
    wrong = [s for s in items if not isinstance(s, Schedule)]
    if wrong:
        raise ConfigurationError(f"schedules must be gd.Schedule items, got {wrong!r}")
    names = [s.name for s in items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigurationError(f"schedule names must be unique; repeated: {twice}")
    if items and queues is not None and not queues:
        raise ConfigurationError(
            "schedules run on a node: give the engine queues (a pure client, "
            "queues={}, would never insert them)"
        )
    return items
