"""Inserting, signalling and reading instances — shared by ``Engine`` and ``SyncClient``.

Validation and encoding happen here, before any statement runs, so bad input raises a
typed error and writes nothing (SPEC §15). The statements come from the one SQL
module; ``Engine`` runs them on an async connection, :class:`SyncClient` on a sync one.

``SyncClient`` is for hosts without an event loop (Django, Flask, scripts)::

    with gd.SyncClient(dsn) as client:
        order_id = client.insert(Checkout, state={"order": 42})
        client.signal(order_id, "payment_confirmed", {"amount": 10})
        print(client.get(order_id).status)
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any, Literal, TypeVar

import psycopg

from ._db import codec, runner
from ._db.queries import NON_TERMINAL, STATUSES, InsertRows, Queries, Stmt
from ._db.statements.inserts import Inserted
from ._db.statements.signals import Delivered
from .errors import ConfigurationError, Duplicate, EncodingError, NoSuchInstance
from .instance import Instance as Instance  # re-exported: gen_durable.client.Instance
from .machine import Child, Machine, Signal
from .outcomes import Spec, seconds

R = TypeVar("R")

INSERT_OPTIONS = frozenset(
    {
        "state",
        "args",
        "step",
        "queue",
        "priority",
        "partition_key",
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
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    statuses = list(value)
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise ConfigurationError(
            f"unknown status(es) {unknown} in unique_scope; statuses are {list(STATUSES)}"
        )
    # Every non-terminal status leads back to every other one (a Next returns to
    # runnable, a signal wakes a parked row), so a scope holding only some of them
    # would let a row leave its key and later collide re-entering it. The scope is
    # therefore all four non-terminal statuses, plus `done`/`failed` to keep the key
    # after the instance finished.
    if not set(NON_TERMINAL) <= set(statuses):
        raise ConfigurationError(
            f"unique_scope {statuses} must include every non-terminal status "
            f"{list(NON_TERMINAL)}; add 'done' and/or 'failed' to keep the key after "
            "the instance finishes"
        )
    return "{" + ",".join(dict.fromkeys(statuses)) + "}"


_DEFAULT_SCOPE = "{" + ",".join(NON_TERMINAL) + "}"


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
        step = codec.check_text(options.get("step") or step, "step")
        queue = codec.check_text(options.get("queue") or queue, "queue")
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
    rows.eligible_at.append(eligible_at)
    rows.delay.append(delay)
    rows.unique_key.append(ukey)
    rows.unique_scope.append(scope)
    rows.parent_id.append(parent_id)


def build_insert(items: Iterable[object], parent_id: int | None = None) -> InsertRows:
    """Encode a batch of ``Spec``s / classes into insert arrays."""
    rows = InsertRows.empty()
    for item in items:
        machine, options = _machine_of(item)
        add_insert(rows, machine, options, parent_id)
    return rows


def build_one(machine: object, options: dict[str, Any]) -> InsertRows:
    rows = InsertRows.empty()
    add_insert(rows, _check_machine(machine), options)
    return rows


def inserted_ids(row: Inserted | None) -> list[int]:
    return list(row.ids or []) if row else []


def check_single(ids: list[int], rows: InsertRows) -> int:
    if not ids:
        raise Duplicate(rows.fsm[0], rows.unique_key[0] or b"")
    return ids[0]


def wait_verdict(
    inst: Instance | None, instance_id: int, expired: bool, timeout: float | None
) -> Instance | None:
    """One poll of ``wait``: the instance once terminal, None to poll again;
    ``gd.NoSuchInstance`` for an unknown id, ``TimeoutError`` once ``expired``."""
    if inst is None:
        raise NoSuchInstance(instance_id)
    if inst.terminal:
        return inst
    if expired:
        raise TimeoutError(f"instance {instance_id} still {inst.status} after {timeout}s")
    return None


def check_id(value: object) -> int:
    """An instance id is an ``int`` (not a bool), in every call that takes one.

    Checked before any statement runs: PostgreSQL would cast ``"1"`` to a bigint and
    answer as if ``1`` had been passed, so one call would accept what another refuses.
    A ``str``/``bytes`` is reserved for addressing by ``unique_key`` (SPEC §20).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    hint = ""
    if isinstance(value, str | bytes):
        hint = " (addressing an instance by its unique_key is not supported yet)"
    raise ConfigurationError(
        f"an instance id is an int, not {type(value).__name__} {value!r}{hint}"
    )


