"""Business keys as addresses: a ``unique_key`` resolved to its row in the statement
that acts on it (SPEC §20).

A key's *occupant* is the row whose ``unique_guard`` holds it (at most one, by the
partial unique index ``gen_durable_unique``); ``gen_durable_key`` (schema increment
``KEYS_UP``) finds every row that ever carried the key, for the "no occupant: did one
ever exist?" answer and for ``get(key)``'s most recent row.

Resolution and action are one atomic unit. The delivering ``UPDATE`` re-checks
``unique_guard = key`` on the row version it locks: when the occupant committed its
finish (which clears the guard, §10) while the delivery waited for the row lock, READ
COMMITTED re-evaluates that condition on the new version, the row drops out, and
nothing is stored on a finished row — the call answers as for "no occupant".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..statement import Statement
from .inserts import BODY, KEY_ORDER, ON_CONFLICT, RETURNING, SOURCE
from .reads import CHILDREN, GET, INBOX
from .signals import DELIVERED, delivery


def occupant(key: str) -> str:
    """SQL: the id of the row occupying ``key`` (a bytea expression), or NULL."""
    return f"(SELECT o.id FROM {{s}}.gen_durable o WHERE o.unique_guard = {key})"


def latest_carrier(key: str) -> str:
    """SQL: the id of the most recently inserted row that carried ``key``, or NULL."""
    return (
        f"(SELECT c.id FROM {{s}}.gen_durable c WHERE c.unique_key = {key} "
        "ORDER BY c.id DESC LIMIT 1)"
    )


def resolve(key: str) -> str:
    """SQL: the row ``get(key)`` returns — the occupant, else the latest carrier — for
    every call that acts on "the row of this key" (``get``, ``wait``; ``cancel`` and
    ``retry`` re-check what they need under the row lock they take)."""
    return f"coalesce({occupant(key)}, {latest_carrier(key)})"


@dataclass(frozen=True, slots=True)
class KeyDelivered:
    """What one delivery by key found and did. ``id`` None: nothing occupies the key
    (then ``carried`` says whether some row ever did); else the occupant's status
    before the delivery, the new signal's id (None: not stored), whether it woke."""

    id: int | None
    status: str | None
    signal_id: int | None
    woke: bool | None
    carried: bool | None


def _by_key(target: str, recheck: str) -> str:
    """A delivery (``signals.delivery``) that always answers one row: the occupant's,
    or a row of NULLs saying whether some row ever carried the key."""
    return (
        delivery(target, recheck)
        + f"""
SELECT w.id, {DELIVERED},
    CASE WHEN w.id IS NULL THEN EXISTS (
        SELECT 1 FROM {{s}}.gen_durable c WHERE c.unique_key = %(key)s) END AS carried
FROM (SELECT 1) one LEFT JOIN wake w ON true
"""
    )


_SIGNAL_PARAMS = {
    "key": "bytea",
    "name": "text",
    "payload": "text",
    "dedup_key": "text",
    "channel": "text",
}

SIGNAL_KEY = Statement(
    "signal_key",
    "Store a signal for a key's occupant (gen_durable_unique), re-checked under its lock",
    _by_key(f"SELECT {occupant('%(key)s')} AS id", "g.unique_guard = %(key)s"),
    _SIGNAL_PARAMS,
    KeyDelivered,
)


@dataclass(frozen=True, slots=True)
class Started:
    """Signal-with-start inserted its instance (None: the key was taken meanwhile)."""

    id: int | None
    signal_id: int | None


# Signal-with-start's insert: the new row takes the key (ON CONFLICT on the unique
# guard, as every insert) and its first inbox entry in one statement, so the instance
# never exists without the signal. When a concurrent caller's row holds the key, the
# speculative insertion waits for that transaction and then inserts nothing; the caller
# goes back to SIGNAL_KEY, whose new snapshot sees the winner.
START_SIGNAL = Statement(
    "start_signal",
    "Insert an instance holding a key together with its first signal",
    f"""
WITH ins AS ({BODY}{SOURCE}
{KEY_ORDER}
{ON_CONFLICT}
{RETURNING}
), sig AS (
    INSERT INTO {{s}}.signals (target_id, name, payload, dedup_key)
    SELECT i.id, %(name)s, %(payload)s::jsonb, %(dedup_key)s FROM ins i
    RETURNING id
), nudge AS (
    SELECT pg_notify(%(channel)s, i.queue) FROM ins i
)
SELECT i.id, (SELECT id FROM sig) AS signal_id FROM ins i
WHERE (SELECT count(*) FROM nudge) >= 0
""",
    {"batch": "text", "name": "text", "payload": "text", "dedup_key": "text", "channel": "text"},
    Started,
)


def _by_key_read(name: str, why: str, read: Statement[Any], by_id: str) -> Statement[Any]:
    """``read`` (a statement of ``reads``) with its id condition ``by_id`` addressed to
    the row of a key instead: derived from its text, so the two cannot drift apart."""
    if by_id not in read.sql:
        raise TypeError(f"{read.name} must read by `{by_id}` for {name} to derive from it")
    column = by_id.rsplit(" = ", 1)[0]
    sql = read.sql.replace(by_id, f"{column} = {resolve('%(key)s')}")
    return Statement(name, why, sql, {"key": "bytea"}, read.result, load=read.load)


GET_KEY = _by_key_read(
    "get_key",
    "The row of a key: its occupant, else the latest row that carried it (two indexes)",
    GET,
    "WHERE id = %(id)s",
)
INBOX_KEY = _by_key_read(
    "inbox_key", "The inbox of a key's row (as get_key finds it)", INBOX, "target_id = %(id)s"
)
CHILDREN_KEY = _by_key_read(
    "children_key",
    "The children of a key's row (as get_key finds it)",
    CHILDREN,
    "parent_id = %(id)s",
)
