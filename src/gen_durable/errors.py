"""Every error gen_durable raises, in one place (SPEC §11, §15).

All derive from :class:`GenDurableError`, so ``except gd.GenDurableError`` catches
anything the library itself decided to refuse. Database and pool errors that reach a
user are translated once, at the runner's boundary (``_db/translate.py``), into the
database errors below, keeping the original as ``__cause__``.
"""

from __future__ import annotations

import psycopg


class GenDurableError(Exception):
    """Base class of every error raised by gen_durable."""


class ConfigurationError(GenDurableError, ValueError):
    """A bad option: an engine setting, an insert option, a missing DSN."""


class Duplicate(GenDurableError):
    """An insert was dropped because its ``unique_key`` is occupied (SPEC §10)."""

    def __init__(self, fsm: str, unique_key: bytes) -> None:
        self.fsm = fsm
        self.unique_key = unique_key
        super().__init__(
            f"an instance of {fsm!r} already occupies unique_key {unique_key!r}; "
            "nothing was inserted (pick another key, or widen/narrow unique_scope)"
        )


class NotFound(GenDurableError, LookupError):
    """No machine is known by the name (and version) a caller gave (SPEC §13) — e.g.
    ``gen-durable insert NAME`` naming no registered machine, class or module path."""

    def __init__(self, fsm: str, version: int | None = None, *, hint: str | None = None) -> None:
        self.fsm = fsm
        self.version = version
        what = fsm if version is None else f"{fsm} v{version}"
        hint = hint or "import the module that defines it, or pass the class in Engine(fsms=[...])"
        super().__init__(f"unknown machine {what!r}: {hint}")


class NoSuchInstance(GenDurableError, LookupError):
    """A signal (or another call) named an instance id that does not exist, or a
    ``unique_key`` that no instance has ever carried (SPEC §20)."""

    def __init__(self, instance_id: int | bytes) -> None:
        self.instance_id = instance_id
        if isinstance(instance_id, bytes):
            super().__init__(f"no instance has ever carried the unique_key {instance_id!r}")
        else:
            super().__init__(f"no instance with id {instance_id}")


class InvalidOutcome(GenDurableError, TypeError):
    """A step or ``handle`` returned something that is not a valid outcome (SPEC §15)."""


class InvalidMachine(GenDurableError, TypeError):
    """A machine class is defined wrongly (raised when the class is created)."""


class EncodingError(GenDurableError, ValueError):
    """State, result, payload or a text field cannot be stored in PostgreSQL."""


class OutcomeRefused(GenDurableError):
    """PostgreSQL refused to store a step's outcome for a reason retrying cannot cure
    (a value too large to index, a statement timeout, data it rejects). The step's
    ``handle`` receives it like any other error; the database's error is its
    ``__cause__``."""


class DatabaseError(GenDurableError, psycopg.DatabaseError):
    """PostgreSQL failed or refused a statement of a client call (a lock timeout, a
    statement timeout, a deadlock, a missing table, …). The message says what to do;
    ``sqlstate`` is PostgreSQL's error code when it sent one, and ``__cause__`` is the
    driver's error.

    It is also a ``psycopg.DatabaseError``, so code written against the driver's
    errors before they were translated keeps catching them."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DatabaseUnavailable(DatabaseError, psycopg.OperationalError):
    """PostgreSQL cannot be reached: the connection failed, was lost during the call,
    or no pooled connection became free in time. Retrying later may succeed; a call
    whose connection was lost may or may not have been applied. Also a
    ``psycopg.OperationalError``, as the driver's error was."""


class SchemaError(GenDurableError):
    """The database schema is missing, foreign, or at an unknown version."""


class InvalidFilter(GenDurableError, ValueError):
    """An operator filter (``list``, ``cancel_where``, ``retry_where``,
    ``purge_where``) is malformed, or a bulk form was called with no filter at all
    (SPEC §21). Nothing was read or changed."""


class Cancel(GenDurableError):
    """Raised by a job's ``perform`` to fail it at once, without retry (SPEC §12)."""

    def __init__(self, reason: object = "cancelled") -> None:
        self.reason = reason
        super().__init__(str(reason))


__all__ = [
    "Cancel",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "Duplicate",
    "EncodingError",
    "GenDurableError",
    "InvalidFilter",
    "InvalidMachine",
    "InvalidOutcome",
    "NoSuchInstance",
    "NotFound",
    "OutcomeRefused",
    "SchemaError",
]
