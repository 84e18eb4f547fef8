"""The compose file's console service: it cannot start beyond loopback without a user, compose demands its
token as it demands the secret, its port is published on loopback only, and its health check is a real
HTTP check that passes against a live console started with the service's own command line (minus docker)
and fails once the console is gone."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.fleet.procs import Fleet
from tests.fleet.test_compose import COMPOSE, ROOT, SERVICES, compose_value, parse
from tests.redis_support import free_port

CONSOLE = SERVICES["console"]


def test_the_console_service_needs_its_token_and_publishes_on_loopback_only() -> None:
    args = parse(CONSOLE["command"])
    assert args.command == "console" and args.host == "0.0.0.0" and args.config == "config/castor.toml"
    env = CONSOLE["environment"]
    assert "CASTOR_SECRET" not in env  # it signs no task
    with pytest.raises(KeyError, match="CASTOR_CONSOLE_TOKEN"):
        compose_value(env["CASTOR_CONSOLE_TOKEN"], {})  # like CASTOR_SECRET: no default, no start
    assert compose_value(env["CASTOR_CONSOLE_USER"], {}) == "admin"
    assert CONSOLE["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]
    assert args.metrics_port is not None and not any(str(args.metrics_port) in p for p in CONSOLE["ports"])
    check = CONSOLE["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"] and f"http://127.0.0.1:{args.port}/healthz" in check[3]
    dockerfile = (ROOT / COMPOSE["x-castor"]["build"]["dockerfile"]).read_text()
    installed = re.search(r"pip install '\.\[([\w,-]+)\]'", dockerfile)
    assert installed is not None and "console" in installed.group(1).split(",")  # starlette, uvicorn, jinja2


def health_check(port: int) -> subprocess.CompletedProcess[str]:
    """The service's health check, as docker runs it in the container: its python, its code (the port is the
    test's own)."""
    code = CONSOLE["healthcheck"]["test"][3].replace(":8765/", f":{port}/")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as reply:
            return int(reply.status), json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.mark.fleet
@pytest.mark.timeout(120)
def test_the_console_services_command_and_health_check_work_by_hand(fleet: Fleet) -> None:
    pytest.importorskip("prometheus_client")
    command = list(CONSOLE["command"])
    for name in ("CASTOR_CONSOLE_TOKEN", "CASTOR_CONSOLE_USER", "CASTOR_CONFIG"):
        fleet.env.pop(name, None)
    refused = fleet.cli(*command, check=False)  # as written: 0.0.0.0, and no token in the environment
    assert refused.returncode != 0 and "reaches beyond this machine" in refused.stderr, refused.stderr
    token = secrets.token_urlsafe(32)
    fleet.env.update({name: compose_value(value, {"CASTOR_CONSOLE_TOKEN": token})
                      for name, value in CONSOLE["environment"].items() if name != "CASTOR_REDIS_URL"})
    # The same command line; only what a shared test machine needs differs: loopback (no test listens on
    # other addresses), free ports, and the test's Redis and prefix (from the fleet's environment).
    port, metrics = free_port(), free_port()
    swap = {"0.0.0.0": "127.0.0.1", "8765": str(port), "9100": str(metrics)}
    fleet.start("console", *[swap.get(a, a) for a in command], ready="castor console: serving")
    deadline = time.monotonic() + 20
    while (check := health_check(port)).returncode != 0:  # compose retries it as well
        assert time.monotonic() < deadline, check.stderr + fleet.log("console")
        time.sleep(0.2)
    assert get(f"http://127.0.0.1:{port}/api/approvals")[0] == 401  # users now: nobody gets in unsigned
    status, body = get(f"http://127.0.0.1:{port}/api/approvals", token)
    assert status == 200 and body["approvals"] == []  # the environment's admin signs in with the token
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as reply:
        scraped = reply.read().decode()
    assert "castor_fleet_up 1.0" in scraped  # the fleet's Redis, through the config and the environment
    assert 'castor_console_decisions_total{decision="approve"} 0.0' in scraped
    console = fleet.procs["console"]
    console.terminate()
    console.wait(15)
    assert health_check(port).returncode != 0  # a console that is gone fails its check