def signal_params(
    target_id: int, name: str, payload: Any, dedup_key: str | None
) -> tuple[int, str, str, str | None]:
    check_id(target_id)
    codec.check_text(name, "signal name")
    if not name:
        raise EncodingError("signal name must be a non-empty str")
    if dedup_key is not None:
        codec.check_text(dedup_key, "dedup_key")
    return target_id, name, codec.dumps({} if payload is None else payload, "payload"), dedup_key


Delivery = Literal["stored", "duplicate", "finished"]
"""What a signal did: stored; not stored again because its ``dedup_key`` already was
(the target is live); or refused because the target is finished (SPEC §6)."""


def delivery(row: Delivered | None, target_id: int) -> Delivery:
    """What the signal statement's row says happened."""
    if row is None:
        raise NoSuchInstance(target_id)
    if row.status in ("done", "failed"):
        return "finished"
    # A live target stores the signal unless ON CONFLICT found its dedup_key.
    return "stored" if row.signal_id is not None else "duplicate"


class SyncClient:
    """The synchronous client: ``insert``, ``insert_all``, ``signal``, ``get``, ``wait``,
    ``inbox``, ``children``.

    Each call takes ``conn=`` to run inside the caller's own open psycopg transaction
    (transactional enqueue). Without it, calls run on the client's own autocommit
    connection, opened lazily. Database failures raise ``gd.DatabaseUnavailable`` /
    ``gd.DatabaseError`` (the driver's error as ``__cause__``), as on ``Engine``.
    """

    def __init__(self, dsn: str | None = None, *, schema: str = "public") -> None:
        from .engine import resolve_dsn

        self._dsn = resolve_dsn(dsn)
        self._queries = Queries(schema)
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self, conn: psycopg.Connection[Any] | None) -> psycopg.Connection[Any]:
        if conn is not None:
            return conn
        if self._conn is None or self._conn.closed:
            self._conn = runner.connect_sync(self._dsn)
        return self._conn

    def _one(self, conn: psycopg.Connection[Any] | None, stmt: Stmt[R]) -> R | None:
        return runner.fetch_one_sync(self._connection(conn), stmt)

    def _all(self, stmt: Stmt[R]) -> list[R]:
        return runner.fetch_sync(self._connection(None), stmt)

    def insert(
        self, machine: type[Machine], *, conn: psycopg.Connection[Any] | None = None, **options: Any
    ) -> int:
        rows = build_one(machine, options)
        return check_single(inserted_ids(self._one(conn, self._queries.insert(rows))), rows)

    def insert_all(
        self, specs: Iterable[object], *, conn: psycopg.Connection[Any] | None = None
    ) -> list[int]:
        rows = build_insert(specs)
        if not len(rows):
            return []
        return inserted_ids(self._one(conn, self._queries.insert(rows)))

    def signal(
        self,
        target_id: int,
        name: str,
        payload: Any = None,
        *,
        dedup_key: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> bool:
        params = signal_params(target_id, name, payload, dedup_key)
        return delivery(self._one(conn, self._queries.signal(*params)), target_id) != "finished"

    def get(
        self, instance_id: int, *, conn: psycopg.Connection[Any] | None = None
    ) -> Instance | None:
        return self._one(conn, self._queries.get(check_id(instance_id)))

    def inbox(self, instance_id: int) -> list[Signal]:
        """The instance's stored signals, oldest first (see ``Engine.inbox``)."""
        return self._all(self._queries.inbox(check_id(instance_id)))

    def children(self, instance_id: int) -> list[Child]:
        """The instance's children, by id (see ``Engine.children``)."""
        return self._all(self._queries.children(check_id(instance_id)))

    def wait(
        self, instance_id: int, *, timeout: float | None = None, interval: float = 0.05
    ) -> Instance:
        """Block until the instance is terminal and return it (see ``Engine.wait``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            expired = deadline is not None and time.monotonic() >= deadline
            done = wait_verdict(self.get(instance_id), instance_id, expired, timeout)
            if done is not None:
                return done
            time.sleep(interval)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
