"""A module the registry's import fallback may load (tests/test_definitions.py)."""

from __future__ import annotations

from typing import Any

import gen_durable as gd


class Target(gd.FSM):
    def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        return gd.Done()


def not_a_machine() -> None:
    raise AssertionError("the registry must never call what it finds by name")
