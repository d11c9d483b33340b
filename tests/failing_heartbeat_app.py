"""An ``--app`` that breaks the node's heartbeat on import: a fault injected into a real
worker process, to see the supervisor give up and the worker exit."""

from __future__ import annotations

from gen_durable._runtime.heartbeat import Heartbeat


async def _broken(self: Heartbeat) -> None:
    raise RuntimeError("injected heartbeat fault")


Heartbeat.beat = _broken  # type: ignore[method-assign]
