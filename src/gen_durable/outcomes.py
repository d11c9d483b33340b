"""The six outcomes a step returns, and the child/batch ``Spec`` (SPEC §4, §7, §11).

Outcomes are frozen dataclasses: a step builds one and returns it; the engine commits
its effect atomically. Anything else returned by a step is an ``InvalidOutcome``
(SPEC §15), raised inside the step so that it goes through ``handle``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Generic

from typing_extensions import TypeVar

from .errors import ConfigurationError, InvalidOutcome
from .flow import rate_limit_ref

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._inputs import InsertOptions
    from .machine import Context, Machine

S = TypeVar("S", default=Any)
"""The machine's state type: ``gd.Outcome[OrderState]`` checks an outcome's state and
a step method given by reference against it (SPEC §26)."""

StepRef = str | Callable[[Any, "Context[S]"], Any]
"""A step by name, or by its ``@gd.step`` method (``Order.ship``, SPEC §26)."""

Seconds = float | int | dt.timedelta

MAX_SECONDS = 100 * 365.25 * 86400


def seconds(value: Seconds, what: str) -> float:
    """Normalise a duration (seconds or ``timedelta``) and refuse negatives."""
    if isinstance(value, dt.timedelta):
        out = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be seconds (int/float) or a timedelta, not {value!r}")
    else:
        out = float(value)
    if not 0 <= out < float("inf"):  # also refuses NaN
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    if out > MAX_SECONDS:
        raise ValueError(
            f"{what} must be at most {MAX_SECONDS:.0f} seconds (100 years), got {value!r}"
        )
    return out


def _check_rate_limit(value: Any) -> None:
    try:
        rate_limit_ref(value)
    except ConfigurationError as exc:
        raise InvalidOutcome(f"Next rate_limit: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Send:
    """A signal to another instance — by id (``int``) or by unique key (``str`` or
    ``bytes``: its occupant) — committed with the outcome that carries it (SPEC §20).

    ``gd.Send("order-42", "shipped", {"carrier": "ups"}, dedup_key="ship-42")``. A
    target that is finished, or a key nobody occupies, drops the send (telemetry
    ``send.dropped``); it never fails the outcome.
    """

    target: int | str | bytes
    name: str
    payload: Any = None
    dedup_key: str | None = None

    def __post_init__(self) -> None:
        target = self.target
        if isinstance(target, bool) or not isinstance(target, int | str | bytes):
            raise InvalidOutcome(
                "gd.Send target is an instance id (int) or a unique_key (str or bytes), "
                f"not {type(target).__name__} {target!r}"
            )
        if not isinstance(self.name, str) or not self.name:
            raise InvalidOutcome(f"gd.Send name must be a non-empty str, got {self.name!r}")
        if self.dedup_key is not None and not isinstance(self.dedup_key, str):
            raise InvalidOutcome(f"gd.Send dedup_key must be a str or None, got {self.dedup_key!r}")


def _effects(spawn: Any, send: Any) -> tuple[tuple[Any, ...], tuple[Send, ...]]:
    """``spawn`` and ``send`` checked for shape and frozen as tuples. The options and
    state of each Spec are validated when the step's outcome is encoded, by the same
    code as ``insert_all`` (still inside the step: an error goes through ``handle``)."""
    for what, value in (("spawn", spawn), ("send", send)):
        if isinstance(value, str | bytes | dict) or not hasattr(value, "__iter__"):
            raise InvalidOutcome(f"{what}= must be a list, not {type(value).__name__}")
    spawned = tuple(spawn)
    for item in spawned:
        machine = item.machine if isinstance(item, Spec) else item
        if not (isinstance(machine, type) and hasattr(machine, "__gd_name__")):
            raise InvalidOutcome(
                f"spawn= items are gd.Spec(Machine, ...) or machine classes, not {item!r}"
            )
    sent = tuple(send)
    for item in sent:
        if not isinstance(item, Send):
            raise InvalidOutcome(f"send= items are gd.Send(target, name, ...), not {item!r}")
    return spawned, sent


@dataclass(frozen=True, slots=True)
class Effects:
    """What every outcome but ``Stop`` may carry: instances to start and signals to
    send, committed in the outcome's own atomic unit, or not at all when the outcome
    is stale (SPEC §20). Spawned instances are independent (no parent, no barrier); a
    spawn whose unique key is occupied is dropped, as in ``insert_all``."""

    spawn: Sequence[type[Machine[Any]] | Spec] = field(default=(), kw_only=True)
    send: Sequence[Send] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        if self.spawn or self.send:  # an outcome without effects pays two tests
            self._freeze_effects()

    def _freeze_effects(self) -> None:
        spawned, sent = _effects(self.spawn, self.send)
        object.__setattr__(self, "spawn", spawned)
        object.__setattr__(self, "send", sent)


@dataclass(frozen=True, slots=True)
class Next(Effects, Generic[S]):
    """Go to ``step`` with ``state`` written (attempt resets to 0) — now, or after
    ``delay`` (seconds or ``timedelta``): a durable sleep that holds nothing meanwhile.
    ``rate_limit="name"`` (or ``"name:part"``) makes the next steps take a token of
    that bucket, ``None`` frees them of one; by default the row keeps its own (§23)."""

    step: StepRef[S]
    state: S | None = None
    delay: Seconds = field(default=0, kw_only=True)
    rate_limit: str | EllipsisType | None = field(default=..., kw_only=True)

    def __post_init__(self) -> None:
        if self.rate_limit is not ...:
            _check_rate_limit(self.rate_limit)
        # Checked here, not at commit, so a bad delay raises where it was written. The
        # default (int 0) skips the check: a plain Next is on every hot path.
        if self.delay.__class__ is not int or self.delay != 0:
            try:
                seconds(self.delay, "Next delay")
            except (TypeError, ValueError) as exc:
                raise InvalidOutcome(str(exc)) from exc
        if self.spawn or self.send:
            self._freeze_effects()


@dataclass(frozen=True, slots=True)
class Replay(Effects, Generic[S]):
    """Run the same step again after ``delay`` seconds, ``attempt + 1``."""

    state: S | None = None
    delay: Seconds = 0


@dataclass(frozen=True, slots=True)
class Await(Effects, Generic[S]):
    """Park until a signal whose name is ``signal`` (one name, or a non-empty sequence of
    names: a set) arrives (SPEC §6, §19) — or, with ``timeout`` (seconds or
    ``timedelta``, counted from the commit of this outcome) or ``deadline`` (an aware
    ``datetime``), until then at the latest; the same step then runs again with
    ``ctx.timed_out`` set.

    ``gd.Await(["approved", "rejected"], state, timeout=dt.timedelta(hours=24))``
    """

    signal: str | Sequence[str]
    state: S | None = None
    timeout: Seconds | None = field(default=None, kw_only=True)
    deadline: dt.datetime | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        # Checked here (SPEC §19): a bad wait raises where it was written. The plain
        # one-name Await without a bound costs one type check.
        if (
            self.signal.__class__ is not str
            or self.timeout is not None
            or self.deadline is not None
        ):
            _check_await(self)
        if self.spawn or self.send:
            self._freeze_effects()

    @property
    def names(self) -> tuple[str, ...]:
        """The awaited names, deduplicated and sorted (a set has no order)."""
        if isinstance(self.signal, str):
            return (self.signal,)
        return tuple(sorted(set(self.signal)))


def _check_await(a: Await[Any]) -> None:
    names: Any = [a.signal] if isinstance(a.signal, str) else a.signal
    if isinstance(names, bytes | bytearray | dict) or not hasattr(names, "__iter__"):
        raise InvalidOutcome(
            f"Await signal must be a name or a sequence of names, not {a.signal!r}"
        )
    listed = list(names)
    if not listed:
        raise InvalidOutcome("Await signal: the set of names is empty; await at least one name")
    for name in listed:
        if not isinstance(name, str) or not name:
            raise InvalidOutcome(f"Await signal names must be non-empty str, got {name!r}")
    if a.timeout is not None and a.deadline is not None:
        raise InvalidOutcome("Await takes timeout= or deadline=, not both")
    if a.timeout is not None:
        try:
            value = seconds(a.timeout, "Await timeout")
        except (TypeError, ValueError) as exc:
            raise InvalidOutcome(str(exc)) from exc
        if value <= 0:
            raise InvalidOutcome(f"Await timeout must be > 0 seconds, got {a.timeout!r}")
    if a.deadline is not None:
        if not isinstance(a.deadline, dt.datetime):
            raise InvalidOutcome(f"Await deadline must be a datetime, not {a.deadline!r}")
        if a.deadline.tzinfo is None or a.deadline.utcoffset() is None:
            raise InvalidOutcome(
                f"Await deadline must be an aware datetime (with a tzinfo), got {a.deadline!r}"
            )


@dataclass(frozen=True, slots=True)
class ScheduleChilds(Effects, Generic[S]):
    """Insert ``children`` and park at ``step`` until every child is terminal (SPEC §7)."""

    step: StepRef[S]
    children: Sequence[type[Machine[Any]] | Spec] = ()
    state: S | None = None


@dataclass(frozen=True, slots=True)
class Done(Effects):
    """Finish successfully, recording ``result`` (state is not rewritten)."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish as ``failed`` with ``last_error = str(reason)``."""

    reason: Any = "stopped"


Outcome = Next[S] | Replay[S] | Await[S] | ScheduleChilds[S] | Done | Stop
OUTCOME_TYPES = (Next, Replay, Await, ScheduleChilds, Done, Stop)


@dataclass(frozen=True, slots=True, init=False)
class Spec:
    """A machine plus insert options, for ``insert_all`` and ``ScheduleChilds``.

    ``gd.Spec(Pack, args={"sku": "A1"}, partition_key="customer-7")`` takes the same
    keyword options as ``Engine.insert``.
    """

    machine: type[Machine[Any]]
    options: dict[str, Any] = field(default_factory=dict)

    def __init__(self, machine: type[Machine[S]], **options: Unpack[InsertOptions[S]]) -> None:
        object.__setattr__(self, "machine", machine)
        object.__setattr__(self, "options", options)


__all__ = [
    "OUTCOME_TYPES",
    "Await",
    "Done",
    "Effects",
    "Next",
    "Outcome",
    "Replay",
    "ScheduleChilds",
    "Send",
    "Spec",
    "Stop",
]
