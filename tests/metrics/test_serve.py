"""``castor.metrics.serve``: what the console and the MCP gateway call to expose ``/metrics``."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

import castor.metrics
from castor.backends.redis import redis_backend
from castor.errors import ConfigError
from castor.settings import Settings


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {s.name + repr(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_serve_exports_the_fleet_gauges_of_the_settings_it_is_given(redis_url: str, redis_prefix: str) -> None:
    async def set_scope() -> None:
        backend = redis_backend(redis_url, prefix=redis_prefix)
        try:
            await backend.budgets.set_scope("ops", {"usd": 12.5})
        finally:
            await backend.close()

    asyncio.run(set_scope())
    settings = Settings().updated(redis={"url": redis_url, "prefix": redis_prefix})
    port = castor.metrics.serve(0, fleet=settings)
    got = scrape(port)
    assert got["castor_fleet_up[]"] == 1
    assert got["castor_approvals_pending[]"] == 0
    assert got["castor_budget_limit[('resource', 'usd'), ('scope', 'ops')]"] == 12.5
    assert got["castor_budget_used[('resource', 'usd'), ('scope', 'ops')]"] == 0


def test_a_port_in_use_or_out_of_range_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            castor.metrics.serve(port)
    with pytest.raises(ConfigError, match="between 0 and 65535"):
        castor.metrics.serve(70000)
