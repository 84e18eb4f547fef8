"""The README's "Running a fleet" section, run as written on localhost: two pools, two coordinators and
Flower from its first block, then submit, approvals, approve, ps and coordinators from its second.

Only what must differ for a shared test machine is substituted: a copy of ``config/castor.toml`` with a
private key prefix and private queue names, the Redis URL of the test session, and a free Flower port;
``CASTOR_SECRET`` is set as the README tells the operator to."""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.request
from pathlib import Path

from tests.fleet.procs import ROOT, Fleet
from tests.fleet.test_compose import readme_fleet_commands
from tests.redis_support import free_port

README_URL = "redis://127.0.0.1:6379/0"


def private_config(fleet: Fleet) -> Path:
    text = (ROOT / "config/castor.toml").read_text()
    text = re.sub(r'(?m)^prefix = "castor"', f'prefix = "{fleet.prefix}"', text)
    text = re.sub(r'(?m)^queue_prefix = "castor"', f'queue_prefix = "{fleet.queues}"', text)
    text = text.replace(README_URL, fleet.url)
    path = fleet.tmp / "castor.toml"
    path.write_text(text)
    fleet.env["CASTOR_SECRET"] = secrets.token_hex(32)  # as the README says: the shipped config has none
    return path


def start_services(fleet: Fleet, services: list[list[str]], flower_port: int) -> None:
    for args in services:
        if args[0] == "flower":
            args[args.index("--port") + 1] = str(flower_port)
            fleet.start("flower", *args)
        elif args[0] == "console":
            fleet.start("console", *args, ready="castor console: serving")
        elif args[0] == "worker":
            fleet.start(f"worker-{args[args.index('--pool') + 1]}", *args, "--fast-start", ready=" ready.")
        else:
            fleet.start(args[args.index("--name") + 1], *args, ready="coordinating")


def until(fleet: Fleet, args: list[str], text: str) -> str:
    """Run the command again until its output holds ``text`` (the fleet works asynchronously)."""
    deadline = time.monotonic() + 30
    out = fleet.cli(*args).stdout
    while text not in out and time.monotonic() < deadline:
        time.sleep(0.2)
        out = fleet.cli(*args).stdout
    return out


def wait_http(url: str, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return int(reply.status)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_readme_fleet_section_works_as_written(fleet: Fleet) -> None:
    config = private_config(fleet)
    port = free_port()
    services, operator = [], []
    for argv in readme_fleet_commands():
        args = [str(config) if a == "config/castor.toml" else a for a in argv[1:]]
        args = [fleet.url if a == README_URL else a for a in args]
        (services if args[0] in ("worker", "coordinator", "flower", "console") else operator).append(args)
    console = free_port()
    start_services(fleet, [[*a, "--port", str(console)] if a[0] == "console" else a for a in services], port)

    pid = ""
    for args in operator:
        if args[0] == "submit":
            pid = fleet.cli(*args).stdout.strip()
            assert re.fullmatch(r"cleanup-[0-9a-f]{8}", pid)
            continue
        args = [pid if a == "<pid>" else a for a in args]
        if args[0] == "approvals":  # until the run reached its destructive call
            assert pid in until(fleet, args, pid)
        elif args[0] == "ps":
            assert re.search(rf"^\[DONE\] {re.escape(pid)}  ", until(fleet, args, "[DONE]"), re.M)
        elif args[0] == "coordinators":
            out = fleet.cli(*args).stdout
            assert "coordinator-1" in out and "coordinator-2" in out
        else:
            fleet.cli(*args)
    assert wait_http(f"http://127.0.0.1:{port}/healthcheck") == 200  # Flower serves the fleet's broker
    with urllib.request.urlopen(f"http://127.0.0.1:{console}/api/runs/{pid}", timeout=5) as reply:
        assert json.load(reply)["status"] == "COMPLETED"  # the console serves the same fleet
