"""Machine definitions: ``FSM``, ``Job``, typed ``State``, ``Context`` (SPEC §11–§13).

A machine is a class. Its keywords say where its instances run and what they carry::

    class Checkout(gd.FSM, queue="checkout", version=1, initial="start"):
        class State(gd.State):
            order: int
            n: int = 0

        async def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
            ...

Mistakes (both ``step`` and ``perform``, neither, a ``State`` that is not a pydantic
model, a bad keyword) raise :class:`~gen_durable.errors.InvalidMachine` when the class
statement runs, not when the first instance does. Every machine registers itself under
``(name, version)`` when it is created (:data:`REGISTRY`); see :mod:`.registry`.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from json import loads as _json_loads
from typing import TYPE_CHECKING, Any, ClassVar, ForwardRef, Generic, get_args

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypeVar

from . import outcomes as oc
from . import steps as steps_mod
from .errors import Cancel, InvalidMachine, InvalidOutcome

if TYPE_CHECKING:
    from collections.abc import Awaitable

# The state type of a machine, a context and an outcome. Its default keeps the bare
# names (``gd.FSM``, ``gd.Context``, ``gd.Outcome``) valid under ``mypy --strict``
# for machines with dict state or a nested ``State`` (SPEC §26).
S = TypeVar("S", default=Any)


class State(BaseModel):
    """Base class for typed machine state (a pydantic v2 model).

    Assignment is validated, so ``ctx.state.n = "x"`` fails at the line that does it.
    Prefer ``ctx.state.model_copy(update=...)`` to build the next state.
    """

    model_config = ConfigDict(validate_assignment=True)


@dataclass(frozen=True, slots=True)
class Signal:
    """One inbox entry: an item of ``ctx.signals`` and of ``engine.inbox(id)``.

    ``dedup_key`` and ``inserted_at`` are filled by ``inbox()`` only; in ``ctx.signals``
    they are None, because the pick, on every step's hot path, does not load them."""

    id: int
    name: str
    payload: Any
    dedup_key: str | None = None
    inserted_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Child:
    """One child as its parent sees it in ``ctx.childs`` after the join (SPEC §7)."""

    id: int
    fsm: str
    status: str
    state: Any
    result: Any
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Context(Generic[S]):
    """What a step knows about its instance. ``signals`` and ``childs`` are snapshots
    taken when the step was claimed: the whole inbox (oldest first) and this parent's
    children (by id)."""

    id: int
    fsm: str
    fsm_version: int
    step: str
    attempt: int
    state: S
    signals: tuple[Signal, ...] = ()
    childs: tuple[Child, ...] = ()


_OPTIONS = ("name", "version", "queue", "initial", "state", "max_attempts", "abstract")


