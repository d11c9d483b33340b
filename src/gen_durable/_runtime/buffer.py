"""A queue scheduler's claimed-but-not-started rows (SPEC §8).

A heap by priority (ties in pick order), each entry with the machine resolved at the
pick and the ``time.monotonic()`` until which its lease surely lasts: set from the
moment the pick was sent (the database set the lease from its own clock after that),
moved on by every heartbeat that extended it. A claim past that time may have been
reaped — the node stood still longer than a lease — and must not be started.
"""

from __future__ import annotations

import heapq
import itertools

from ..machine import Machine
from .executor import Claim


class ClaimBuffer:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Claim, type[Machine]]] = []
        self._seq = itertools.count()
        self._lease_until: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._heap)

    def claims(self) -> list[Claim]:
        return [entry[2] for entry in self._heap]

    def push(self, claim: Claim, machine: type[Machine], lease_until: float) -> None:
        heapq.heappush(self._heap, (claim.priority, next(self._seq), claim, machine))
        self._lease_until[claim.id] = lease_until

    def pop(self, now: float) -> tuple[Claim, type[Machine], bool]:
        """The most urgent claim, its machine, and whether its lease still holds."""
        _, _, claim, machine = heapq.heappop(self._heap)
        return claim, machine, self._lease_until.pop(claim.id, now) >= now

    def most_urgent(self) -> int | None:
        """The priority of the next claim to start (None: empty)."""
        return self._heap[0][0] if self._heap else None

    def renewed(self, ids: set[int], until: float) -> None:
        """The heartbeat extended these rows' leases: they hold at least ``until``."""
        leases = self._lease_until
        for iid in ids:
            if iid in leases:
                leases[iid] = until

    def remove(self, instance_id: int) -> bool:
        """Drop the claim on ``instance_id``; True when there was one."""
        if instance_id not in self._lease_until:
            return False
        self._heap = [e for e in self._heap if e[2].id != instance_id]
        heapq.heapify(self._heap)
        del self._lease_until[instance_id]
        return True

    def take_all(self) -> list[Claim]:
        """Empty the buffer; the claims it held."""
        claims = self.claims()
        self._heap.clear()
        self._lease_until.clear()
        return claims


class TokenWaits:
    """Claims a pick took ahead of their rate-limit token (SPEC §23): each starts when
    its token is due, ordered by that time; held (heartbeated, released) all along."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Claim, type[Machine], float]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def claims(self) -> list[Claim]:
        return [entry[2] for entry in self._heap]

    def push(self, at: float, claim: Claim, machine: type[Machine], lease_until: float) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), claim, machine, lease_until))

    def first(self) -> float | None:
        """When the earliest token is due (``time.monotonic()``), None when empty."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[tuple[Claim, type[Machine], float]]:
        """The claims whose token is due by ``now``, with their machine and lease."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            _, _, claim, machine, lease_until = heapq.heappop(self._heap)
            due.append((claim, machine, lease_until))
        return due

    def remove(self, instance_id: int) -> bool:
        before = len(self._heap)
        self._heap = [e for e in self._heap if e[2].id != instance_id]
        heapq.heapify(self._heap)
        return len(self._heap) != before

    def take_all(self) -> list[Claim]:
        claims = self.claims()
        self._heap.clear()
        return claims
