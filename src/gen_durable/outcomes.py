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
class Next(Generic[S]):
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


@dataclass(frozen=True, slots=True)
class Replay(Generic[S]):
    """Run the same step again after ``delay`` seconds, ``attempt + 1``."""

    state: S | None = None
    delay: Seconds = 0


@dataclass(frozen=True, slots=True)
class Await(Generic[S]):
    """Park until a signal named ``signal`` arrives (SPEC §6)."""

    signal: str
    state: S | None = None


@dataclass(frozen=True, slots=True)
class ScheduleChilds(Generic[S]):
    """Insert ``children`` and park at ``step`` until every child is terminal (SPEC §7)."""

    step: StepRef[S]
    children: Sequence[type[Machine[Any]] | Spec] = ()
    state: S | None = None


@dataclass(frozen=True, slots=True)
class Done:
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
    "Next",
    "Outcome",
    "Replay",
    "ScheduleChilds",
    "Spec",
    "Stop",
]
