"""What one reaper statement did, told to the logs, telemetry and stats (SPEC §5, §8, §14).

The statement returns ``(id, new status)`` for every expired lease it took: ``runnable``
rows go back to the queue (``reaper.reaped``); ``failed`` rows hit the crash limit
(``reaper.poisoned``) — their step took every worker that ran it down, and the row
stays failed for an operator to look at instead of crashing one more node.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .. import telemetry
from .._db.statements.leases import Reaped
from .stats import Stats

log = logging.getLogger("gen_durable")


def report_reaped(rows: Sequence[Reaped], stats: Stats, crash_limit: int) -> bool:
    """Log and emit one reaper batch; True when it changed any row."""
    reaped = [r.id for r in rows if r.status == "runnable"]
    poisoned = [r.id for r in rows if r.status != "runnable"]
    stats.add(statements=1, commits=1, reaped=len(reaped), poisoned=len(poisoned))
    if reaped:
        log.warning("reaper: %d expired lease(s) returned to runnable", len(reaped))
        if telemetry.listening("reaper.reaped"):
            telemetry.emit("reaper.reaped", {"count": len(reaped)}, {"ids": reaped})
    if poisoned:
        log.error(
            "reaper: failed %d instance(s) whose lease expired crash_limit (%d) times on "
            "one step (the step kills or freezes its worker): ids %s",
            len(poisoned),
            crash_limit,
            poisoned,
        )
        if telemetry.listening("reaper.poisoned"):
            telemetry.emit("reaper.poisoned", {"count": len(poisoned)}, {"ids": poisoned})
    return bool(rows)
