"""Effects that commit with an outcome: ``spawn=`` and ``send=`` (SPEC §20).

They run in the completer's flush transaction, before the ``complete`` /
``schedule_childs`` statement that writes the outcome, each behind the same claim
guard (§18.2) as that outcome: the owner row is locked ``FOR NO KEY UPDATE`` where it
is still ``executing`` under the step's claim token, and everything else hangs off
that row. A stale outcome therefore spawns and sends nothing, and since the lock is
held to the commit, the outcome statement that follows finds its guard still true:
the effects exist iff the outcome committed. A batch without effects runs none of
these statements.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..statement import Statement
from .inserts import BODY, KEY_ORDER, ON_CONFLICT, RETURNING, SOURCE
from .keys import occupant
from .signals import DELIVERED, delivery

_OWNER = """p AS (
    SELECT g.id FROM {s}.gen_durable g
    WHERE g.id = %(owner)s AND g.locked_by = %(token)s AND g.status = 'executing'
    FOR NO KEY UPDATE
)"""
"""The claim guard of the outcome carrying the effect."""


@dataclass(frozen=True, slots=True)
class Spawned:
    """The instances an outcome started (None: all dropped as duplicates)."""

    owner: int
    ids: list[int] | None
    nudged: int


# Independent instances: no parent_id, no barrier — the rows are exactly those an
# `insert_all` of the same Specs writes (same BODY, key order and ON CONFLICT).
SPAWN = Statement(
    "spawn",
    "Insert the instances an outcome spawns, behind the outcome's claim guard",
    f"""
WITH {_OWNER}, ins AS ({BODY}{SOURCE} JOIN p ON true
{KEY_ORDER}
{ON_CONFLICT}
{RETURNING}
), nudge AS (
    SELECT pg_notify(%(channel)s, q.queue) FROM (SELECT DISTINCT queue FROM ins) q
)
SELECT p.id AS owner, (SELECT array_agg(id ORDER BY id) FROM ins) AS ids,
       (SELECT count(*) FROM nudge) AS nudged
FROM p
""",
    {"owner": "int8", "token": "text", "batch": "text", "channel": "text"},
    Spawned,
)


@dataclass(frozen=True, slots=True)
class Sent:
    """One send of a live outcome: the target's id (None: unknown id, or a key with no
    occupant) and, as for ``signal``, its status before, the signal's id, the wake."""

    owner: int
    id: int | None
    status: str | None
    signal_id: int | None
    woke: bool | None


# The delivery of `signal` (one text for every delivery), to an id or to a key's
# occupant re-checked under the row lock — behind the owner's claim guard: no row at
# all when the outcome is stale.
SEND = Statement(
    "send",
    "Deliver one signal an outcome sends, by id or key, behind the outcome's claim guard",
    delivery(
        f"SELECT coalesce(%(id)s::int8, {occupant('%(key)s::bytea')}) AS id FROM p",
        "(%(key)s::bytea IS NULL OR g.unique_guard = %(key)s::bytea)",
        guard=_OWNER + ", ",
    )
    + f"\nSELECT p.id AS owner, w.id, {DELIVERED}\nFROM p LEFT JOIN wake w ON true\n",
    {
        "owner": "int8",
        "token": "text",
        "id": "int8",
        "key": "bytea",
        "name": "text",
        "payload": "text",
        "dedup_key": "text",
        "channel": "text",
    },
    Sent,
)
