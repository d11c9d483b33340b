"""The dashboard in a real headless Chromium (SPEC §25): the system browser driven by
Playwright, a real worker and a real dashboard process. Under ``CI=true`` a missing
browser fails the run; elsewhere these tests skip saying why. The screenshots in
``docs/`` are written by this test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import gen_durable as gd
from tests.dashboard_machines import Family, Waiter

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "images"
EVIL = "<script>window.__owned = 1</script>"


def _browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no chromium on PATH: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    return found


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gen_durable", *args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.fixture
def site(dsn: str, schema: str) -> Iterator[str]:
    port = _port()
    db = ["--dsn", dsn, "--schema", schema]
    worker = _spawn(
        "worker",
        *db,
        "--app",
        "tests.dashboard_machines",
        "--queue",
        "default=4",
        "--queue",
        "mail=2",
        "--poll-interval",
        "0.05",
    )
    board = _spawn("dashboard", *db, "--port", str(port))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert board.poll() is None, board.communicate()
        try:
            return httpx.get(url + "/", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        _until(up, "the dashboard")
        yield url
    finally:
        for proc in (board, worker):
            proc.terminate()
            proc.wait(timeout=60)


def _status(dsn: str, schema: str, iid: int) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f'SELECT status::text FROM "{schema}".gen_durable WHERE id = %s', (iid,))
        found = row.fetchone()
    return "" if found is None else str(found[0])


def test_operator_walks_the_dashboard(site: str, dsn: str, schema: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    executable = _browser()
    client = gd.SyncClient(dsn, schema=schema)
    try:
        family = client.insert(Family, state={"note": EVIL})
        for i in range(3):
            client.insert(Waiter, state={"note": f"order {i}"}, queue="mail")
        _until(lambda: _status(dsn, schema, family) == "awaiting_children", "the children")
        kids = [c.id for c in client.children(family)]
        _until(lambda: all(_status(dsn, schema, k) == "awaiting_signal" for k in kids), "kids")
        client.signal(kids[1], "note", {"from": "operator"})
        client.insert(Waiter, queue="later", schedule_in=3600)
    finally:
        client.close()
    # The documentation's screenshots are rewritten only on request, so an ordinary
    # run leaves the checkout as it was.
    shots = DOCS if os.environ.get("GEN_DURABLE_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(site + "/")
        assert "later" in page.locator("#queues").inner_text()
        page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)

        page.click("text=Instances")
        page.select_option("select[name=status]", "awaiting_signal")
        page.fill("input[name=fsm]", Waiter.__gd_name__)
        page.click("button:has-text('Filter')")
        ids = page.locator("#instances tr td:first-child a").all_inner_texts()
        assert len(ids) == 5 and str(family) not in ids
        assert page.locator("#instances").inner_text().count("awaiting_signal") == 5
        page.screenshot(path=str(shots / "dashboard-list.png"), full_page=True)

        page.goto(f"{site}/instances/{family}")
        assert EVIL in page.locator("#state").inner_text()  # shown as text, not run
        assert page.evaluate("window.__owned") is None
        children = page.locator("#children").inner_text()
        assert all(str(k) in children for k in kids)
        page.click(f"#children a:has-text('{kids[1]}')")
        assert "operator" in page.locator("#inbox").inner_text()
        page.screenshot(path=str(shots / "dashboard-detail.png"), full_page=True)

        page.fill("#action-signal textarea[name=payload]", "{broken")
        page.click("#action-signal button")
        page.wait_for_selector("#message.refused")
        assert "not valid JSON" in page.locator("#message").inner_text()
        assert _status(dsn, schema, kids[1]) == "awaiting_signal"

        page.fill("#action-signal input[name=name]", "go")
        page.fill("#action-signal textarea[name=payload]", '{"ok": true}')
        page.click("#action-signal button")
        page.wait_for_selector("#message:not(.refused)")
        assert "stored" in page.locator("#message").inner_text()
        _until(lambda: _status(dsn, schema, kids[1]) == "done", "the signalled child")

        # Cancel a parked child through the page, then retry it (SPEC §21).
        page.goto(f"{site}/instances/{kids[0]}")
        assert page.locator("#action-retry").count() == 0  # live: no retry offered
        page.fill("#action-cancel input[name=reason]", "operator said so")
        page.click("#action-cancel button")
        page.wait_for_selector("#message:not(.refused)")
        assert "cancelled" in page.locator("#message").inner_text()
        _until(lambda: _status(dsn, schema, kids[0]) == "cancelled", "the cancelled child")
        page.goto(f"{site}/instances/{kids[0]}")
        assert page.locator("#action-cancel").count() == 0  # finished: no cancel offered
        page.click("#action-retry button")
        page.wait_for_selector("#message:not(.refused)")
        assert "runnable again" in page.locator("#message").inner_text()
        _until(
            lambda: _status(dsn, schema, kids[0]) in ("runnable", "executing", "awaiting_signal"),
            "the retried child",
        )
        browser.close()
