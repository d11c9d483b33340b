"""Driver and pool errors of client calls, as typed errors (SPEC §15, §26).

The runner (:mod:`._db.runner`) calls :func:`translate` for every error a client
call's statement raises; nothing else turns a psycopg error into a gen_durable one.
The database's error is kept as ``__cause__``, and each message says what to do:

* :class:`~gen_durable.errors.DatabaseUnavailable` — the server could not be reached,
  the connection was lost during the call (no SQLSTATE, connection class 08, the
  server shutting down: 57P01–57P03), or no pooled connection became free in time.
* :class:`~gen_durable.errors.EncodingError` — PostgreSQL refused the caller's data
  (a key too large for its index, a value its parsers reject); nothing was written.
* :class:`~gen_durable.errors.DatabaseError` — everything else, with a hint for the
  common cases (lock and statement timeouts, deadlocks, a missing schema).

Messages name the server by host and port only — never the DSN, which may carry a
password.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolClosed, PoolTimeout

from ..errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    EncodingError,
    GenDurableError,
)

DRIVER_ERRORS = (psycopg.Error, OSError)
"""What the runner translates (pool errors are psycopg errors)."""

# Connection gone, not a statement failure: no SQLSTATE at all (libpq lost the
# socket), class 08, or the server terminating the session (57P01 admin shutdown,
# 57P02 crash shutdown, 57P03 cannot connect now).
_GONE = ("57P01", "57P02", "57P03")

_HINTS: dict[str, str] = {
    "55P03": "another transaction holds a lock this call needs, for longer than the "
    "session's lock_timeout allows: retry later, or raise lock_timeout",
    "57014": "the statement ran past statement_timeout or was cancelled: retry, or "
    "raise statement_timeout",
    "40P01": "it deadlocked with another transaction and was rolled back: retry the call",
    "40001": "a serialization failure rolled it back: retry the call",
    "25P02": "the transaction passed as conn= is aborted by an earlier error: roll it back",
    "42P01": "a gen_durable table is missing: migrate the schema (gd.migrate or "
    "`gen-durable migrate`)",
    "3F000": "the schema does not exist: migrate it (gd.migrate or `gen-durable migrate`)",
}


def server_of(conninfo: str) -> str:
    """``host:port`` of a connection string, for messages (never its password)."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "the configured server"
    host = params.get("host") or params.get("hostaddr") or "the local socket"
    return f"{host}:{params.get('port') or 5432}"


def first_line(exc: BaseException) -> str:
    """The first line of a driver message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()


def _reason(exc: BaseException) -> str:
    """Why a connection failed, without libpq's preamble."""
    line = first_line(exc)
    if " failed: " in line:  # 'connection to server at "h", port 1 failed: <reason>'
        line = line.rsplit(" failed: ", 1)[1]
    return line.removeprefix("FATAL:").strip()


def unreachable(exc: BaseException, server: str) -> GenDurableError:
    """The error of a connection that could not be opened."""
    if isinstance(exc, psycopg.ProgrammingError):  # libpq echoes the DSN: not shown
        return ConfigurationError(
            "the DSN is not a valid PostgreSQL connection string: use "
            "postgresql://user:password@host:port/dbname or key=value pairs"
        )
    return DatabaseUnavailable(
        f"cannot reach PostgreSQL at {server} ({_reason(exc)}): is the server "
        "running? check the DSN (host, port, user, password, database)"
    )


def refused_input(exc: psycopg.Error) -> EncodingError | None:
    """The typed error for a refusal of the caller's data, else None."""
    message = first_line(exc)
    if isinstance(exc, pg_errors.ProgramLimitExceeded):
        return EncodingError(
            f"PostgreSQL cannot store this row ({message}); nothing was written. A "
            "unique_key larger than about 2,700 bytes after compression does not fit "
            "its index: pass a digest of a long key instead, e.g. "
            "hashlib.sha256(key).digest()"
        )
    if isinstance(exc, pg_errors.DataError):
        return EncodingError(f"PostgreSQL rejected a value ({message}); nothing was written")
    return None


def connection_lost(exc: BaseException) -> bool:
    """True when ``exc`` says the connection is gone rather than the statement failed."""
    if isinstance(exc, OSError | psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _GONE


def translate(exc: BaseException, *, call: str, server: str) -> GenDurableError:
    """The typed error for ``exc``, raised by statement ``call`` on ``server``."""
    if isinstance(exc, PoolClosed):
        return DatabaseUnavailable(
            "the connection pool is closed (the engine was stopped): start the engine "
            "again, or make the call inside `async with engine:`"
        )
    if isinstance(exc, PoolTimeout):
        return DatabaseUnavailable(
            f"no connection to PostgreSQL at {server} became free in time "
            f"({first_line(exc)}): the server may be down or unreachable, or every "
            "pooled connection is busy; check the server, or raise pool_size"
        )
    if connection_lost(exc):
        return DatabaseUnavailable(
            f"the connection to PostgreSQL at {server} was lost during the call "
            f"({_reason(exc)}); it may or may not have been applied. Retry once the "
            "server is back (an insert with a unique_key and a signal with a dedup_key "
            "are safe to repeat)"
        )
    if isinstance(exc, psycopg.Error):
        refused = refused_input(exc)
        if refused is not None:
            return refused
        state = exc.sqlstate
        hint = _HINTS.get(state or "", "see the database's message")
        return DatabaseError(
            f"PostgreSQL refused statement {call!r} ({first_line(exc)}"
            f"{f', SQLSTATE {state}' if state else ''}): {hint}",
            sqlstate=state,
        )
    return DatabaseError(f"statement {call!r} failed: {type(exc).__name__}: {first_line(exc)}")