class Machine(Generic[S]):
    """Common base of :class:`FSM` and :class:`Job`; not subclassed directly."""

    __gd_name__: ClassVar[str]
    __gd_version__: ClassVar[int]
    __gd_queue__: ClassVar[str]
    __gd_initial__: ClassVar[str]
    __gd_state__: ClassVar[type[BaseModel] | None]
    __gd_abstract__: ClassVar[bool] = True
    __gd_async_step__: ClassVar[bool] = False
    __gd_async_handle__: ClassVar[bool] = False
    # Step-method machines only: step name -> whether its method is async (SPEC §26).
    __gd_steps__: ClassVar[dict[str, bool] | None] = None

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        version: int | None = None,
        queue: str | None = None,
        initial: str | None = None,
        state: type[BaseModel] | None = None,
        max_attempts: int | None = None,
        abstract: bool = False,
        **unknown: Any,
    ) -> None:
        super().__init_subclass__()
        if unknown:
            raise InvalidMachine(
                f"{cls.__qualname__}: unknown class keyword(s) {sorted(unknown)}; "
                f"machines take {', '.join(_OPTIONS)}"
            )
        if cls.__module__ == __name__ and cls.__name__ in ("FSM", "Job"):
            return  # the two public bases themselves
        cls.__gd_abstract__ = abstract
        base_is_job = issubclass(cls, Job)
        cls.__gd_name__ = _check_name(cls, name)
        cls.__gd_version__ = _check_int(cls, "version", version, inherit="__gd_version__", low=1)
        cls.__gd_queue__ = _check_str(cls, "queue", queue, "__gd_queue__", "default")
        cls.__gd_initial__ = _check_str(cls, "initial", initial, "__gd_initial__", "start")
        cls.__gd_state__ = _adopt_state(cls, state)
        if max_attempts is not None and not base_is_job:
            raise InvalidMachine(f"{cls.__qualname__}: max_attempts applies to gd.Job only")
        if base_is_job:
            cls_job: Any = cls
            cls_job.max_attempts = _check_int(
                cls, "max_attempts", max_attempts, inherit="max_attempts", low=1
            )
        if abstract:
            return
        _check_entry_point(cls, base_is_job)
        from .registry import REGISTRY

        REGISTRY.add(cls)

    # -- state helpers used by the engine -------------------------------------------

    @classmethod
    def load_state(cls, text: str | None) -> Any:
        """Decode stored JSON text into the machine's state (model or dict)."""
        model = cls.__gd_state__
        if model is None:
            if text == "{}":  # the common empty state (a job without arguments)
                return {}
            value = _json_loads(text) if text else None
            return {} if value is None else value
        return model.model_validate_json(text or "{}")

    @classmethod
    def coerce_state(
        cls, value: Any, what: str = "state", *, error: type[Exception] = InvalidOutcome
    ) -> Any:
        """Validate user-supplied state against the machine's model (before writing).

        ``None`` means the default (or, in an outcome, keep the stored state). A value
        of the wrong shape raises ``error``: ``InvalidOutcome`` for an outcome's state
        (it goes through ``handle``), ``ConfigurationError`` for an insert."""
        model = cls.__gd_state__
        if model is None:
            if type(value) is dict:  # the usual plain state: skip the ABC checks below
                return value
            if value is None:
                return {}
            if isinstance(value, BaseModel):
                return value.model_dump(mode="json")
            if isinstance(value, Mapping):
                return value if isinstance(value, dict) else dict(value)
            # A step reads its state as a dict (``ctx.state["n"]``); a list or scalar
            # stored here would only fail later, in the step, on every retry.
            raise error(
                f"{cls.__gd_name__}: {what} must be a JSON object (a dict), "
                f"not {type(value).__name__} {_short(value)}; None means the default"
            )
        if type(value) is model or isinstance(value, model):
            return value
        if isinstance(value, BaseModel):
            raise error(
                f"{cls.__gd_name__}: {what} is a {type(value).__name__}, expected {model.__name__}"
            )
        if value is None:
            value = {}
        if isinstance(value, Mapping):
            return model.model_validate(value)
        raise error(
            f"{cls.__gd_name__}: {what} must be a {model.__name__} or a mapping, "
            f"not {type(value).__name__}"
        )

    @classmethod
    def describe(cls) -> str:
        return f"{cls.__gd_name__} v{cls.__gd_version__}"


class FSM(Machine[S]):
    """A multi-step machine: one ``@gd.step`` method per step, or one
    ``step(self, step, ctx)`` dispatcher, returning an outcome (SPEC §26).

    ``gd.FSM[OrderState]`` makes ``ctx.state`` an ``OrderState`` for type checkers and,
    without a ``state=`` keyword or a nested ``State``, the stored state's model. The
    default :meth:`handle` turns an exception into ``Stop(error)``.
    """

    if TYPE_CHECKING:
        # Declared for type checkers only (the class check looks for a real one): an
        # editor infers an unannotated dispatcher's ``ctx`` from it, and mypy refuses
        # a dispatcher whose ``ctx`` names another state type.
        def step(self, step: str, ctx: Context[S]) -> oc.Outcome[S] | Awaitable[oc.Outcome[S]]:
            """Run ``step`` and return the outcome (the dispatcher form)."""

    def handle(self, error: Exception, ctx: Context[S]) -> oc.Outcome:
        """Decide what an exception raised by ``step`` means (SPEC §5)."""
        return oc.Stop(error)


