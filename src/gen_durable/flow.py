"""Flow control values and their validation (SPEC §23).

``partition_limit=K`` lets K instances of one ``partition_key`` execute at once;
``rate_limit="name"`` (or ``"name:part"``, one bucket per part) makes a row's steps
debit a token bucket that every node shares. Buckets are configured in the database
with :meth:`Engine.set_rate_limit <gen_durable.Engine.set_rate_limit>` and read back
as :class:`RateLimit`. Everything here is checked before anything is written, and a
wrong value raises :class:`~gen_durable.ConfigurationError`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

from ._db import codec
from .errors import ConfigurationError

PARTITION_LIMIT_MAX = 1000
"""The largest ``partition_limit``: slots are numbered in a smallint, and a key with
more concurrent steps than this is better left without a key."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


def partition_limit(value: Any) -> int:
    """``partition_limit`` as stored: an int in 1..:data:`PARTITION_LIMIT_MAX`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"partition_limit must be an int >= 1, not {type(value).__name__} {value!r}"
        )
    if not 1 <= value <= PARTITION_LIMIT_MAX:
        raise ConfigurationError(
            f"partition_limit must be in 1..{PARTITION_LIMIT_MAX}, got {value}"
        )
    return value


def limit_name(value: Any) -> str:
    """A rate limit's name: letters, digits, ``_ . -`` (the ``:`` separates a part)."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigurationError(
            f"a rate limit name is 1-100 characters of letters, digits, '_', '.', '-' "
            f"(no ':'), got {value!r}"
        )
    return value


def rate_limit_ref(value: Any) -> str | None:
    """A row's ``rate_limit``: ``None``, ``"name"`` or ``"name:part"``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"rate_limit must be 'name' or 'name:part', not {type(value).__name__}"
        )
    name, sep, part = value.partition(":")
    limit_name(name)
    if sep and not part:
        raise ConfigurationError(f"rate_limit {value!r} has an empty part after ':'")
    codec.check_text(part, "rate_limit part")
    return value


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{what} must be a number > 0, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{what} must be a finite number > 0, got {value!r}")
    return number


def bucket(rate: Any, per: Any, burst: Any) -> tuple[float, float, float]:
    """Checked ``(rate, per, burst)``; ``burst=None`` is the rate itself, at least 1."""
    r = _positive(rate, "rate")
    p = _positive(per, "per")
    b = max(r, 1.0) if burst is None else _positive(burst, "burst")
    if b < 1:
        raise ConfigurationError(f"burst must be >= 1 (one start at least), got {burst!r}")
    return r, p, b


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket as stored: at most ``burst`` starts at once, refilled at ``rate``
    tokens per ``per`` seconds; over any window W, starts <= burst + rate * W / per."""

    name: str
    rate: float
    per: float
    burst: float
    updated_at: dt.datetime
