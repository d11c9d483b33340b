"""The engine's own counters: statements, commits, picks, steps (SPEC §17).

Plain integer increments on the event loop — cheap enough to keep always on, and the
benchmark and the statement-count test read them instead of guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Stats:
    statements: int = 0
    commits: int = 0
    picks: int = 0
    picked: int = 0
    outcomes: int = 0
    steps: int = 0
    stale: int = 0
    reaped: int = 0
    poisoned: int = 0
    released: int = 0
    heartbeats: int = 0
    timeouts: int = 0  # waits the timer ended at their deadline
    timer_statements: int = 0

    def add(self, **counts: int) -> None:
        for name, n in counts.items():
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        return asdict(self)
