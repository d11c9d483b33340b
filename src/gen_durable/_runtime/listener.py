"""LISTEN for inserts and wake-ups: a latency accelerator, never the truth (SPEC §8).

One dedicated connection per node listens on the schema's channel; a notification
names a queue, whose scheduler is woken at once. Polling stays the source of truth,
so a lost notification (or a lost connection) only costs latency; after a reconnect
every queue is nudged once, since anything inserted meanwhile was not announced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from .._db import runner
from .._db.queries import Queries
from .config import Config
from .service import Service

log = logging.getLogger("gen_durable")


class Listener(Service):
    name = "listener"

    def __init__(
        self,
        config: Config,
        queries: Queries,
        wake: Callable[[str | None], None],
    ) -> None:
        self._config = config
        self._queries = queries
        self._wake = wake  # a queue's name, or None for every queue

    async def run(self) -> None:
        channel = self._queries.channel
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._config.dsn, autocommit=True)
                async with conn:
                    await runner.fetch(conn, self._queries.listen(), raw=True)
                    delay = 0.1
                    self._wake(None)
                    async for note in conn.notifies():
                        if note.channel == channel:
                            self._wake(note.payload)
            except (psycopg.Error, OSError) as exc:
                log.warning("listener connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._config.max_poll_interval)
