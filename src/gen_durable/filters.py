"""The one set of operator filters (SPEC §21).

``list``, ``cancel_where``, ``retry_where`` and ``purge_where`` (and their CLI forms)
take the same keyword filters; :func:`build_filter` checks them once and turns them
into a :class:`Filter`, whose :meth:`Filter.params` are the parameters of the
statements in :mod:`gen_durable._db.statements.listing`. Every filter is optional;
the conditions are ANDed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from ._db import codec
from ._db.statements.common import STATUSES
from .errors import EncodingError, InvalidFilter

FILTERS = (
    "machine",
    "status",
    "queue",
    "step",
    "partition_key",
    "unique_key",
    "parent",
    "inserted_after",
    "inserted_before",
    "updated_after",
    "updated_before",
    "error",
)
"""The filter keywords, in the order the docs list them."""


@dataclass(frozen=True, slots=True)
class Filter:
    """Checked filters; ``None`` means "any"."""

    fsm: str | None = None
    statuses: list[str] | None = None
    queue: str | None = None
    step: str | None = None
    partition_key: str | None = None
    unique_key: bytes | None = None
    parent: int | None = None
    inserted_after: dt.datetime | None = None
    inserted_before: dt.datetime | None = None
    updated_after: dt.datetime | None = None
    updated_before: dt.datetime | None = None
    error: str | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return codec.check_text(value, name)
    except EncodingError as exc:
        raise InvalidFilter(str(exc)) from exc


def _machine(value: Any) -> str | None:
    if value is None:
        return None
    name = getattr(value, "__gd_name__", None)
    if isinstance(value, type) and isinstance(name, str):
        return name
    if isinstance(value, str):
        return _text("machine", value)
    raise InvalidFilter(f"machine must be a machine class or its name, not {value!r}")


def _statuses(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not items:
        raise InvalidFilter(f"status must be a status or a non-empty sequence, not {value!r}")
    for item in items:
        if item not in STATUSES:
            raise InvalidFilter(f"unknown status {item!r}; statuses are {', '.join(STATUSES)}")
    return list(dict.fromkeys(items))


def _when(name: str, value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise InvalidFilter(f"{name} must be an aware datetime (with tzinfo), not {value!r}")
    return value


def _parent(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidFilter(f"parent must be an instance id (an int >= 1), not {value!r}")
    return value


def build_filter(**given: Any) -> Filter:
    """Check the keyword filters of SPEC §21; ``gd.InvalidFilter`` for an unknown
    keyword or a bad value."""
    unknown = set(given) - set(FILTERS)
    if unknown:
        raise InvalidFilter(f"unknown filter(s) {sorted(unknown)}; filters are {list(FILTERS)}")
    try:
        key = codec.key_bytes(given.get("unique_key"))
    except EncodingError as exc:
        raise InvalidFilter(str(exc)) from exc
    return Filter(
        fsm=_machine(given.get("machine")),
        statuses=_statuses(given.get("status")),
        queue=_text("queue", given.get("queue")),
        step=_text("step", given.get("step")),
        partition_key=_text("partition_key", given.get("partition_key")),
        unique_key=key,
        parent=_parent(given.get("parent")),
        inserted_after=_when("inserted_after", given.get("inserted_after")),
        inserted_before=_when("inserted_before", given.get("inserted_before")),
        updated_after=_when("updated_after", given.get("updated_after")),
        updated_before=_when("updated_before", given.get("updated_before")),
        error=_text("error", given.get("error")),
    )


def require_some(flt: Filter, call: str) -> None:
    """The bulk forms refuse to run on everything by accident (SPEC §21)."""
    if flt.empty:
        raise InvalidFilter(
            f"{call} needs at least one filter (machine, status, queue, ...): "
            "a call without one would touch every instance"
        )
