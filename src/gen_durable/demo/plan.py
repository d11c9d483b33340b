"""The demo's plan: each order's customer, items, faults and payment timing."""

from __future__ import annotations

from dataclasses import dataclass

import gen_durable as gd

from .machines import OUT_OF_STOCK, Order


@dataclass(frozen=True)
class Plan:
    """What each order goes through, decided up front so the end state is checkable."""

    size: int

    def customer(self, n: int) -> str:
        return f"c{n % max(3, self.size // 5):02d}"

    def items(self, n: int) -> list[str]:
        skus = [f"SKU-{n}-{i}" for i in range(1 + n % 3)]
        return [*skus, OUT_OF_STOCK] if n % 7 == 3 else skus

    def flaky(self, n: int) -> int:
        return 2 if n % 5 == 1 else 0

    def early(self, n: int) -> bool:
        """The payment arrives before the order runs at all."""
        return n % 3 == 0 and not self.webhook_first(n)

    def unpaid(self, n: int) -> bool:
        """The payment never arrives: the order's deadline cancels it."""
        return n % 10 == 7 and not self.early(n)

    def webhook_first(self, n: int) -> bool:
        """The payment webhook arrives before the order exists (signal-with-start)."""
        return n % 10 == 5

    def duplicated(self, n: int) -> bool:
        """The payment webhook is delivered twice, with the same dedup_key."""
        return n % 4 == 0 or n % 3 == 0

    @property
    def numbers(self) -> range:
        return range(1, self.size + 1)

    def order(self, n: int) -> gd.Spec:
        state = {
            "number": n,
            "customer": self.customer(n),
            "items": self.items(n),
            "flaky": self.flaky(n),
        }
        return gd.Spec(Order, state=state, unique_key=self.key(n))

    @staticmethod
    def key(n: int) -> str:
        return f"order-{n:06d}"
