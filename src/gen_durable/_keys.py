"""Addressing an instance by id or by business key, shared by ``Engine`` and
``SyncClient`` (SPEC §20).

A *target* is an ``int`` (an id) or a ``str``/``bytes`` (a ``unique_key``, ``str`` as
its UTF-8 bytes); anything else is refused before a statement runs.
:func:`check_target` is the one check every call that takes a target goes through
(``signal``, ``get``, ``wait`` — and ``cancel``/``retry`` when they take keys).

Signal-with-start is a short loop of two statements, each atomic on its own
(:class:`SignalByKey`): deliver to the occupant, or — nothing occupies the key —
insert the ``start`` Spec together with the signal. An insert that finds the key taken
by a concurrent caller inserts nothing and the loop delivers to the winner instead,
so every call's signal ends in the one instance that holds the key. The plan is plain
data and statements; ``Engine`` runs it with ``await``, ``SyncClient`` without.
"""

from __future__ import annotations

from typing import Any, Literal

from ._db import codec
from ._db.queries import TERMINAL, Queries, Stmt
from ._db.statements.keys import KeyDelivered, Started
from ._inputs import build_one
from .errors import ConfigurationError, GenDurableError, NoSuchInstance
from .outcomes import Spec

Delivery = Literal["stored", "duplicate", "finished"]
"""What a signal did: stored; not stored again because its ``dedup_key`` already was
(the target is live); or refused because the target is finished, or the key has no
occupant any more (SPEC §6, §20)."""

Target = int | str | bytes
"""What a client call takes to name an instance: an id or a unique key."""

MAX_ROUNDS = 100
"""Signal-with-start rounds before giving up: a round is lost only when another
instance took the key and then left it again in between, so this is never reached in
practice; it bounds the loop all the same."""


def check_target(value: object) -> int | bytes:
    """An id (``int``, not a ``bool``) or a key as bytes; a typed error for the rest."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str | bytes):
        key = codec.key_bytes(value)
        assert key is not None
        return key
    raise ConfigurationError(
        f"an instance is named by its id (int) or its unique_key (str or bytes), "
        f"not {type(value).__name__} {value!r}"
    )


def check_key(value: object, what: str) -> bytes:
    """A target that must be a key (signal-with-start)."""
    target = check_target(value)
    if isinstance(target, int):
        raise ConfigurationError(f"{what} needs a unique_key (str or bytes), not the id {target}")
    return target


def start_rows(key: bytes, start: object) -> Any:
    """The validated insert of signal-with-start's ``start`` Spec: it must carry this
    very key, in a scope that occupies it (one holding ``runnable``)."""
    if not isinstance(start, Spec):
        raise ConfigurationError(f"start= must be a gd.Spec(Machine, ...), not {start!r}")
    rows = build_one(start.machine, start.options)
    if rows.unique_key[0] is None:
        raise ConfigurationError(
            f"start= Spec must carry unique_key={key!r}: signal-with-start inserts it "
            "under the key the signal is addressed to"
        )
    if rows.unique_key[0] != key:
        raise ConfigurationError(
            f"start= Spec carries unique_key={rows.unique_key[0]!r}, but the signal is "
            f"addressed to {key!r}: they must be the same key"
        )
    scope = rows.unique_scope[0] or ""
    if "runnable" not in scope.strip("{}").split(","):
        raise ConfigurationError(
            f"start= Spec's unique_scope {scope} does not hold 'runnable', so the new "
            "instance would never occupy its key and every call would start another"
        )
    return rows


class SignalByKey:
    """One ``signal(key, …)`` call: the next statement to run and, once known, the
    answer. ``step(row)`` takes the row the last statement returned and gives the next
    statement, or None when :attr:`verdict` is set."""

    def __init__(
        self,
        queries: Queries,
        key: bytes,
        params: tuple[Any, str, str, str | None],
        start: object = None,
    ) -> None:
        _, self.name, self.payload, self.dedup_key = params
        self.queries = queries
        self.key = key
        self.rows = None if start is None else start_rows(key, start)
        self.verdict: Delivery | None = None
        self.rounds = 0

    def result(self) -> Delivery:
        assert self.verdict is not None, "the plan has not reached its answer"
        return self.verdict

    def first(self) -> Stmt[KeyDelivered]:
        return self.queries.signal_key(self.key, self.name, self.payload, self.dedup_key)

    def after_signal(self, row: KeyDelivered | None) -> Stmt[Started] | None:
        assert row is not None  # the statement always answers one row
        if row.id is not None:
            if row.status in TERMINAL:
                self.verdict = "finished"
            else:
                self.verdict = "stored" if row.signal_id is not None else "duplicate"
            return None
        if self.rows is None:
            if not row.carried:
                raise NoSuchInstance(self.key)
            self.verdict = "finished"
            return None
        return self.queries.start_signal(self.rows, self.name, self.payload, self.dedup_key)

    def after_start(self, row: Started | None) -> Stmt[KeyDelivered] | None:
        if row is not None and row.id is not None:
            self.verdict = "stored"
            return None
        self.rounds += 1
        if self.rounds >= MAX_ROUNDS:
            raise GenDurableError(
                f"signal-with-start for key {self.key!r} lost the key to other instances "
                f"{MAX_ROUNDS} times in a row; try again"
            )
        return self.first()
