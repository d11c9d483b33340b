"""Validating and encoding new instances, before anything is written (SPEC §10, §11, §15).

Shared by every way an instance comes to exist — ``Engine.insert``/``insert_all``,
``SyncClient``, a step's ``ScheduleChilds`` — so they refuse the same things with the
same typed errors: options are checked, the state goes through the machine's model,
keys and scopes are normalised, times become UTC. The result is an
:class:`~gen_durable._db.queries.InsertRows` batch ready for one insert statement.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from itertools import repeat
from typing import Any, Generic

from typing_extensions import TypedDict, TypeVar

from ._db import codec
from ._db.queries import NON_TERMINAL, STATUSES, InsertRows
from .errors import ConfigurationError
from .flow import partition_limit, rate_limit_ref
from .machine import Machine
from .outcomes import Seconds, Spec, StepRef, seconds
from .steps import step_name

S = TypeVar("S", default=Any)


class InsertOptions(TypedDict, Generic[S], total=False):
    """The keyword options of ``insert`` and ``gd.Spec``, typed (SPEC §11, §26).

    ``Engine.insert(Order, state=...)`` checks ``state`` against the machine's state
    type ``S`` (``gd.FSM[S]``) and refuses a misspelt option under a type checker;
    :data:`INSERT_OPTIONS` is the same set at run time (a test keeps them equal)."""

    state: S | Mapping[str, Any] | None
    args: S | Mapping[str, Any] | None
    step: StepRef[S] | None
    queue: str | None
    priority: int
    partition_key: str | None
    partition_limit: int
    rate_limit: str | None
    unique_key: str | bytes | None
    unique_scope: str | Iterable[str] | None
    eligible_at: dt.datetime | None
    schedule_at: dt.datetime | None
    schedule_in: Seconds | None


INSERT_OPTIONS = frozenset(
    {
        "state",
        "args",
        "step",
        "queue",
        "priority",
        "partition_key",
        "partition_limit",
        "rate_limit",
        "unique_key",
        "unique_scope",
        "eligible_at",
        "schedule_at",
        "schedule_in",
    }
)


def _machine_of(item: object) -> tuple[type[Machine], dict[str, Any]]:
    if isinstance(item, Spec):
        return _check_machine(item.machine), dict(item.options)
    return _check_machine(item), {}


def _check_machine(machine: object) -> type[Machine]:
    if isinstance(machine, type) and issubclass(machine, Machine) and not machine.__gd_abstract__:
        return machine
    raise ConfigurationError(f"expected a gd.FSM/gd.Job subclass or gd.Spec, got {machine!r}")


def _timestamp(value: Any, what: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise ConfigurationError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigurationError(
            f"{what} must be timezone-aware (e.g. datetime.now(timezone.utc)); got {value}"
        )
    # Python allows UTC offsets up to ±23:59, PostgreSQL only up to ±15:59: the same
    # instant in UTC is stored whatever offset the caller used.
    return value.astimezone(dt.UTC)


def _scope(value: Any) -> str | None:
    """Any subset of the statuses (SPEC §10, revised in v2): the row takes its key at
    insert when the scope holds ``runnable`` and frees it for good once its status
    leaves the scope. A scope without ``runnable`` — the empty one included — never
    occupies the key; it is accepted, not refused, as the subset it is."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    try:
        statuses = list(value)
    except TypeError:
        raise ConfigurationError(
            f"unique_scope must be a status name or a list of them, not {type(value).__name__}"
        ) from None
    wrong = [s for s in statuses if not isinstance(s, str)]
    if wrong:
        raise ConfigurationError(
            f"unique_scope items must be status names (str), got {wrong!r}; "
            f"statuses are {list(STATUSES)}"
        )
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise ConfigurationError(
            f"unknown status(es) {unknown} in unique_scope; statuses are {list(STATUSES)}"
        )
    return "{" + ",".join(dict.fromkeys(statuses)) + "}"


_DEFAULT_SCOPE = "{" + ",".join(NON_TERMINAL) + "}"


def _name(value: Any, what: str) -> str:
    """A step or queue name: a non-empty text (an empty one is refused, never replaced
    by the machine's default behind the caller's back)."""
    if value == "":
        raise ConfigurationError(f"{what} must be a non-empty str")
    return codec.check_text(value, what)


