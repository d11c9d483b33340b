"""Rows naming a rate limit nobody defined (SPEC §23): held, said once a minute.

The pick holds such a row — it stays ``runnable``, due again after a second — rather
than failing it: the usual cause is a deploy that ships the rows before an operator
ran ``gen-durable limits set``, and the row runs as soon as the limit exists.
Telemetry fires on every hold; the WARNING line is rate-limited per name.
"""

from __future__ import annotations

import logging
import re

from .. import telemetry
from .executor import Claim
from .handback import NOT_FOUND_LOG_EVERY, EveryInterval

log = logging.getLogger("gen_durable")


class UnknownLimits:
    """Reports held rows of undefined rate limits; one per node, shared by its queues."""

    def __init__(self) -> None:
        self.log_limit = EveryInterval(NOT_FOUND_LOG_EVERY)

    def report(self, queue: str, row: Claim) -> None:
        ref = row.rate_limit or ""
        name = ref.partition(":")[0]
        held = self.log_limit.allow(name)
        if held is not None:
            log.warning(
                "queue %s: instance %s names rate limit %r, which is not defined; held "
                "until it is (gen-durable limits set %s RATE)%s",
                queue,
                row.id,
                name,
                name,
                f"; {held} more held since the last report" if held else "",
            )
        if telemetry.listening("rate_limit.unknown"):
            telemetry.emit(
                "rate_limit.unknown",
                {"count": 1},
                {"queue": queue, "id": row.id, "fsm": row.fsm, "rate_limit": ref},
            )


def report_held(
    rows: list[Claim], queue: str, unknown: UnknownLimits
) -> tuple[list[Claim], float | None]:
    """Report the rows a pick held back for their rate limit (SPEC §23): the claims it
    made, and the seconds until the soonest held row is due (None: none says)."""
    claims = [r for r in rows if r.held is None]
    soonest = min((r.due for r in rows if r.due is not None), default=None)
    throttled: dict[str, int] = {}
    for row in rows:
        if row.held == "throttled":
            throttled[row.rate_limit or ""] = throttled.get(row.rate_limit or "", 0) + 1
        elif row.held == "unknown":
            unknown.report(queue, row)
    if throttled and telemetry.listening("rate_limit.throttled"):
        for ref, count in throttled.items():
            telemetry.emit(
                "rate_limit.throttled", {"count": count}, {"queue": queue, "rate_limit": ref}
            )
    return claims, soonest


# The index is on (partition_key, partition_slot) since flow control (SPEC §23); the
# slot is a number, so the key is everything before the last ", ".
_KEY_RE = re.compile(r"Key \(partition_key, partition_slot\)=\((.*), -?\d+\) already exists")


def contended_key(exc: BaseException) -> str | None:
    """The partition key of a pick the executing-slot index refused (SPEC §9)."""
    diag = getattr(exc, "diag", None)
    detail = getattr(diag, "message_detail", None) or ""
    m = _KEY_RE.search(detail)
    return m.group(1) if m else None
