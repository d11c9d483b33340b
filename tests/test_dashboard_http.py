"""The dashboard over HTTP, in process (SPEC §25): views, actions, and its security —
each refusal checked against the database, which must not have changed."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest

import gen_durable as gd
from gen_durable.dashboard import create_app
from tests.conftest import wait_for
from tests.dashboard_machines import Broken, Family, Waiter

EVIL = "<script>alert(1)</script>"

Client = Callable[..., Any]


@pytest.fixture
async def client(dsn: str, schema: str) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    apps: list[Any] = []
    clients: list[httpx.AsyncClient] = []

    def build(**options: Any) -> httpx.AsyncClient:
        app = create_app(dsn, schema=schema, **options)
        apps.append(app)
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        clients.append(c)
        return c

    yield build
    for c in clients:
        await c.aclose()
    for app in apps:
        await app.dashboard.close()


async def csrf(c: httpx.AsyncClient, instance_id: int) -> str:
    page = await c.get(f"/instances/{instance_id}")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


async def count(conn: psycopg.AsyncConnection[Any], schema: str, sql: str) -> int:
    cur = await conn.execute(sql.replace("{s}", f'"{schema}"'))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_overview_counts_live_work_per_queue(make_engine: Any, client: Any) -> None:
    engine = make_engine(queues={})
    await engine.start()
    await engine.insert(Waiter, queue="alpha")
    await engine.insert(Waiter, queue="alpha")
    await engine.insert(Waiter, queue="beta", schedule_in=3600)
    page = await client().get("/")
    assert page.status_code == 200
    rows = dict(
        re.findall(r'instances\?queue=(\w+)">\w+</a></td>\s*<td class="n">(\d+)', page.text)
    )
    assert rows == {"alpha": "2", "beta": "0"}
    assert 'hx-trigger="every 5s"' in page.text  # auto-refresh
    assert "/static/htmx.min.js" in page.text
    js = await client().get("/static/htmx.min.js")
    assert js.status_code == 200 and "htmx" in js.text


async def test_list_filters_and_keyset_pages(make_engine: Any, client: Any) -> None:
    engine = make_engine(queues={})
    await engine.start()
    waiters = [await engine.insert(Waiter, schedule_in=3600) for _ in range(55)]
    other = await engine.insert(Family, schedule_in=3600)
    c = client()
    first = await c.get("/instances", params={"fsm": Waiter.__gd_name__})
    ids = [int(i) for i in re.findall(r'<td><a href="/instances/(\d+)">', first.text)]
    assert ids == sorted(waiters, reverse=True)[:50] and other not in ids
    more = re.search(r'id="next" href="([^"]+)"', first.text)
    assert more
    second = await c.get(more.group(1).replace("&amp;", "&"))
    rest = [int(i) for i in re.findall(r'<td><a href="/instances/(\d+)">', second.text)]
    assert rest == sorted(waiters, reverse=True)[50:]
    bad = await c.get("/instances", params={"status": "nonsense"})
    assert bad.status_code == 400 and "unknown status" in bad.text


async def test_detail_shows_children_inbox_and_escapes(
    make_engine: Any, client: Any, conn: Any, schema: str
) -> None:
    engine = make_engine(queues={"default": 4}, fsms=[Family, Waiter, Broken])
    await engine.start()
    family = await engine.insert(Family, state={"note": EVIL})
    await wait_for(lambda: _status(engine, family, "awaiting_children"))
    kids = [c.id for c in await engine.children(family)]
    assert len(kids) == 2
    await wait_for(lambda: _status(engine, kids[0], "awaiting_signal"))
    await engine.signal(kids[0], "other", {"text": EVIL})
    broken = await engine.insert(Broken, args={"why": EVIL})
    await wait_for(lambda: _status(engine, broken, "failed"))
    c = client()
    page = (await c.get(f"/instances/{family}")).text
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for kid in kids:
        assert f'href="/instances/{kid}"' in page
    kid_page = (await c.get(f"/instances/{kids[0]}")).text
    assert f'id="parent" href="/instances/{family}"' in kid_page
    assert "other" in kid_page and EVIL not in kid_page
    failed = (await c.get(f"/instances/{broken}")).text
    assert EVIL not in failed and 'id="last_error"' in failed
    listing = (await c.get("/instances")).text
    assert EVIL not in listing


async def _status(engine: gd.Engine, instance_id: int, status: str) -> bool:
    row = await engine.get(instance_id)
    return row is not None and row.status == status


async def test_signal_action_delivers_and_bad_json_changes_nothing(
    make_engine: Any, client: Any, conn: Any, schema: str
) -> None:
    engine = make_engine(queues={"default": 2}, fsms=[Waiter])
    await engine.start()
    waiter = await engine.insert(Waiter)
    await wait_for(lambda: _status(engine, waiter, "awaiting_signal"))
    c = client()
    token = await csrf(c, waiter)
    bad = await c.post(
        f"/instances/{waiter}/signal",
        data={"csrf_token": token, "name": "go", "payload": "{not json"},
    )
    assert bad.status_code == 400 and "not valid JSON" in bad.text
    assert await count(conn, schema, "SELECT count(*) FROM {s}.signals") == 0
    ok = await c.post(
        f"/instances/{waiter}/signal",
        data={"csrf_token": token, "name": "go", "payload": '{"n": 7}'},
    )
    assert ok.status_code == 200 and "stored" in ok.text
    done = await engine.wait(waiter, timeout=30)
    assert done.result == {"payload": {"n": 7}}


async def test_delete_only_finished(make_engine: Any, client: Any, conn: Any, schema: str) -> None:
    engine = make_engine(queues={"default": 2}, fsms=[Waiter, Broken])
    await engine.start()
    waiter = await engine.insert(Waiter)
    broken = await engine.insert(Broken)
    await wait_for(lambda: _status(engine, broken, "failed"))
    c = client()
    token = await csrf(c, waiter)
    live = await c.post(f"/instances/{waiter}/delete", data={"csrf_token": token})
    assert live.status_code == 400 and "does not apply" in live.text
    assert await engine.get(waiter) is not None
    gone = await c.post(f"/instances/{broken}/delete", data={"csrf_token": token})
    assert gone.status_code == 200 and "deleted" in gone.text
    assert await engine.get(broken) is None


async def test_cancel_and_retry_actions(make_engine: Any, client: Any) -> None:
    engine = make_engine(queues={"default": 2}, fsms=[Waiter])
    await engine.start()
    waiter = await engine.insert(Waiter)
    await wait_for(lambda: _status(engine, waiter, "awaiting_signal"))
    c = client()
    token = await csrf(c, waiter)
    early = await c.post(f"/instances/{waiter}/retry", data={"csrf_token": token})
    assert early.status_code == 400 and "does not apply" in early.text
    assert await _status(engine, waiter, "awaiting_signal")
    done = await c.post(
        f"/instances/{waiter}/cancel",
        data={"csrf_token": token, "reason": "<b>no</b>", "cascade": "on"},
    )
    assert done.status_code == 200 and "cancelled" in done.text
    row = await engine.get(waiter)
    assert row is not None and (row.status, row.last_error) == ("cancelled", "<b>no</b>")
    again = await c.post(f"/instances/{waiter}/cancel", data={"csrf_token": token})
    assert again.status_code == 400 and await _status(engine, waiter, "cancelled")
    back = await c.post(f"/instances/{waiter}/retry", data={"csrf_token": token})
    assert back.status_code == 200 and "runnable again" in back.text
    await wait_for(lambda: _status(engine, waiter, "awaiting_signal"))


async def test_csrf_and_read_only_refuse_and_change_nothing(
    make_engine: Any, client: Any, conn: Any, schema: str
) -> None:
    engine = make_engine(queues={})
    await engine.start()
    waiter = await engine.insert(Waiter)
    c = client()
    token = await csrf(c, waiter)
    form = {"name": "go", "payload": "{}"}
    assert (await c.post(f"/instances/{waiter}/signal", data=form)).status_code == 403
    wrong = {**form, "csrf_token": token + "x"}
    assert (await c.post(f"/instances/{waiter}/signal", data=wrong)).status_code == 403
    fresh = client()  # a forged form from another site carries no cookie of ours
    forged = await fresh.post(f"/instances/{waiter}/signal", data={**form, "csrf_token": token})
    assert forged.status_code == 403
    ro = client(read_only=True)
    page = (await ro.get(f"/instances/{waiter}")).text
    assert "action-signal" not in page and "read-only" in page
    ro_token = re.search(r"gd_csrf=([^;]+)", (await ro.get("/")).headers["set-cookie"])
    assert ro_token
    refused = await ro.post(
        f"/instances/{waiter}/signal", data={**form, "csrf_token": ro_token.group(1)}
    )
    assert refused.status_code == 403
    assert await count(conn, schema, "SELECT count(*) FROM {s}.signals") == 0


async def test_auth_required_when_configured(make_engine: Any, client: Any) -> None:
    c = client(auth="ops:s3cret", token="tok-123")
    assert (await c.get("/")).status_code == 401
    assert (await c.get("/static/htmx.min.js")).status_code == 401
    wrong = base64.b64encode(b"ops:nope").decode()
    assert (await c.get("/", headers={"Authorization": f"Basic {wrong}"})).status_code == 401
    good = base64.b64encode(b"ops:s3cret").decode()
    assert (await c.get("/", headers={"Authorization": f"Basic {good}"})).status_code == 200
    assert (await c.get("/", headers={"Authorization": "Bearer tok-123"})).status_code == 200
    assert (await c.get("/", headers={"Authorization": "Bearer tok-12"})).status_code == 401


async def test_unknown_and_bad_ids_are_404(
    make_engine: Any, client: Any, conn: Any, schema: str
) -> None:
    engine = make_engine(queues={})
    await engine.start()
    waiter = await engine.insert(Waiter)
    c = client()
    token = await csrf(c, waiter)
    for bad in ("999999", "abc", "-1", "99999999999999999999"):
        page = await c.get(f"/instances/{bad}")
        assert page.status_code == 404, bad
        posted = await c.post(f"/instances/{bad}/signal", data={"csrf_token": token, "name": "go"})
        assert posted.status_code == 404, bad
    unknown = await c.post(f"/instances/{waiter}/explode", data={"csrf_token": token})
    assert unknown.status_code == 404
    assert await count(conn, schema, "SELECT count(*) FROM {s}.signals") == 0
    assert await count(conn, schema, "SELECT count(*) FROM {s}.gen_durable") == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_refuses_public_bind_without_auth(dsn: str, schema: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GEN_DURABLE_DASHBOARD_TOKEN"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gen_durable",
            "dashboard",
            "--dsn",
            dsn,
            "--schema",
            schema,
            "--host",
            "0.0.0.0",
            "--port",
            str(_free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2 and "without authentication" in proc.stderr


def test_cli_serves_on_loopback(dsn: str, schema: str) -> None:
    import subprocess
    import sys
    import time

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gen_durable",
            "dashboard",
            "--dsn",
            dsn,
            "--schema",
            schema,
            "--port",
            str(port),
            "--read-only",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "dashboard did not start"
                time.sleep(0.2)
        assert page.status_code == 200 and "read-only" in page.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
