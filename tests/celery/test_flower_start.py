"""``castor flower`` refuses what would go wrong quietly: listening beyond loopback without authentication
(one line, unless ``--allow-unauthenticated``, which warns), and a broker that does not answer (one line at
once; Flower itself retried forever)."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from castor.cli import main

from .conftest import ROOT


def _config(tmp_path: Path, broker: str = "redis://127.0.0.1:6379/0", auth: str = "") -> Path:
    config = tmp_path / "castor.toml"
    flower = f'[flower]\nbasic_auth = "{auth}"\n' if auth else ""
    config.write_text(f'[broker]\nurl = "{broker}"\n[security]\nsecret = "{secrets.token_hex(32)}"\n{flower}')
    return config


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """What Flower would have been started with (nothing is started)."""
    import castor.fleet.workers.flower as flower_module

    calls: list[list[str]] = []
    monkeypatch.setattr(flower_module, "check_broker", lambda *_: None)
    monkeypatch.setattr(flower_module, "make_app", lambda *_: type("App", (), {"start": calls.append})())
    for name in ("FLOWER_BASIC_AUTH", "FLOWER_AUTH", "CASTOR_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return calls


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.5", "::", "flower.example"])
def test_flower_beyond_loopback_without_auth_is_refused(
    tmp_path: Path, started: list[list[str]], capsys: pytest.CaptureFixture[str], address: str
) -> None:
    assert main(["flower", "--config", str(_config(tmp_path)), "--address", address]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"castor: error: refusing to start Flower on {address} without authentication")
    assert err.count("\n") == 1 and started == []


def test_flower_beyond_loopback_starts_with_auth_or_when_allowed(
    tmp_path: Path, started: list[list[str]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["flower", "--config", str(_config(tmp_path, auth="ops:pw")), "--address", "0.0.0.0"]) == 0
    assert "--basic-auth=ops:pw" in started[-1]
    assert main(["flower", "--config", str(_config(tmp_path)), "--address", "0.0.0.0",
                 "--allow-unauthenticated"]) == 0
    assert "castor: warning: Flower on 0.0.0.0 without authentication" in capsys.readouterr().out
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:pw")  # Flower's own setting counts too
    assert main(["flower", "--config", str(_config(tmp_path)), "--address", "0.0.0.0"]) == 0
    for loopback in ("127.0.0.1", "localhost", "::1"):
        monkeypatch.delenv("FLOWER_BASIC_AUTH")
        assert main(["flower", "--config", str(_config(tmp_path)), "--address", loopback]) == 0
        monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:pw")
    assert len(started) == 6


@pytest.mark.fleet
def test_flower_on_an_unreachable_broker_fails_fast_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _config(tmp_path, broker=f"redis://127.0.0.1:{port}/0")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "castor", "flower", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert time.monotonic() - began < 20
    assert done.stderr.startswith(f"castor: error: cannot start Flower: the broker at redis://127.0.0.1:{port}/0")
    assert done.stderr.count("\n") == 1, done.stderr


def test_credentials_nobody_can_sign_in_with_are_refused_and_a_secret_is_warned_of(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``FLOWER_BASIC_AUTH=admin`` (no password) started Flower answering 401 to everyone, unexplained; a
    Flower given CASTOR_SECRET holds a key it needs none of."""
    from castor.fleet.workers.flower import check_credentials

    from castor.errors import ConfigError
    from castor.settings import Settings

    for value in ("admin", "admin:", ":pw", "ann:pw,bob"):
        with pytest.raises(ConfigError, match="must be user:password"):
            check_credentials(Settings(), env={"FLOWER_BASIC_AUTH": value})
    with pytest.raises(ConfigError, match=r"\[flower\] basic_auth must be user:password"):
        check_credentials(Settings(flower={"basic_auth": "admin"}), env={})
    check_credentials(Settings(), env={"FLOWER_BASIC_AUTH": "ann:pw,bob:pw2"})
    assert capsys.readouterr().out == ""
    check_credentials(Settings(), env={"CASTOR_SECRET": "x" * 40})
    assert "CASTOR_SECRET is set for Flower, which needs no secret" in capsys.readouterr().out
