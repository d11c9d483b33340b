"""Rolling deploys: a row whose machine this node lacks is handed back with a reason an
operator can read, and the node says so once a minute, not once per offer (SPEC §13)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest
from psycopg import sql

import gen_durable as gd
from gen_durable._runtime.handback import EveryInterval

from .conftest import wait_for


class Known(gd.Job):
    def perform(self, args: Any) -> None:
        return None


async def test_hand_back_names_machine_version_and_node_and_logs_once_a_minute(
    make_engine, conn, schema, caplog: pytest.LogCaptureFixture
) -> None:
    offers: list[Mapping[str, Any]] = []

    def on_miss(event: str, measurements: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        offers.append(meta)

    cur = await conn.execute(
        sql.SQL(
            "INSERT INTO {}.gen_durable (fsm, fsm_version, step) VALUES"
            " ('billing.Charge', 2, 'start'), ('billing.Charge', 2, 'start'),"
            " ('tests.test_deploy_safety.Known', 3, 'start') RETURNING id"
        ).format(sql.Identifier(schema))
    )
    ids = [r[0] for r in await cur.fetchall()]
    gd.telemetry.attach("registry.not_found", on_miss)
    try:
        with caplog.at_level(logging.ERROR, logger="gen_durable"):
            # A short retry offers the rows again and again within the minute.
            async with make_engine(unknown_retry=0.05) as engine:

                async def offered_often() -> bool:
                    return len(offers) >= 5

                await wait_for(offered_often, 20)
                inst = await engine.get(ids[0])
    finally:
        gd.telemetry.detach("registry.not_found", on_miss)
    assert inst is not None and inst.status in ("runnable", "executing")
    reason = f"no machine 'billing.Charge' v2 on node {engine.node_id}"
    assert inst.last_error == f"{reason} (handed back, retried in 0.05s)"
    logged = [r for r in caplog.records if "billing.Charge" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].levelno == logging.ERROR and logged[0].getMessage().startswith(reason)
    assert logged[0].getMessage().endswith(": 2 instance(s)")
    # A version bump that reached only some nodes: the line says what this node has.
    [bumped] = [r.getMessage() for r in caplog.records if Known.__gd_name__ in r.getMessage()]
    assert bumped.endswith("1 instance(s) (this node has v1)"), bumped


def test_every_interval_lets_a_key_through_once_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    gate = EveryInterval(60, clock=lambda: now[0])
    assert gate.allow(("a", 1), 2) == 0
    assert gate.allow(("a", 1), 3) is None
    assert gate.allow(("b", 1)) == 0  # keys are independent
    now[0] += 59.9
    assert gate.allow(("a", 1)) is None
    now[0] += 0.1
    assert gate.allow(("a", 1)) == 4  # held back since the last report: 3 + 1
    assert gate.allow(("a", 1)) is None
