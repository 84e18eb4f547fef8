"""The fleet's state as gauges, read from Redis when Prometheus scrapes (nothing runs in between).

One pipelined round trip per scrape: calls waiting for a human, runs queued, leased and parked, each
pool's broker queue (a Redis broker's list; RabbitMQ's queues are its own exporter's), and every shared
budget scope's usage and limit per resource. Every process that serves these reads the same Redis, so
the values are fleet-wide: aggregate them with ``max``, never ``sum`` (``docs/metrics.md``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from castor.backends.redis import keys

MAX_SCOPES = 200  # scopes are operator-made names: past this many, the rest are not exported
REDIS_TIMEOUT = 2.0  # seconds: a scrape must not hang on a Redis that does not answer


class FleetCollector(Collector):
    """Gauges of the fleet under ``prefix`` in the Redis at ``url``; ``queues`` maps pool -> broker list key."""

    def __init__(self, url: str, prefix: str, queues: dict[str, str] | None = None) -> None:
        from castor.backends.redis import redis_client

        self.url = url
        self.prefix = prefix
        self.queues = dict(queues or {})
        self.redis = redis_client(
            url, sync=True, decode_responses=True, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )

    @classmethod
    def for_settings(cls, settings: Any = None, *, url: str = "", prefix: str = "") -> FleetCollector:
        """The collector of the fleet ``settings`` describe (its Redis, its pools' queues), ``url`` and
        ``prefix`` overriding its Redis; without settings, no queue depths (no pools known)."""
        queues = {}
        if settings is not None and settings.broker_transport == "redis":
            # kombu's list key: the global key prefix (celery_config's) + the queue name
            queues = {pool: f"{settings.broker.queue_prefix}:{settings.queue_of(pool)}" for pool in settings.pool_names}
        if settings is not None:
            url, prefix = url or settings.redis.url, prefix or settings.redis.prefix
        return cls(url, prefix or "castor", queues)

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("castor_fleet_up", "1 if the fleet's Redis answered this scrape, else 0.")
        try:
            families = self._read()
        except Exception:  # a scrape of a process whose Redis is away still answers, saying so
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def describe(self) -> Iterator[Any]:
        return iter(())  # read at scrape time only

    def _read(self) -> list[GaugeMetricFamily]:
        p = self.prefix
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.approvals_pending(p))
        pipe.llen(keys.run_queue(p))
        pipe.zcard(keys.leased(p))
        pipe.hlen(keys.parked(p))
        pipe.zcard(keys.coordinators(p))
        pools = sorted(self.queues)
        for pool in pools:
            pipe.llen(self.queues[pool])
        pipe.smembers(keys.scope_names(p))
        pending, queued, leased, parked, coordinators, *rest = pipe.execute()
        depths, scopes = rest[:-1], sorted(rest[-1])[:MAX_SCOPES]
        families = [
            _gauge("castor_approvals_pending", "Calls waiting for a human decision, fleet-wide.", pending),
            _gauge("castor_runs_queued", "Runs waiting for a coordinator to take them.", queued),
            _gauge("castor_leases_held", "Runs under a coordinator's lease (being driven), fleet-wide.", leased),
            _gauge("castor_runs_parked", "Runs parked while they wait for a human.", parked),
            _gauge("castor_coordinators", "Coordinators registered and live.", coordinators),
        ]
        depth = GaugeMetricFamily("castor_queue_depth", "Tool tasks waiting in a pool's broker queue.", labels=["pool"])
        for pool, n in zip(pools, depths, strict=True):
            depth.add_metric([pool], n)
        families.append(depth)
        families.extend(self._scopes(scopes))
        return families

    def _scopes(self, names: list[str]) -> list[GaugeMetricFamily]:
        used = GaugeMetricFamily("castor_budget_used", "What a shared budget scope has spent, per resource.",
                                 labels=["scope", "resource"])
        limit = GaugeMetricFamily("castor_budget_limit", "A shared budget scope's limit, per resource.",
                                  labels=["scope", "resource"])
        if names:
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(keys.scope(self.prefix, name))
            for name, fields in zip(names, pipe.execute(), strict=True):
                for field, value in sorted(fields.items()):
                    kind, _, resource = field.partition(":")
                    if kind == "L":
                        limit.add_metric([name, resource], float(value))
                    elif kind == "U":
                        used.add_metric([name, resource], float(value))
        return [used, limit]


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text)
    family.add_metric([], value)
    return family
