"""Signals: delivery into the inbox, and the LISTEN that nudges idle schedulers
(SPEC §6, §18.1, §18.5, §18.9)."""

from __future__ import annotations

from dataclasses import dataclass

from ..statement import Statement
from .common import clear_guard


@dataclass(frozen=True, slots=True)
class Delivered:
    """What one delivery found and did (no row at all: no such instance): the target's
    status before it, the new signal's id (None: not stored), and whether it woke the
    target."""

    status: str
    signal_id: int | None
    woke: bool


# `wake` is one UPDATE of the target by id alone, whatever its status: it waits for
# the row lock (so a delivery racing a park is serialised with it) and READ COMMITTED
# re-evaluates the SET on the latest committed version, so the flip is decided on what
# the park actually committed. Non-flipping deliveries rewrite the row unchanged (a HOT
# no-op) to hold that lock.
# Not a `SELECT … FOR NO KEY UPDATE` CTE followed by a flip `SET status = 'runnable'`:
# when that lock had to wait for a park, the UPDATE first builds its new row from the
# statement's snapshot (still `executing`, lease held) and PostgreSQL checks
# constraints on that row *before* re-reading the latest version, so the delivery
# failed on gen_durable_lease_iff_executing. Here the snapshot-based row is always
# consistent (unchanged, or a lease-free flip) — see
# test_no_lost_wakeup_under_forced_interleaving.
# The insert is refused for a terminal target, decided under the same lock.
# A wake clears the wait's deadline (§19): the step was woken by a signal, not by time,
# and a row the timer already flipped is no longer parked, so it is not woken twice.
# A redelivery whose dedup_key is already stored wakes nobody: the parked step has seen
# that signal (§18.5), so waking it would only re-run it for nothing. `woke` is
# recognised by the flip's own `updated_at = now()`. With `trace`, the waking sender's
# trace context (SPEC §25) replaces the row's, so the woken step's span is parented on
# the signal.
_WAKES = "g.status = 'awaiting_signal' AND %(name)s = ANY (g.awaits) AND NOT d.dup"
_WOKEN = f"CASE WHEN {_WAKES} THEN 'runnable'::{{s}}.durable_status ELSE g.status END"


_TRACED = f"""
        trace_context = CASE WHEN {_WAKES} THEN coalesce(%(trace)s, g.trace_context)
                             ELSE g.trace_context END,"""


def delivery(target: str, recheck: str = "true", guard: str = "", *, trace: bool = False) -> str:
    """The CTEs of one delivery (``wake``, ``ins``, ``nudge``) to the id the CTE ``t``
    (SQL ``target``) yields, if any; ``recheck`` is evaluated again on the row version
    the lock waited for (SPEC §20: a key re-checked on the occupant), ``guard`` may
    prepend a CTE ``target`` reads (an effect's claim guard). Every delivery — by id,
    by key, from an outcome — is this one text, so they cannot drift apart. ``trace``
    adds the ``%(trace)s`` parameter: the sender's trace context for a woken row."""
    traced = _TRACED if trace else ""
    return f"""
WITH {guard}t AS ({target}), wake AS (
    UPDATE {{s}}.gen_durable g SET
        status = {_WOKEN},
        {clear_guard("g", _WOKEN)},
        eligible_at = CASE WHEN {_WAKES} THEN now() ELSE g.eligible_at END,
        await_deadline = CASE WHEN {_WAKES} THEN NULL ELSE g.await_deadline END,{traced}
        updated_at = CASE WHEN {_WAKES} THEN now() ELSE g.updated_at END
    FROM t CROSS JOIN LATERAL (SELECT EXISTS (
            SELECT 1 FROM {{s}}.signals s
            WHERE s.target_id = t.id AND s.dedup_key = %(dedup_key)s) AS dup) d
    WHERE g.id = t.id AND {recheck}
    RETURNING g.id, g.status, g.queue,
        g.status = 'runnable' AND %(name)s = ANY (g.awaits) AND g.updated_at = now() AS woke
), ins AS (
    INSERT INTO {{s}}.signals (target_id, name, payload, dedup_key)
    SELECT w.id, %(name)s, %(payload)s::jsonb, %(dedup_key)s FROM wake w
    WHERE w.status NOT IN ('done', 'failed', 'cancelled')
    ON CONFLICT (target_id, dedup_key) DO NOTHING
    RETURNING id
), nudge AS (
    SELECT pg_notify(%(channel)s, w.queue) FROM wake w WHERE w.woke
)"""


DELIVERED = """CASE WHEN w.woke THEN 'awaiting_signal' ELSE w.status::text END AS status,
    (SELECT id FROM ins) AS signal_id, w.woke AND (SELECT count(*) FROM nudge) > 0 AS woke"""
"""The columns saying what ``delivery`` did to the ``wake`` row ``w``."""

SIGNAL = Statement(
    "signal",
    "Store a signal and wake its target if parked on that name, under the row lock",
    delivery("SELECT %(id)s::int8 AS id", trace=True) + f"\nSELECT {DELIVERED}\nFROM wake w\n",
    {
        "id": "int8",
        "name": "text",
        "payload": "text",
        "dedup_key": "text",
        "channel": "text",
        "trace": "text",
    },
    Delivered,
)

LISTEN: Statement[None] = Statement(
    "listen",
    "Subscribe to the schema's channel: inserts and wake-ups nudge idle schedulers",
    "LISTEN {channel}",
)
