"""The README's "Running a fleet" section, run as written on localhost: two pools, two coordinators and
Flower from its first block, then submit, approvals, approve, ps and coordinators from its second.

Only what must differ for a shared test machine is substituted: a copy of ``config/castor.toml`` with a
private key prefix and private queue names, the Redis URL of the test session, and a free Flower port."""

from __future__ import annotations

import re
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
    return path


def test_the_readme_fleet_section_works_as_written(fleet: Fleet) -> None:
    config = private_config(fleet)
    port = free_port()
    services, operator = [], []
    for argv in readme_fleet_commands():
        args = [str(config) if a == "config/castor.toml" else a for a in argv[1:]]
        args = [fleet.url if a == README_URL else a for a in args]
        (services if args[0] in ("worker", "coordinator", "flower") else operator).append(args)
    for args in services:
        if args[0] == "flower":
            args[args.index("--port") + 1] = str(port)
            fleet.start("flower", *args)
        elif args[0] == "worker":
            fleet.start(f"worker-{args[args.index('--pool') + 1]}", *args, "--fast-start", ready=" ready.")
        else:
            fleet.start(args[args.index("--name") + 1], *args, ready="coordinating")

    pid = ""
    for args in operator:
        if args[0] == "submit":
            pid = fleet.cli(*args).stdout.strip()
            assert re.fullmatch(r"cleanup-[0-9a-f]{8}", pid)
            continue
        args = [pid if a == "<pid>" else a for a in args]
        if args[0] == "approvals":  # wait until the run reached its destructive call
            deadline = time.monotonic() + 30
            while pid not in fleet.cli(*args).stdout and time.monotonic() < deadline:
                time.sleep(0.2)
        if args[0] == "ps":
            deadline = time.monotonic() + 30
            while "COMPLETED" not in fleet.cli(*args).stdout and time.monotonic() < deadline:
                time.sleep(0.2)
        out = fleet.cli(*args).stdout
        if args[0] in ("approvals", "ps"):
            assert pid in out
        if args[0] == "ps":
            assert re.search(rf"{pid}\s+COMPLETED", out), out
        if args[0] == "coordinators":
            assert "coordinator-1" in out and "coordinator-2" in out

    deadline = time.monotonic() + 20
    while True:  # Flower serves the fleet's broker
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2) as reply:
                assert reply.status == 200
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
