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
from typing import Any, Literal, TypeVar

import psycopg
from typing_extensions import Unpack

from ._db import codec, runner
from ._db.queries import InsertRows, Queries, Stmt
from ._db.statements.inserts import Inserted
from ._db.statements.signals import Delivered
from ._dsn import resolve_dsn
from ._inputs import INSERT_OPTIONS, InsertOptions, build_insert, build_one
from .errors import ConfigurationError, Duplicate, EncodingError, NoSuchInstance
from .instance import Instance as Instance  # re-exported: gen_durable.client.Instance
from .machine import Child, Machine, Signal

R = TypeVar("R")
S = TypeVar("S")

__all__ = ["INSERT_OPTIONS", "Instance", "SyncClient", "build_insert", "build_one"]


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
