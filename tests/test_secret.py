"""No process of a fleet starts without a secret of its own: none, a sample one or a short one stops a
worker, a coordinator, Flower, the CLI's ``--executor celery`` and ``fleet_options`` with one line,
exit 2, unless the fleet is an insecure development one (then it warns). The shipped config and
compose file carry no usable secret. (Started for real with the insecure switch: tests/fleet/test_secret.py.)"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from castor import CastorWarning, InvalidValueError
from castor._secret import MIN_SECRET_LENGTH, secret_problem
from castor.cli import main
from castor.executors.celery import fleet_options
from castor.fleet.sealing import require_secret
from castor.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
WEAK = {  # secret line in castor.toml -> the problem the error names
    "": "no secret is set",
    'secret = "change-me"': "the secret is a sample value",
    'secret = "ChangeMe"': "the secret is a sample value",
    'secret = "secret"': "the secret is a sample value",
    'secret = "s3cr3t-but-short"': f"below the minimum of {MIN_SECRET_LENGTH}",
}
PROCESSES = {
    "worker": ("worker", "--pool", "default", "--fast-start", "--config"),
    "coordinator": ("coordinator", "--executor", "celery", "--config"),
    "run": ("run", "agents.py:main", "--executor", "celery", "--config"),
}


@pytest.fixture(autouse=True)
def no_secret_in_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("CASTOR_CONFIG", "CASTOR_SECRET", "CASTOR_INSECURE_DEV", "CASTOR_REDIS_URL", "CASTOR_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tools.py").write_text("def rm(path: str) -> str:\n    return path\n")
    (tmp_path / "agents.py").write_text("async def main():\n    return 1\n")


def config(tmp_path: Path, secret_line: str) -> Path:
    path = tmp_path / "castor.toml"
    path.write_text(f"[security]\n{secret_line}\n[tools]\nimport = [\"{tmp_path}/tools.py:rm\"]\n")
    return path


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_a_fleet_process_refuses_a_missing_sample_or_short_secret(
    tmp_path: Path, process: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for line, problem in WEAK.items():
        path = config(tmp_path, line)
        capsys.readouterr()
        assert main([*PROCESSES[process], str(path)]) == 2, line
        err = capsys.readouterr().err
        assert err.startswith(f"castor: error: {path}: ") and problem in err, err
        assert "secrets.token_hex(32)" in err and "CASTOR_INSECURE_DEV=1" in err and err.count("\n") == 1


def test_flower_needs_no_secret_and_takes_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower signs and opens nothing: a secret in the process that serves its web pages would let whoever
    # takes that process sign tasks (with its broker-only Redis user, nothing more). So it starts without.
    import castor.fleet.workers.flower as flower_module

    started: list[list[str]] = []
    monkeypatch.setattr(flower_module, "check_broker", lambda *_: None)
    monkeypatch.setattr(flower_module, "make_app", lambda *_: type("App", (), {"start": started.append})())
    assert main(["flower", "--config", str(config(tmp_path, ""))]) == 0
    assert started and started[0][0] == "flower"


def test_fleet_options_refuses_the_sample_secret_and_warns_in_a_development_fleet() -> None:
    with pytest.raises(InvalidValueError, match="the secret is a sample value"):
        fleet_options(Settings(security={"secret": "change-me"}))
    with pytest.warns(CastorWarning, match="INSECURE DEVELOPMENT FLEET .*the secret is a sample value"):
        require_secret(Settings(security={"secret": "change-me", "insecure_dev": True}), "a test")
    with pytest.warns(CastorWarning, match="INSECURE DEVELOPMENT FLEET .*no secret is set"):
        require_secret(Settings(security={"insecure_dev": True}), "a test")
    require_secret(Settings(security={"secret": secrets.token_hex(32)}), "a test")  # a proper one: silent
    assert secret_problem("x" * MIN_SECRET_LENGTH) is None


def test_the_minimum_is_the_32_characters_the_readme_promises() -> None:
    """The README promises a secret of at least 32 characters (128 bits as hex): 31 are refused, naming 32,
    and ``secrets.token_hex(16)`` (32 characters) passes; the constant alone does not set the promise."""
    assert "at least 32 characters" in (ROOT / "README.md").read_text()
    problem = secret_problem("k" * 31)
    assert problem is not None and "below the minimum of 32" in problem
    with pytest.raises(InvalidValueError, match="below the minimum of 32"):
        require_secret(Settings(security={"secret": secrets.token_hex(15) + "k"}), "a test")
    assert secret_problem(secrets.token_hex(16)) is None


def test_the_shipped_config_and_compose_file_carry_no_usable_secret() -> None:
    settings = load_settings(ROOT / "config/castor.toml", env={})
    with pytest.raises(InvalidValueError, match="no secret is set"):
        require_secret(settings, "castor worker")
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r"CASTOR_SECRET: '\$\{CASTOR_SECRET:\?[^}]+\}'", compose)  # compose refuses to start without
    assert "change-me" not in (ROOT / "config/castor.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    assert 'python -c "import secrets; print(secrets.token_hex(32))"' in readme


def test_a_worker_whose_secret_is_not_the_coordinators_says_so_at_start(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker started with another secret than its coordinators' ran, dead-lettered every task unread, and
    the runs failed a deadline later. A coordinator now leaves a proof of its secret in Redis (nothing of
    the secret itself), and a worker whose own differs says so at start; the next coordinator to start
    with yet another secret says so too."""
    import asyncio
    import logging

    import redis
    from castor.fleet.workers._preflight import _same_secret

    from castor.cli._fleet_views import _leave_secret_proof
    from castor.fleet.sealing import secret_proof

    ours, theirs = secrets.token_hex(32), secrets.token_hex(32)
    assert secret_proof(ours) != secret_proof(theirs) and ours not in secret_proof(ours)
    asyncio.run(_leave_secret_proof(redis_url, redis_prefix, theirs, "co-1"))

    def worker(secret: str) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="castor.worker"):
            _same_secret(Settings(redis={"url": redis_url, "prefix": redis_prefix}, security={"secret": secret}))
        return [r.getMessage() for r in caplog.records]

    try:
        [said] = worker(ours)
        assert "is not the one coordinator co-1 signs tasks with" in said and ours not in said
        assert worker(theirs) == []
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="castor.coordinator"):
            asyncio.run(_leave_secret_proof(redis_url, redis_prefix, ours, "co-2"))
        assert any("signed with another [security] secret" in r.getMessage() for r in caplog.records)
        assert worker(ours) == []  # the newest coordinator's proof is the one compared
    finally:
        client = redis.Redis.from_url(redis_url)
        client.delete(f"{redis_prefix}:fleet:secret-proof")
        client.close()
