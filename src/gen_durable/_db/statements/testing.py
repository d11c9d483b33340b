"""What ``gen_durable.testing.drain`` runs besides the engine's own statements (SPEC §24).

Test helpers on a test's small schema, never on a node's hot path: they read the
runnable rows of every queue and move delayed ones to now, so a drain runs a
``Next(delay=3600)`` or a retry backoff without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..statement import Statement


@dataclass(frozen=True, slots=True)
class QueueName:
    queue: str


@dataclass(frozen=True, slots=True)
class Advanced:
    id: int


RUNNABLE_QUEUES = Statement(
    "testing.runnable_queues",
    "Queues holding a runnable row that is due (drain; gen_durable_pick by queue)",
    """
SELECT DISTINCT queue FROM {s}.gen_durable
WHERE status = 'runnable' AND eligible_at <= now()
ORDER BY queue
""",
    {},
    QueueName,
)

MAKE_DUE = Statement(
    "testing.make_due",
    "Make every delayed runnable row due now (drain with_scheduled); row locks of the rows",
    """
UPDATE {s}.gen_durable SET eligible_at = now()
WHERE status = 'runnable' AND eligible_at > now()
RETURNING id
""",
    {},
    Advanced,
)
