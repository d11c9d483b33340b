"""One lifecycle for every looping part of a node, and the supervisor that runs them.

A :class:`Service` is a named loop (``run``) with an idempotent ``stop``. The node's
schedulers (one per queue), heartbeat, reaper and listener are services, and so will
be every periodic part to come. A service's loop handles the errors it expects (a lost
connection: log, back off, go on); whatever escapes it is a fault.

The :class:`Supervisor` starts services and restarts one whose loop raised, after a
backoff that doubles from ``backoff`` up to ``max_backoff``. A service that fails
``max_failures`` times within ``window`` seconds is beyond restarting: the supervisor
calls ``on_fatal`` and the node stops cleanly (drains, hands its claims back) instead
of limping on — heartbeating, say, claims of a queue whose scheduler cannot run them.

Test signals: :attr:`Supervisor.restarts` counts restarts per service, and
``service.restarted`` / ``service.failed`` telemetry fire, so tests wait for the
supervisor to act instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable

from .. import telemetry

log = logging.getLogger("gen_durable")


class Service:
    """A named loop run by the supervisor. Subclasses implement :meth:`run`."""

    name: str = "service"

    async def run(self) -> None:
        """The service's loop; returns when the service is done, raises on a fault."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Called once the loop is cancelled; idempotent. Default: nothing to release."""


class Supervisor:
    def __init__(
        self,
        on_fatal: Callable[[str, BaseException], None],
        *,
        max_failures: int = 5,
        window: float = 60.0,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self._on_fatal = on_fatal
        self._max_failures = max_failures
        self._window = window
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._services: dict[str, Service] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, deque[float]] = {}
        self.restarts: Counter[str] = Counter()
        self._stopping = False

    def start(self, service: Service) -> None:
        if service.name in self._services:
            raise ValueError(f"a service named {service.name!r} already runs")
        self._services[service.name] = service
        self._failures[service.name] = deque()
        self._tasks[service.name] = asyncio.create_task(
            self._keep(service), name=f"gen_durable.{service.name}"
        )

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def _keep(self, service: Service) -> None:
        loop = asyncio.get_running_loop()
        delay = self._backoff
        while not self._stopping:
            try:
                await service.run()
                return  # finished on its own (a scheduler told to stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = self._failures[service.name]
                now = loop.time()
                failures.append(now)
                while failures and failures[0] < now - self._window:
                    failures.popleft()
                if len(failures) >= self._max_failures:
                    log.critical(
                        "gen_durable %s service failed %d times in %.0fs (last: %r); "
                        "stopping the node",
                        service.name,
                        len(failures),
                        self._window,
                        exc,
                        exc_info=exc,
                    )
                    if telemetry.listening("service.failed"):
                        telemetry.emit(
                            "service.failed",
                            {"count": len(failures)},
                            {"service": service.name, "error": exc},
                        )
                    self._on_fatal(service.name, exc)
                    return
                log.error(
                    "gen_durable %s service raised %r; restarting it in %.1fs",
                    service.name,
                    exc,
                    delay,
                    exc_info=exc,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)
            self.restarts[service.name] += 1
            if telemetry.listening("service.restarted"):
                telemetry.emit(
                    "service.restarted",
                    {"count": self.restarts[service.name]},
                    {"service": service.name},
                )

    async def stop(self, names: list[str] | None = None) -> None:
        """Cancel the named services (all by default) and let each release what it
        holds. Idempotent."""
        if names is None:
            self._stopping = True
            names = list(self._tasks)
        tasks = [self._tasks[n] for n in names if n in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name in names:
            service = self._services.get(name)
            if service is not None:
                await service.stop()
