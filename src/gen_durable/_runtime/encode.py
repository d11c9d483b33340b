"""Validating and encoding a step's outcome for the completer (SPEC §4, §15).

Runs inside the executor's guarded region: whatever is wrong with an outcome — not an
outcome at all, a state of the wrong model, JSON PostgreSQL cannot store, a bad
delay, children that are not machines — raises here, inside the step, so it goes
through ``handle`` like any other error and the row is never left half-written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import outcomes as oc
from .._db import codec
from .._inputs import build_insert
from ..errors import EncodingError, InvalidOutcome
from ..machine import Machine, Signal
from ..steps import step_name
from . import effects
from .completer import Completion

if TYPE_CHECKING:
    from .executor import Claim

_KIND = {
    oc.Next: "next",
    oc.Replay: "replay",
    oc.Await: "await",
    oc.ScheduleChilds: "schedule_childs",
    oc.Done: "done",
    oc.Stop: "stop",
}


def describe_error(error: BaseException) -> str:
    """A readable one-line error for ``last_error`` (NUL-free: it goes in a text column)."""
    try:
        text = str(error)
    except Exception:  # a user's __str__ that raises must not fail the outcome
        text = "<str() of the error raised>"
    out = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return codec.storable(bounded(out))


# `last_error` is read by people and shown in one line of the CLI; a step that raises
# with a megabyte of text must not write a megabyte per failed attempt (the error
# history keeps its own, separately bounded, tracebacks).
MAX_ERROR_CHARS = 4000


def bounded(text: str) -> str:
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return f"{text[:MAX_ERROR_CHARS]}… ({len(text) - MAX_ERROR_CHARS} more characters cut)"


def reason_text(reason: Any) -> str:
    """``Stop(reason)`` records ``str(reason)`` (SPEC §4) — for an exception with its
    type in front: the default ``handle`` stops with the error itself, and a bare
    ``str`` of a ``KeyError`` reads ``'customer_id'``, which says nothing."""
    if isinstance(reason, BaseException):
        return describe_error(reason)
    try:
        text = str(reason)
    except Exception:
        text = f"<str() of the {type(reason).__name__} reason raised>"
    return codec.storable(bounded(text))


def seen_ids(signals: tuple[Signal, ...]) -> tuple[int, ...]:
    return tuple(s.id for s in signals)


def _state_text(outcome_state: Any, machine: type[Machine], into: Completion) -> str | None:
    if outcome_state is None:
        return None  # keep the stored state
    value = machine.coerce_state(outcome_state, "outcome state")
    if machine.__gd_state__ is not None:
        into.state_obj = value
    return codec.dumps(value, f"state of {machine.__gd_name__}")


def encode(
    outcome: Any, claim: Claim, machine: type[Machine], signals: tuple[Signal, ...]
) -> Completion:
    """Validate an outcome and encode it for the completer (raises inside the guard)."""
    kind = _KIND.get(type(outcome))
    if kind is None:
        raise InvalidOutcome(
            f"{machine.describe()} step {claim.step!r} returned {outcome!r}; a step must "
            "return one of gd.Next, gd.Replay, gd.Await, gd.ScheduleChilds, gd.Done, gd.Stop"
        )
    seen = seen_ids(signals)
    base = Completion(claim.id, claim.token, kind, consume=claim.awaits, seen=seen)
    if isinstance(outcome, oc.Next):
        base.step = _step_name(outcome.step, machine)
        base.state = _state_text(outcome.state, machine, base)
        if outcome.delay:  # validated when the Next was built
            base.delay = oc.seconds(outcome.delay, "Next delay")
        if outcome.rate_limit is not ...:  # "" clears the row's limit (SPEC §23)
            base.rate_limit = outcome.rate_limit or ""
    elif isinstance(outcome, oc.Replay):
        base.state = _state_text(outcome.state, machine, base)
        try:
            base.delay = oc.seconds(outcome.delay, "Replay delay")
        except (TypeError, ValueError) as exc:
            raise InvalidOutcome(str(exc)) from exc
    elif isinstance(outcome, oc.Await):
        base.awaits = _await_names(outcome)
        base.state = _state_text(outcome.state, machine, base)
        base.consume = None
        if outcome.timeout is not None:  # validated when the Await was built
            base.timeout = oc.seconds(outcome.timeout, "Await timeout")
        base.deadline = outcome.deadline
    elif isinstance(outcome, oc.ScheduleChilds):
        base.step = _step_name(outcome.step, machine)
        base.state = _state_text(outcome.state, machine, base)
        if isinstance(outcome.children, str | bytes) or not hasattr(outcome.children, "__iter__"):
            raise InvalidOutcome("ScheduleChilds children must be a list of machines or gd.Spec")
        try:
            base.children = build_insert(outcome.children, parent_id=claim.id)
        except EncodingError:
            raise
        except Exception as exc:
            raise InvalidOutcome(f"ScheduleChilds: {exc}") from exc
    elif isinstance(outcome, oc.Done):
        base.result = codec.dumps(outcome.result, f"result of {machine.__gd_name__}")
    else:
        base.error = reason_text(outcome.reason)
        return base
    if outcome.spawn or outcome.send:  # validated for shape when the outcome was built
        base.effects = effects.encode(outcome, machine.__gd_name__)
    return base


def _await_names(outcome: oc.Await) -> str | tuple[str, ...]:
    signal: Any = outcome.signal
    if signal.__class__ is str:  # the usual one-name wait: no set to build
        return codec.check_text(_nonempty(signal, "Await signal"), "Await signal")
    # The set was checked when the Await was built; the names must still be storable.
    return tuple(codec.check_text(n, "Await signal") for n in outcome.names)


def _nonempty(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidOutcome(f"{what} must be a non-empty str, got {value!r}")
    return value


def _step_name(value: Any, machine: type[Machine]) -> str:
    """The target step's name: a ``@gd.step`` method names itself (SPEC §26), and a
    step-method machine refuses a name it has no method for, inside the step that
    returned it, so the mistake goes through ``handle`` instead of parking the row at
    a step nothing can run."""
    name = codec.check_text(_nonempty(step_name(value), "step name"), "step name")
    steps = machine.__gd_steps__
    if steps is not None and name not in steps:
        raise InvalidOutcome(
            f"{machine.describe()} has no step {name!r} (its steps: {', '.join(sorted(steps))})"
        )
    return name
