"""The console in headless Chromium over a live localhost fleet: an operator signs in, sees a new pending
call arrive without reloading, approves it, and watches the run complete; its timeline shows who approved.

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright; ``.ci/run`` installs it when missing.
With ``CASTOR_SCREENSHOTS=DIR`` the test also saves the README's screenshots there (``docs/``).
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.procs import Fleet
from tests.redis_support import free_port

pytestmark = pytest.mark.fleet
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TOKEN = "alice-browser-token-0123456789"

AGENT = '''
from castor import castor_tool
from castor.lib import tool


def lookup(host: str) -> dict:
    return {"host": host, "disk_used": 0.93}


def list_logs(host: str, older_than_days: int) -> list:
    return [f"/var/log/app/{host}-{i}.log.gz" for i in range(3)]


@castor_tool(destructive=True, sensitive=["api_key"])
def purge_logs(host: str, paths: list, api_key: str) -> str:
    return f"purged {len(paths)} files on {host}"


def notify(channel: str, text: str) -> str:
    return f"posted to {channel}"


async def cleanup(host: str = "web-1"):
    await tool("lookup", host=host)
    logs = await tool("list_logs", host=host, older_than_days=30)
    done = await tool("purge_logs", host=host, paths=logs, api_key="sk-live-do-not-show")
    await tool("notify", channel="#ops", text=done)
    return done


async def cleanup_db():
    return await cleanup("db-2")
'''
CONSOLE = """
[[console.users]]
name = "alice"
token = "{token}"
role = "approver"
"""


def chromium_or_skip() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(redis_url, tmp_path)
    try:
        yield f
    finally:
        f.close()


def wait_until(what: str, check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def submit(fleet: Fleet, agent: Path, name: str) -> str:
    tools = [a for n in ("lookup", "list_logs", "purge_logs", "notify") for a in ("--tool", f"{agent}:{n}")]
    return fleet.cli("submit", f"{agent}:{name}", *tools, "--budget", "api=20").stdout.strip()


def test_an_operator_approves_a_fleet_call_in_the_browser(fleet: Fleet, tmp_path: Path) -> None:
    executable = chromium_or_skip()
    agent = tmp_path / "ops_agent.py"
    agent.write_text(textwrap.dedent(AGENT))
    config = tmp_path / "console.toml"
    config.write_text(fleet.config.read_text() + CONSOLE.format(token=TOKEN))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fleet.coordinator("co-1", executor="local", lease=2.0)
    fleet.start("console", "console", "--config", str(config), "--port", str(port), ready="castor console: serving")
    wait_until("the console to answer", lambda: healthy(url))
    shots = Path(os.environ.get("CASTOR_SCREENSHOTS") or tmp_path)

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"{url}/approvals")
        assert "/login" in page.url
        page.fill("input[name=token]", TOKEN)
        page.click("button.primary")
        page.wait_for_url(f"{url}/approvals")
        page.wait_for_selector("#live-dot.on")  # the event stream is open
        assert page.locator("article.approval").count() == 0

        pid = submit(fleet, agent, "cleanup")  # a call starts waiting while the page is open
        row = page.locator(f'article.approval[data-pid="{pid}"]')
        row.wait_for(timeout=20_000)  # it appears without a reload
        other = submit(fleet, agent, "cleanup_db")
        page.locator(f'article.approval[data-pid="{other}"]').wait_for(timeout=20_000)
        assert "sk-live-do-not-show" not in page.content() and "purge_logs" in row.inner_text()
        page.screenshot(path=str(shots / "console-approvals.png"), full_page=True)

        row.locator('button[data-action="approve"]').click()
        page.wait_for_selector(".notice.ok")
        assert "approved by alice" in page.locator(".notice.ok").inner_text()

        page.goto(f"{url}/runs/{pid}")
        page.wait_for_selector('#run-status[data-status="COMPLETED"]', timeout=30_000)  # live, no reload
        timeline = page.locator("ol.timeline").inner_text()
        assert "approved by alice" in timeline and "sk-live-do-not-show" not in page.content()
        page.screenshot(path=str(shots / "console-run.png"), full_page=True)
        browser.close()

    run = json.loads(fleet.cli("inspect", pid, "--json").stdout)
    assert run["status"] == "COMPLETED" and run["syscall_log"][2]["decided_by"] == "alice"
