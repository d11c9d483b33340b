"""Inserting, signalling and reading instances — shared by ``Engine`` and ``SyncClient``.

Validation and encoding happen before any statement runs (new instances in
``_inputs.py``, signals and ids here), so bad input raises a typed error and writes
nothing (SPEC §15). The statements come from the one SQL
module; ``Engine`` runs them on an async connection, :class:`SyncClient` on a sync one.

``SyncClient`` is for hosts without an event loop (Django, Flask, scripts)::

    with gd.SyncClient(dsn) as client:
        order_id = client.insert(Checkout, state={"order": 42})
        client.signal(order_id, "payment_confirmed", {"amount": 10})
        print(client.get(order_id).status)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, TypeVar

import psycopg
from typing_extensions import Unpack

from ._db import bulk, codec, runner
from ._db.bulk import inserted_ids
from ._db.queries import TERMINAL, InsertRows, Queries, Stmt
from ._db.statements.signals import Delivered
from ._dsn import resolve_dsn
from ._inputs import INSERT_OPTIONS, InsertOptions, build_insert, build_one
from ._keys import Delivery, SignalByKey, Target, check_target
from ._limits import delete_limit, set_limit
from .errors import ConfigurationError, Duplicate, EncodingError, NoSuchInstance
from .flow import RateLimit
from .instance import Instance as Instance  # re-exported: gen_durable.client.Instance
from .machine import Child, Machine, Signal
from .outcomes import Spec

R = TypeVar("R")
S = TypeVar("S")

__all__ = [
    "INSERT_OPTIONS",
    "Delivery",
    "Instance",
    "SyncClient",
    "Target",
    "build_insert",
    "build_one",
    "check_target",
]


def check_single(ids: list[int], rows: InsertRows) -> int:
    if not ids:
        raise Duplicate(rows.fsm[0], rows.unique_key[0] or b"")
    return ids[0]


def wait_verdict(
    inst: Instance | None, instance_id: int | bytes, expired: bool, timeout: float | None
) -> Instance | None:
    """One poll of ``wait``: the instance once terminal, None to poll again;
    ``gd.NoSuchInstance`` for an unknown id, ``TimeoutError`` once ``expired``."""
    if inst is None:
        raise NoSuchInstance(instance_id)
    if inst.terminal:
        return inst
    if expired:
        raise TimeoutError(f"instance {instance_id!r} still {inst.status} after {timeout}s")
    return None


def signal_params(
    target: object, name: str, payload: Any, dedup_key: str | None
) -> tuple[int | bytes, str, str, str | None]:
    """A signal's target (an id, or a key as bytes), name, payload and dedup key,
    validated and encoded (nothing has run yet)."""
    target_id = check_target(target)
    if not isinstance(name, str):
        raise EncodingError(f"signal name must be a non-empty str, not {type(name).__name__}")
    codec.check_text(name, "signal name")
    if not name:
        raise EncodingError("signal name must be a non-empty str")
    if dedup_key is not None:
        codec.check_text(dedup_key, "dedup_key")
    return target_id, name, codec.dumps({} if payload is None else payload, "payload"), dedup_key


def by_key(
    queries: Queries, params: tuple[int | bytes, str, str, str | None], start: object
) -> SignalByKey | None:
    """The signal-with-start plan for a key target; None for an id (no ``start``)."""
    target = params[0]
    if isinstance(target, bytes):
        return SignalByKey(queries, target, params, start)
    if start is not None:
        raise ConfigurationError(
            f"start= needs the signal addressed to a unique_key (str or bytes), not the "
            f"id {target}: the new instance takes that key"
        )
    return None


def get_stmt(queries: Queries, target: object) -> Stmt[Instance]:
    """``get``'s statement for an id or a key (SPEC §20)."""
    checked = check_target(target)
    return queries.get_key(checked) if isinstance(checked, bytes) else queries.get(checked)


def inbox_stmt(queries: Queries, target: object) -> Stmt[Signal]:
    """``inbox``'s statement for an id or a key (the row ``get`` returns)."""
    checked = check_target(target)
    return queries.inbox_key(checked) if isinstance(checked, bytes) else queries.inbox(checked)


def children_stmt(queries: Queries, target: object) -> Stmt[Child]:
    """``children``'s statement for an id or a key (the row ``get`` returns)."""
    checked = check_target(target)
    if isinstance(checked, bytes):
        return queries.children_key(checked)
    return queries.children(checked)


