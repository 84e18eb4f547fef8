"""Model calls run on their own pool in the fleet (``[llm] pool``, ``llm`` by default): its workers hold the API
keys, and a worker of that pool serves exactly the tools routed there."""

from __future__ import annotations

from pathlib import Path

import pytest
from castor.fleet.workers.main import worker_argv, worker_registry

from castor.errors import ConfigError
from castor.settings import load_settings


def test_a_worker_of_the_llm_pool_serves_the_tools_that_call_models(tmp_path: Path) -> None:
    tools = tmp_path / "t.py"
    tools.write_text("def ask(q: str) -> str:\n    return q\n\ndef ls() -> list:\n    return []\n")
    config = tmp_path / "castor.toml"
    config.write_text(f"[tools]\nimport = ['{tools}:ask,ls']\n[llm]\ntools = ['ask']\n"
                      "[llm.limits.'openai/gpt-4o']\nrpm = 500\ntpm = 200000\n")
    settings = load_settings(config, env={})
    assert [spec.name for spec in worker_registry(settings, "llm")] == ["ask"]
    assert [spec.name for spec in worker_registry(settings, "default")] == ["ls"]
    assert "--queues=castor.llm" in worker_argv(settings, "llm")
    assert settings.llm.limits["openai/gpt-4o"].tpm == 200_000
    with pytest.raises(ConfigError, match="tool 'ls' runs on pool 'default'"):
        worker_registry(settings, "llm", [f"{tools}:ls"])


def test_the_pool_can_be_renamed_and_pools_still_win(tmp_path: Path) -> None:
    config = tmp_path / "castor.toml"
    config.write_text("[llm]\npool = 'models'\ntools = ['ask', 'draft']\n[pools]\ngpu = ['draft']\n")
    settings = load_settings(config, env={})
    assert (settings.pool_of("ask"), settings.pool_of("draft"), settings.pool_of("ls")) == ("models", "gpu", "default")
    assert settings.check_pool("models") == "models"
    with pytest.raises(ConfigError, match="unknown pool 'llm'"):
        settings.check_pool("llm")


def test_a_worker_of_the_llm_pool_without_its_providers_key_says_so_at_start(tmp_path: Path) -> None:
    """A newcomer's ``llm`` worker started without ``OPENAI_API_KEY`` said nothing; every model call failed."""
    from castor.llm.fleet import missing_key

    config = tmp_path / "castor.toml"
    config.write_text('[llm]\nprovider = "openai"\nmodel = "gpt-4o-mini"\n')
    settings = load_settings(config)
    said = missing_key(settings, "llm", env={})
    assert said is not None and "$OPENAI_API_KEY is not set" in said
    assert missing_key(settings, "llm", env={"OPENAI_API_KEY": "sk-x"}) is None
    assert missing_key(settings, "fs", env={}) is None  # not the pool that calls models
    local = tmp_path / "local.toml"
    local.write_text('[llm]\nprovider = "openai"\nmodel = "m"\nbase_url = "http://127.0.0.1:8000/v1"\n')
    assert missing_key(load_settings(local), "llm", env={}) is None  # a local server may need no key
