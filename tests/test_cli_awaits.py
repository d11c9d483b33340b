"""``gen-durable show`` of a parked instance: the awaited set and the deadline (§19)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .test_cli import GREETER, Result, cli, db, gdcli, insert_greeter, on

__all__ = ["cli", "db", "on"]  # fixtures used by name below


def test_show_displays_the_awaited_set_and_the_deadline(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    bounded = insert_greeter(cli, on, "bounded")
    open_ended = insert_greeter(cli, on, "open")
    db(
        "UPDATE S.gen_durable SET status = 'awaiting_signal', awaits = '{approved,rejected}',"
        " await_deadline = '2031-02-03 04:05:06+00' WHERE id = %s",
        bounded,
    )
    db("UPDATE S.gen_durable SET status = 'awaiting_signal', awaits = '{go}' WHERE id = %s",
       open_ended)  # fmt: skip
    text = cli("show", str(bounded), *on).out
    assert f"instance {bounded}: {GREETER} v1" in text
    assert "waits for approved | rejected until 2031-02-0" in text
    assert "no deadline" in cli("show", str(open_ended), *on).out
    shown = json.loads(gdcli("show", str(bounded), "--json", *on).out)
    assert shown["awaits"] == ["approved", "rejected"]
    assert shown["await_deadline"].startswith("2031-02-03")