class Job(Machine[S]):
    """A one-step machine: define ``perform(self, args[, ctx])`` (SPEC §12).

    Returning a value finishes it with that ``result``; raising ``gd.Cancel`` fails it
    at once; any other exception retries after :meth:`backoff` until ``max_attempts``.
    """

    max_attempts: ClassVar[int] = 20
    __gd_perform_takes_ctx__: ClassVar[bool] = True

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before the next attempt: ``min(2 ** attempt, 300)``."""
        return float(min(2**attempt, 300))

    def handle(self, error: Exception, ctx: Context[S]) -> oc.Outcome:
        """Retry with :meth:`backoff` while attempts remain, else fail."""
        if isinstance(error, Cancel):
            return oc.Stop(error.reason)
        if ctx.attempt + 1 < self.max_attempts:
            return oc.Replay(ctx.state, delay=self.backoff(ctx.attempt))
        return oc.Stop(error)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- class-creation checks ---------------------------------------------------------


def _check_name(cls: type, name: str | None) -> str:
    if name is None:
        return f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise InvalidMachine(f"{cls.__qualname__}: name must be a non-empty str, got {name!r}")
    return name


def _check_int(cls: type, what: str, value: int | None, *, inherit: str, low: int) -> int:
    if value is None:
        inherited = getattr(cls, inherit, None)
        return inherited if isinstance(inherited, int) else (1 if what == "version" else 20)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidMachine(f"{cls.__qualname__}: {what} must be an int >= {low}, got {value!r}")
    return value


def _check_str(cls: type, what: str, value: str | None, inherit: str, default: str) -> str:
    if value is None:
        inherited = getattr(cls, inherit, None)
        return inherited if isinstance(inherited, str) else default
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidMachine(f"{cls.__qualname__}: {what} must be a non-empty str, got {value!r}")
    return value


def _adopt_state(cls: type, explicit: type[BaseModel] | None) -> type[BaseModel] | None:
    """The state model, from (SPEC §26): ``state=``, a nested ``State``, the generic
    parameter of ``gd.FSM[S]``/``gd.Job[S]``, what a base class had; else dict state."""
    nested = cls.__dict__.get("State")
    if explicit is not None:
        if not (isinstance(explicit, type) and issubclass(explicit, BaseModel)):
            raise InvalidMachine(
                f"{cls.__qualname__}: state= must be a pydantic model class, got {explicit!r}"
            )
        return explicit
    if nested is not None:
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            raise InvalidMachine(
                f"{cls.__qualname__}.State must subclass gd.State (a pydantic model); "
                f"got {nested!r}"
            )
        return nested
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin, args = getattr(base, "__origin__", None), get_args(base)
        if not (args and isinstance(origin, type) and issubclass(origin, Machine)):
            continue
        param = args[0]
        if param is Any:  # a class since Python 3.11, but no model
            break
        if isinstance(param, type) and issubclass(param, BaseModel):
            return param
        if isinstance(param, type) and issubclass(param, Mapping):
            return None  # dict state (a TypedDict is a dict at run time)
        if isinstance(param, type):
            raise InvalidMachine(
                f"{cls.__qualname__}: the state type of gd.FSM[...]/gd.Job[...] must be "
                f"a pydantic model (gd.State) or a dict type, got {param!r}"
            )
        if isinstance(param, str | ForwardRef):
            # Adopting nothing would give dict state where the type checker sees a model.
            raise InvalidMachine(
                f"{cls.__qualname__}: gd.FSM[{param!r}] names the state type by a string; "
                "pass the model class itself (defined before the machine)"
            )
        break  # a TypeVar (a generic base class): no model to adopt at run time
    inherited: type[BaseModel] | None = getattr(cls, "__gd_state__", None)
    return inherited


def _defines(cls: type, attr: str, base: type) -> bool:
    """Whether ``attr`` is defined somewhere below ``base`` in ``cls``'s MRO."""
    for klass in cls.__mro__:
        if klass is base:
            return False
        if attr in klass.__dict__:
            return True
    return False


def _check_entry_point(cls: type, is_job: bool) -> None:
    base = Job if is_job else FSM
    has_step = _defines(cls, "step", base)
    has_perform = _defines(cls, "perform", base)
    where = cls.__qualname__
    steps = steps_mod.collect(cls)
    if steps:
        steps_mod.adopt(cls, is_job, steps, has_step or has_perform)
        return
    if has_step and has_perform:
        raise InvalidMachine(f"{where} defines both step and perform; a machine has exactly one")
    if is_job and not has_perform:
        raise InvalidMachine(
            f"{where} is a gd.Job and must define perform(self, args[, ctx])"
            + (" (it defines step: derive from gd.FSM instead)" if has_step else "")
        )
    if not is_job and not has_step:
        raise InvalidMachine(
            f"{where} is a gd.FSM and must define step(self, step, ctx) or @gd.step methods"
            + (" (it defines perform: derive from gd.Job instead)" if has_perform else "")
            + "; pass abstract=True for a base class without one"
        )
    entry = cls.__dict__.get("perform" if is_job else "step") or getattr(
        cls, "perform" if is_job else "step"
    )
    if not callable(entry):
        raise InvalidMachine(f"{where}: {'perform' if is_job else 'step'} must be a method")
    target: Any = cls
    target.__gd_async_step__ = inspect.iscoroutinefunction(entry)
    target.__gd_async_handle__ = inspect.iscoroutinefunction(getattr(cls, "handle", None))
    if is_job:
        params = [
            p
            for p in inspect.signature(entry).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(params) not in (2, 3):
            raise InvalidMachine(f"{where}.perform must take (self, args) or (self, args, ctx)")
        target.__gd_perform_takes_ctx__ = len(params) == 3


__all__ = ["FSM", "Child", "Context", "Job", "Machine", "Signal", "State"]