def add_insert(
    rows: InsertRows,
    machine: type[Machine],
    options: dict[str, Any],
    parent_id: int | None = None,
) -> None:
    """Validate one instance's options and append it to ``rows`` (SPEC §11)."""
    step = machine.__gd_initial__
    queue = machine.__gd_queue__
    priority = 0
    pkey: str | None = None
    plimit = 1
    rlimit: str | None = None
    ukey: bytes | None = None
    scope: str | None = None
    eligible_at: dt.datetime | None = None
    delay: float | None = None
    value: Any = None
    if options:  # a bare class (the common batch item) skips all of this
        unknown = options.keys() - INSERT_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown insert option(s) {sorted(unknown)}; options are {sorted(INSERT_OPTIONS)}"
            )
        state = options.get("state")
        args = options.get("args")
        if state is not None and args is not None:
            raise ConfigurationError("pass state= or args=, not both (they are the same thing)")
        value = args if args is not None else state
        step = _initial_step(machine, options.get("step", step))
        queue = _name(options.get("queue", queue), "queue")
        priority = options.get("priority", 0)
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not (-32768 <= priority <= 32767)
        ):
            raise ConfigurationError(f"priority must be an int in -32768..32767, got {priority!r}")
        pkey = options.get("partition_key")
        if pkey is not None:
            codec.check_text(pkey, "partition_key")
        plimit = partition_limit(options.get("partition_limit", 1))
        rlimit = rate_limit_ref(options.get("rate_limit"))
        ukey = codec.key_bytes(options.get("unique_key"))
        scope = _scope(options.get("unique_scope"))
        if ukey is not None and scope is None:
            scope = _DEFAULT_SCOPE
        if options.get("eligible_at") is not None:
            eligible_at = _timestamp(options["eligible_at"], "eligible_at")
        elif options.get("schedule_at") is not None:
            eligible_at = _timestamp(options["schedule_at"], "schedule_at")
        elif options.get("schedule_in") is not None:
            try:
                delay = seconds(options["schedule_in"], "schedule_in")
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(str(exc)) from exc
    # The state model validates before anything is written (pydantic.ValidationError).
    state = machine.coerce_state(value, error=ConfigurationError)
    encoded = codec.dumps(state, f"state of {machine.__gd_name__}")
    rows.fsm.append(machine.__gd_name__)
    rows.fsm_version.append(machine.__gd_version__)
    rows.step.append(step)
    rows.state.append(encoded)
    rows.queue.append(queue)
    rows.priority.append(priority)
    rows.partition_key.append(pkey)
    rows.partition_limit.append(plimit)
    rows.rate_limit.append(rlimit)
    rows.eligible_at.append(eligible_at)
    rows.delay.append(delay)
    rows.unique_key.append(ukey)
    rows.unique_scope.append(scope)
    rows.parent_id.append(parent_id)


def _initial_step(machine: type[Machine], value: Any) -> str:
    """An insert's ``step=``: a name or a ``@gd.step`` method; a step-method machine
    refuses a step it has no method for before anything is written (SPEC §26)."""
    name = _name(step_name(value), "step")
    steps = machine.__gd_steps__
    if steps is not None and name not in steps:
        raise ConfigurationError(
            f"{machine.describe()} has no step {name!r} (its steps: {', '.join(sorted(steps))})"
        )
    return name


def build_insert(items: Iterable[object], parent_id: int | None = None) -> InsertRows:
    """Encode a batch of ``Spec``s / classes into insert arrays.

    The same item repeated (``[Noop] * n``, ``[spec] * n``) is validated and encoded
    once and its row repeated, when its machine has no state model: its row is then
    a function of the item alone. A model may fill fields from a ``default_factory``
    (a fresh id, a timestamp), so each of its rows is built on its own."""
    rows = InsertRows.empty()
    last: object = None  # the previous item, when its row may be repeated
    repeats = 0
    for item in items:
        if item is last:
            repeats += 1
            continue
        if repeats:
            _repeat_last(rows, repeats)
            repeats = 0
        machine, options = _machine_of(item)
        add_insert(rows, machine, options, parent_id)
        last = item if machine.__gd_state__ is None else None
    if repeats:
        _repeat_last(rows, repeats)
    return rows


_COLUMNS = tuple(f.name for f in dataclasses.fields(InsertRows))


def _repeat_last(rows: InsertRows, n: int) -> None:
    for name in _COLUMNS:
        column: list[Any] = getattr(rows, name)
        column.extend(repeat(column[-1], n))


def build_one(machine: object, options: dict[str, Any]) -> InsertRows:
    rows = InsertRows.empty()
    add_insert(rows, _check_machine(machine), options)
    return rows
