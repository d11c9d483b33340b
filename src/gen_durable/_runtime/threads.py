"""The thread pool that runs plain ``def`` steps (SPEC §8).

Like :class:`concurrent.futures.ThreadPoolExecutor`, with one difference that matters
for a clean stop: its threads are daemon threads. The standard pool registers an
interpreter-exit hook that joins every worker thread, so a ``def`` step still running
when the drain gives up would keep the process alive until the step returned —
however long that is. A step abandoned by the drain has already been handed back
(its outcome would be stale anyway), so nothing is lost when the process exits
under it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None


class DaemonThreadPool:
    """At most ``max_workers`` daemon threads, started on demand."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "gen_durable-step") -> None:
        self._max = max(1, max_workers)
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("the step thread pool is shut down")
            self._work.put((future, fn, args))
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._max:
                t = threading.Thread(
                    target=self._worker,
                    name=f"{self._prefix}-{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(t)
                t.start()
        return future

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, fn, args = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:  # handed to the awaiting step, never lost
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, fn, args
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Refuse new work and let idle threads end; busy ones end with their step
        (or with the process: they are daemons)."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            for _ in self._threads:
                self._work.put(None)
