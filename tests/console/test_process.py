"""``castor console`` as a process: it serves a SQLite store, and SIGTERM ends it promptly even with a page's
event stream open (the stream is told ``bye`` first)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.redis_support import free_port

pytestmark = pytest.mark.fleet
ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_ends_the_console_and_its_open_event_streams(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("CASTOR_STORE", "CASTOR_REDIS_URL", "CASTOR_CONFIG")}
    log = (tmp_path / "console.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "castor", "console", "--db", str(tmp_path / "c.db"), "--port", str(port)],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/events", timeout=10)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "console.log").read_text()
                time.sleep(0.1)
        with stream:
            assert stream.readline() == b"event: hello\n"
            proc.send_signal(signal.SIGTERM)
            rest = stream.read().decode()  # the server ends the stream
        assert "event: bye" in rest
        assert proc.wait(timeout=10) in (0, -signal.SIGTERM)  # uvicorn raises the signal again once it stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
    assert "Traceback" not in (tmp_path / "console.log").read_text()
