"""``gen-durable list``, ``cancel``, ``retry`` and ``purge`` (SPEC §21, §22)."""

# ruff: noqa: F811

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# The fixtures `cli`, `db` and `on` are test_cli's own, imported to be shared.
from .test_cli import Result, cli, db, gdcli, insert_greeter, on, one_line_error  # noqa: F401


def test_list_filters_pages_and_json(on: list[str], db: Any, cli: Callable[..., Result]) -> None:
    ids = [insert_greeter(cli, on, n) for n in ("a", "b", "c")]
    db("UPDATE S.gen_durable SET status = 'failed', last_error = 'boom' WHERE id = %s", ids[0])
    res = cli("list", "--where", "status=failed", "--json", *on)
    assert res.code == 0, res
    assert [r["id"] for r in json.loads(res.out)] == [ids[0]]
    res = cli("list", "--where", "status=runnable,failed", "--where", "error=bo", "--json", *on)
    assert [r["id"] for r in json.loads(res.out)] == [ids[0]]
    res = cli("list", "--limit", "2", *on)
    assert res.code == 0 and f"--before {ids[1]}" in res.out
    res = cli("list", "--before", str(ids[1]), "--json", *on)
    assert [r["id"] for r in json.loads(res.out)] == [ids[0]]
    assert "no instance matches" in cli("list", "--where", "queue=none", *on).out
    one_line_error(cli("list", "--where", "colour=red", *on), 2, "NAME=VALUE")
    one_line_error(cli("list", "--where", "status=finished", *on), 1, "unknown status")
    one_line_error(cli("list", "--where", "updated_after=2026-01-01", *on), 2, "time zone")


def test_cancel_and_retry_one_instance(on: list[str], db: Any, cli: Callable[..., Result]) -> None:
    iid = insert_greeter(cli, on)
    res = gdcli("cancel", str(iid), "--reason", "not today", *on)
    assert res.code == 0, res
    assert db("SELECT status::text, last_error FROM S.gen_durable")[0] == ("cancelled", "not today")
    one_line_error(cli("cancel", str(iid), *on), 1, "already finished")
    one_line_error(cli("cancel", str(iid + 99), *on), 1, "no instance")
    res = cli("retry", str(iid), "--step", "start", "--state", '{"name": "bob"}', *on)
    assert res.code == 0, res
    assert db("SELECT status::text, state FROM S.gen_durable")[0] == ("runnable", {"name": "bob"})
    one_line_error(cli("retry", str(iid), *on), 1, "only failed or cancelled")
    one_line_error(cli("cancel", str(iid), "--where", "status=runnable", *on), 2, "not both")


def test_bulk_forms_count_first_and_act_with_yes(
    on: list[str], db: Any, cli: Callable[..., Result]
) -> None:
    ids = [insert_greeter(cli, on, n) for n in ("a", "b", "c")]
    one_line_error(cli("cancel", *on), 2, "at least one filter")
    res = cli("cancel", "--where", "status=runnable", *on)
    assert res.code == 0 and "3 instance(s) match; nothing changed" in res.out
    assert {r[0] for r in db("SELECT status::text FROM S.gen_durable")} == {"runnable"}
    res = cli("cancel", "--where", "status=runnable", "--yes", "--json", *on)
    assert json.loads(res.out) == {
        "action": "cancel",
        "matched": 3,
        "cancelled": 3,
        "dry_run": False,
    }
    res = cli("retry", "--where", f"parent={ids[0]}", "--yes", *on)
    assert res.code == 0 and "retried 0" in res.out
    res = cli("retry", "--where", "status=cancelled", "--yes", *on)
    assert "retried 3 instance(s)" in res.out
    db("UPDATE S.gen_durable SET status = 'done', updated_at = now() - interval '40 days'")
    res = cli("purge", "--older-than", "30d", "--status", "done", *on)
    assert "3 instance(s) match" in res.out
    res = cli("purge", "--older-than", "30d", "--yes", *on)
    assert "purged 3" in res.out
    assert db("SELECT count(*) FROM S.gen_durable")[0][0] == 0
    one_line_error(cli("purge", "--older-than", "soon", *on), 2, "age")


def test_status_counts_cancelled(on: list[str], db: Any, cli: Callable[..., Result]) -> None:
    iid = insert_greeter(cli, on)
    assert cli("cancel", str(iid), *on).code == 0
    out = json.loads(cli("status", "--json", *on).out)
    assert out["queues"]["default"]["cancelled"] == 1


def test_cancel_and_retry_by_key(on: list[str], db: Any, cli: Callable[..., Result]) -> None:
    iid = insert_greeter(cli, on, "ada", "--unique-key", "order-7")
    res = cli("cancel", "--key", "order-7", "--reason", "dup", *on)
    assert res.code == 0 and "key 'order-7': cancelled" in res.out, res
    assert db("SELECT id, status::text FROM S.gen_durable")[0] == (iid, "cancelled")
    # The key is free now, but get(key) still returns the row that carried it last.
    res = cli("retry", "--key", "order-7", *on)
    assert res.code == 0, res
    assert db("SELECT status::text FROM S.gen_durable")[0] == ("runnable",)
    one_line_error(cli("cancel", "--key", "nobody", *on), 1, "ever carried")
    one_line_error(cli("cancel", str(iid), "--key", "order-7", *on), 2, "not both")
