"""A queue's step slots (SPEC §8): ``concurrency`` is how many steps run at once.

A slot is held while a step's code runs, not while its outcome commits. When a step
returns, its claim moves from ``running`` to ``committing`` and its slot goes to the
next buffered claim at once, so the next steps run while the outcomes of the last ones
are in flight (the commit overlaps the compute; at low concurrency it is most of a
slot's cycle). The row stays claimed — it counts against ``concurrency + prefetch``
until the commit returns, and the heartbeat keeps its lease — so nothing is claimed
beyond the bound, and the instance itself proceeds only after its commit (§0).

A run-ahead continuation (an outcome that kept its claim) takes a slot again before
its next step runs; such claims are served before buffered ones, first come first
served, since their instances are already under way.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable

from .._db.statements.pick import Claim


class Slots:
    def __init__(self, concurrency: int, on_free: Callable[[], None]) -> None:
        self.concurrency = concurrency
        self.running: dict[int, Claim] = {}  # steps whose code runs now
        self.committing: dict[int, Claim] = {}  # outcomes in flight, slot given up
        self._resumers: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._on_free = on_free  # starts buffered claims in the slots left free
        self.started = 0  # steps started so far, continuations too (Prefetch's rate)
        self.waited = 0  # continuations that had to wait for a slot

    def __len__(self) -> int:
        """Claims of started steps: running or committing."""
        return len(self.running) + len(self.committing)

    def free(self) -> bool:
        """A slot is free for a buffered claim (continuations go first)."""
        return len(self.running) < self.concurrency and not self._resumers

    def start(self, claim: Claim) -> None:
        self.running[claim.id] = claim
        self.started += 1

    def claims(self) -> list[Claim]:
        return [*self.running.values(), *self.committing.values()]

    # -- the executor's side -----------------------------------------------------------

    def computed(self, instance_id: int) -> None:
        """The step returned: its outcome is on its way, its slot is free."""
        claim = self.running.pop(instance_id, None)
        if claim is not None:
            self.committing[instance_id] = claim
        self._hand_over()
        self._on_free()

    async def resume(self, instance_id: int) -> None:
        """Take a slot again for a kept claim's next step; waits while all are taken."""
        if self.free():
            self._take(instance_id)
            return
        future = asyncio.get_running_loop().create_future()
        self._resumers.append((instance_id, future))
        self.waited += 1
        await future  # cancelled (a drain): the task's end releases what it holds

    # -- the scheduler's side ----------------------------------------------------------

    def finished(self, claim: Claim) -> None:
        """The claim's task ended: whatever it held is released, and the slot goes to
        a waiting continuation or the next buffered claim now, not a loop turn later."""
        if self.running.get(claim.id) is claim:
            del self.running[claim.id]
        if self.committing.get(claim.id) is claim:
            del self.committing[claim.id]
        self._hand_over()
        self._on_free()

    def _take(self, instance_id: int) -> None:
        claim = self.committing.pop(instance_id, None)
        if claim is not None:
            self.running[instance_id] = claim
            self.started += 1

    def _hand_over(self) -> None:
        while self._resumers and len(self.running) < self.concurrency:
            instance_id, future = self._resumers.popleft()
            if future.done():  # its task was cancelled while it waited
                continue
            self._take(instance_id)
            future.set_result(None)


UNBOUNDED = Slots(sys.maxsize, lambda: None)
"""The slots of a run outside any queue scheduler (``testing.drain``): never full, and,
since nothing is ever started in it, never holding a claim."""


HORIZON = 0.05
"""Seconds of steps an unset ``prefetch`` buffers, at the rate steps have been starting."""

CEILING = 20
"""An unset ``prefetch`` grows to at most this many rows per slot (and 1,000 in all)."""


class Prefetch:
    """The size of a queue's buffer (SPEC §8): a ``prefetch`` the user set, as given;
    unset, about ``HORIZON`` seconds of steps at the rate the queue's steps have been
    starting (continuations of kept claims included), never fewer rows than slots, at
    most ``ceiling``.

    Fast steps get a deep buffer, so every pick and every flush carries many rows —
    at ten slots a buffer of ten holds a queue of millisecond steps to about ten rows
    per two commits, each a round trip and a WAL flush. Slow steps keep it at the
    concurrency, so a node does not hoard rows that would wait in its buffer while
    another node could run them.
    """

    def __init__(self, fixed: int | None, concurrency: int) -> None:
        self._fixed = fixed
        self._floor = concurrency
        self.ceiling = (
            fixed if fixed is not None else max(concurrency, min(1000, CEILING * concurrency))
        )
        self.size = fixed if fixed is not None else concurrency
        self._rate = 0.0
        self._since = time.monotonic()
        self._starts = 0

    def update(self, started: int) -> int:
        """The buffer's size now, given the count of claims started so far."""
        if self._fixed is not None:
            return self._fixed
        now = time.monotonic()
        span = now - self._since
        if span >= 0.1:  # re-estimated ten times a second at most
            rate = (started - self._starts) / span
            self._rate = rate if span > 1.0 or not self._rate else (self._rate + rate) / 2
            self._since, self._starts = now, started
            self.size = max(self._floor, min(self.ceiling, int(self._rate * HORIZON)))
        return self.size
