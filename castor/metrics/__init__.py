"""Prometheus metrics of coordinators, workers, the console and the MCP gateway (``castor[metrics]``).

    castor.metrics.serve(port)                     # /metrics of this process's instruments
    castor.metrics.serve(port, fleet=settings)     # and the fleet's gauges, read from its Redis per scrape

``castor coordinator --metrics-port N`` and ``castor worker --metrics-port N`` call it (and instrument
their kernel or their tasks: ``castor.metrics.fleet``); a process that does not ask for metrics imports
none of this, and its kernel has no metrics stage. Names, labels and units: ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
from typing import Any

from castor.errors import ConfigError

log = logging.getLogger("castor.metrics")

_current: Any = None
_fleets: set[tuple[str, str]] = set()


def instruments() -> Any:
    """This process's ``Instruments`` (``castor.metrics._instruments``), made on first use."""
    global _current
    if _current is None:
        try:
            from ._instruments import Instruments
        except ImportError as exc:
            raise ConfigError(
                "metrics need prometheus-client: pip install 'castor-kernel[metrics]'"
            ) from exc
        _current = Instruments()
    return _current


def add_fleet(settings: Any = None, *, url: str = "", prefix: str = "") -> None:
    """Export the gauges (``castor.metrics._fleet``) of the fleet ``settings`` describe from this process,
    once per fleet; ``url`` and ``prefix`` override its Redis (a coordinator's ``--redis``)."""
    from ._fleet import FleetCollector

    collector = FleetCollector.for_settings(settings, url=url, prefix=prefix)
    if (collector.url, collector.prefix) in _fleets:
        collector.redis.close()
        return
    _fleets.add((collector.url, collector.prefix))
    instruments().registry.register(collector)


def serve(port: int, host: str = "127.0.0.1", *, fleet: Any = None) -> int:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (port 0: a free one); with ``fleet`` (the
    fleet's ``Settings``), its gauges too. Returns the port."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--metrics-port must be between 0 and 65535, not {port}")
    registry = instruments().registry
    if fleet is not None:
        add_fleet(fleet)
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