def delivery(row: Delivered | None, target_id: int | bytes) -> Delivery:
    """What the signal statement's row says happened."""
    if row is None:
        raise NoSuchInstance(target_id)
    if row.status in TERMINAL:
        return "finished"
    # A live target stores the signal unless ON CONFLICT found its dedup_key.
    return "stored" if row.signal_id is not None else "duplicate"


class SyncClient:
    """The synchronous client: ``insert``, ``insert_all``, ``signal``, ``get``, ``wait``,
    ``inbox``, ``children``, and the rate limits (``set_rate_limit``,
    ``delete_rate_limit``, ``rate_limits``).

    Each call takes ``conn=`` to run inside the caller's own open psycopg transaction
    (transactional enqueue). Without it, calls run on the client's own autocommit
    connection, opened lazily. Database failures raise ``gd.DatabaseUnavailable`` /
    ``gd.DatabaseError`` (the driver's error as ``__cause__``), as on ``Engine``.
    """

    def __init__(self, dsn: str | None = None, *, schema: str = "public") -> None:
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
        self,
        machine: type[Machine[S]],
        *,
        conn: psycopg.Connection[Any] | None = None,
        **options: Unpack[InsertOptions[S]],
    ) -> int:
        rows = build_one(machine, dict(options))
        return check_single(inserted_ids(self._one(conn, self._queries.insert(rows))), rows)

    def insert_all(
        self, specs: Iterable[object], *, conn: psycopg.Connection[Any] | None = None
    ) -> list[int]:
        rows = build_insert(specs)
        if not len(rows):
            return []
        return bulk.insert_all_sync(self._connection(conn), self._queries, rows)

    def signal(
        self,
        target: Target,
        name: str,
        payload: Any = None,
        *,
        dedup_key: str | None = None,
        start: Spec | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> bool:
        """Deliver a signal to an id or a key's occupant (see ``Engine.signal``);
        ``start=`` inserts that Spec with the signal when nothing occupies the key."""
        params = signal_params(target, name, payload, dedup_key)
        plan = by_key(self._queries, params, start)
        if plan is None:
            target_id, name, payload_text, dedup = params
            assert isinstance(target_id, int)
            row = self._one(conn, self._queries.signal(target_id, name, payload_text, dedup))
            return delivery(row, target_id) != "finished"
        stmt = plan.first()
        while True:
            found = self._one(conn, stmt)
            started = plan.after_signal(found)
            if started is None:
                break
            inserted = self._one(conn, started)
            again = plan.after_start(inserted)
            if again is None:
                break
            stmt = again
        return plan.result() != "finished"

    def get(
        self, target: Target, *, conn: psycopg.Connection[Any] | None = None
    ) -> Instance | None:
        """The instance of an id, or of a key: its occupant, else the latest row that
        carried it (see ``Engine.get``)."""
        return self._one(conn, get_stmt(self._queries, target))

    def inbox(self, target: Target) -> list[Signal]:
        """The instance's stored signals, oldest first (see ``Engine.inbox``)."""
        return self._all(inbox_stmt(self._queries, target))

    def children(self, target: Target) -> list[Child]:
        """The instance's children, by id (see ``Engine.children``)."""
        return self._all(children_stmt(self._queries, target))

    def wait(
        self, target: Target, *, timeout: float | None = None, interval: float = 0.05
    ) -> Instance:
        """Block until the instance is terminal and return it (see ``Engine.wait``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        name = check_target(target)
        while True:
            expired = deadline is not None and time.monotonic() >= deadline
            done = wait_verdict(self.get(target), name, expired, timeout)
            if done is not None:
                return done
            time.sleep(interval)

    def set_rate_limit(
        self, name: str, rate: float, *, per: float = 1.0, burst: float | None = None
    ) -> RateLimit:
        """Create or change the token bucket ``name`` that every node enforces (SPEC §23),
        as :meth:`Engine.set_rate_limit <gen_durable.Engine.set_rate_limit>`."""
        got = self._one(None, set_limit(self._queries, name, rate, per, burst))
        assert got is not None  # the upsert returns its row
        return got

    def delete_rate_limit(self, name: str) -> bool:
        """Delete a rate limit (True if it existed); its rows are held until it is set."""
        return self._one(None, delete_limit(self._queries, name)) is not None

    def rate_limits(self) -> list[RateLimit]:
        """Every configured rate limit, by name."""
        return self._all(self._queries.rate_limits())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
