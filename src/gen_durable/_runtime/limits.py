"""Rows naming a rate limit nobody defined (SPEC §23): held, said once a minute.

The pick holds such a row — it stays ``runnable``, due again after a second — rather
than failing it: the usual cause is a deploy that ships the rows before an operator
ran ``gen-durable limits set``, and the row runs as soon as the limit exists.
Telemetry fires on every hold; the WARNING line is rate-limited per name.
"""

from __future__ import annotations

import logging

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
