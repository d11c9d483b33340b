"""Machines the worker-process hardening tests load with ``--app``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import gen_durable as gd


class SlowSync(gd.Job):
    """A plain ``def`` step that outlives any drain (cancellation cannot stop a thread)."""

    def perform(self, args: dict[str, Any]) -> str:
        time.sleep(args["seconds"])  # the behaviour under test: a step outliving the drain
        return "finished"


class SlowAsync(gd.Job):
    async def perform(self, args: dict[str, Any]) -> str:
        await asyncio.sleep(args["seconds"])  # likewise: still running at the drain limit
        return "finished"


_RAISE: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
}


class AsyncRaiser(gd.FSM):
    """Raises the BaseException its state names; handle reports what it was given."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        raise _RAISE[ctx.state["raise"]]()

    def handle(self, error: BaseException, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done({"handled": type(error).__name__})


class SyncRaiser(gd.FSM):
    def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        raise _RAISE[ctx.state["raise"]]()

    def handle(self, error: BaseException, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done({"handled": type(error).__name__})


class HandleRaiser(gd.FSM):
    """Its handle itself raises SystemExit: the instance fails, the worker lives."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        raise ValueError("first")

    def handle(self, error: BaseException, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        raise SystemExit(3)
