"""The monitoring profile, checked without a Docker engine: Prometheus scrapes every coordinator, worker and
the console where it serves its metrics, Grafana's dashboard reads only metrics Castor exports and shows all of them,
and docs/metrics.md documents exactly what is exported."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry

from castor.metrics._fleet import FleetCollector
from castor.metrics._instruments import Instruments
from castor.settings import load_settings
from tests.fleet.test_compose import CASTOR_SERVICES, COMPOSE, ROOT, SERVICES, parse

PROMETHEUS = yaml.safe_load((ROOT / "docker/prometheus.yml").read_text())
DASHBOARD = json.loads((ROOT / "docker/grafana/dashboards/castor.json").read_text())
METRIC = re.compile(r"\bcastor_[a-z_]+\b")


def exported() -> set[str]:
    """Every metric name a coordinator (instruments and fleet gauges) exports, as Prometheus shows it."""
    import fakeredis

    ins = Instruments()
    fleet = FleetCollector("redis://unused", "castortest-monitoring", {"web": "q.web"})
    fleet.redis = fakeredis.FakeRedis(decode_responses=True)
    fleet.redis.hset("castortest-monitoring:scope:{team}", mapping={"L:api": 10, "U:api": 1})
    fleet.redis.sadd("castortest-monitoring:scopes", "team")
    ins.registry.register(fleet)
    ins.syscall_seconds.labels("t", "p").observe(1)
    names = set()
    for family in ins.registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def documented() -> set[str]:
    text = (ROOT / "docs/metrics.md").read_text()
    return set(re.findall(r"^\| `(castor_[a-z_]+)` \|", text, re.M))


def test_the_docs_table_lists_exactly_what_is_exported() -> None:
    assert documented() == exported()
    assert "docs/metrics.md" in (ROOT / "README.md").read_text()


def metrics_endpoint(service: str) -> tuple[str, int] | None:
    args = parse(SERVICES[service]["command"])
    return None if args.metrics_port is None else (args.metrics_host, args.metrics_port)


def test_prometheus_scrapes_every_coordinator_worker_and_console_where_it_listens() -> None:
    targets: dict[str, set[str]] = {}
    for job in PROMETHEUS["scrape_configs"]:
        for config in job["static_configs"]:
            targets.setdefault(job["job_name"], set()).update(config["targets"])
    expected: dict[str, set[str]] = {}
    for service in CASTOR_SERVICES:
        command = parse(SERVICES[service]["command"]).command
        if command not in ("coordinator", "worker", "console"):
            continue
        endpoint = metrics_endpoint(service)
        assert endpoint is not None, f"{service} serves no metrics"
        host, port = endpoint
        assert host == "0.0.0.0"  # reachable from the Prometheus container; no host port is published
        assert not any(str(p).endswith(f":{port}") for p in SERVICES[service].get("ports", []))
        expected.setdefault(f"castor-{command}", set()).add(f"{service}:{port}")
    assert targets == expected


def test_the_monitoring_profile_starts_prometheus_and_grafana_on_loopback_only() -> None:
    for name in ("prometheus", "grafana"):
        svc = SERVICES[name]
        assert svc["profiles"] == ["monitoring"]  # a plain `docker compose up` starts neither
        assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"])
        assert "healthcheck" in svc
        for volume in svc["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in COMPOSE["volumes"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./docker/prometheus.yml"


def panels() -> list[dict[str, Any]]:
    return list(DASHBOARD["panels"])


def test_the_dashboard_reads_castor_metrics_from_the_provisioned_prometheus() -> None:
    sources = yaml.safe_load((ROOT / "docker/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((ROOT / "docker/grafana/provisioning/dashboards/castor.yml").read_text())
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    assert grafana_mounts[provider["providers"][0]["options"]["path"]] == "./docker/grafana/dashboards"
    names = exported()
    used = set()
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found = set(METRIC.findall(target["expr"]))
            assert found, f"{panel['title']}: {target['expr']}"
            for name in found:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert name in names or base in names, f"{panel['title']} reads {name}, which Castor does not export"
                used.add(base)
            assert target["expr"].count("(") == target["expr"].count(")")
    assert used == names, f"not on the dashboard: {sorted(names - used)}"


def test_the_compose_config_serves_metrics_the_settings_can_describe() -> None:
    settings = load_settings(ROOT / "config/castor.toml", env={})
    collector = FleetCollector.for_settings(settings)
    assert set(collector.queues) == set(settings.pool_names)
    collector.redis.close()
    assert isinstance(Instruments().registry, CollectorRegistry)
