"""An insecure development fleet, started for real: with ``CASTOR_INSECURE_DEV=1`` and no secret, a worker,
a coordinator and Flower start, each saying loudly that it is insecure, and a run's plain tool runs
unsigned. (Without the switch they refuse to start: tests/test_secret.py.)"""

from __future__ import annotations

import re
import time

from tests.fleet.procs import Fleet, agent_spec, tool_spec
from tests.fleet.test_readme_fleet import wait_http
from tests.redis_support import free_port

WARNING = "INSECURE DEVELOPMENT FLEET"


def test_with_the_insecure_switch_every_process_starts_without_a_secret_and_warns(fleet: Fleet) -> None:
    text = re.sub(r'(?m)^secret = ".*"$', "", fleet.config.read_text())
    assert "secret =" not in text
    fleet.config.write_text(text)
    fleet.env["CASTOR_INSECURE_DEV"] = "1"
    fleet.worker("web")
    fleet.coordinator("dev-coordinator")
    port = free_port()
    fleet.start("flower", "flower", "--config", str(fleet.config), "--port", str(port))
    wait_http(f"http://127.0.0.1:{port}/healthcheck")
    for name in ("worker-web", "dev-coordinator"):
        assert WARNING in fleet.log(name) and "no secret is set" in fleet.log(name), name
    assert WARNING not in fleet.log("flower")  # it needs none (tests/test_secret.py)

    tools = [arg for name in ("ticket", "fetch") for arg in ("--tool", tool_spec(name))]
    pid = fleet.cli("submit", agent_spec("quick_job"), *tools).stdout.strip()
    deadline = time.monotonic() + 30
    while (status := fleet.cli_json("inspect", pid)["status"]) == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == "COMPLETED"  # its plain tools ran unsigned on the web pool
