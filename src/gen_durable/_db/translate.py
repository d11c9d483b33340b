"""Database refusals of a client's input, as typed errors (SPEC §15).

Validation happens before anything is written wherever Python can decide; a few limits
only PostgreSQL knows — how large an index entry may be after compression, which
values its parsers accept. When it refuses one, the statement wrote nothing, and the
caller gets an :class:`~gen_durable.errors.EncodingError` that says what to change,
with the database's error as ``__cause__``.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors

from ..errors import EncodingError


def refused_input(exc: psycopg.Error) -> EncodingError | None:
    """The typed error for a refusal of the caller's data, else None."""
    message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
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
