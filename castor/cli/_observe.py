"""``--metrics-port``, ``--metrics-host`` and ``--trace``: what a long-running process exports.

Shared by ``castor coordinator`` and ``castor worker``; ``castor console`` and ``castor mcp`` take the
metrics options only (``metrics_options``) and call ``castor.metrics.serve`` themselves. Nothing here
imports prometheus-client or OpenTelemetry unless asked.
"""

from __future__ import annotations

import argparse
from typing import Any

from castor._limits import option_type
from castor.errors import ConfigError


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the observability options to ``parser`` of ``command``."""
    metrics_options(parser, command)
    parser.add_argument("--trace", action="store_true",
                        help="OpenTelemetry spans per syscall / tool task (needs castor[otel]; exporter from "
                             "CASTOR_OTEL_FILE or the OTLP environment)")


def metrics_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Add ``--metrics-port`` (its range: ``castor._limits.OPTIONS["<command> --metrics-port"]``) and
    ``--metrics-host`` to ``parser`` of ``command``."""
    parser.add_argument("--metrics-port", type=option_type(f"{command} --metrics-port"), default=None, metavar="PORT",
                        help="serve Prometheus metrics on this port (needs castor[metrics]; 0: a free port)")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDRESS",
                        help="address the metrics endpoint listens on (default 127.0.0.1)")


def coordinator_setup(args: argparse.Namespace, settings: Any) -> Any:
    """The ``setup`` hook ``castor.fleet.scheduler.main.serve`` calls with the coordinator, or None."""
    if args.metrics_port is None and not args.trace:
        return None

    def setup(coordinator: Any) -> None:
        if args.metrics_port is not None:
            import castor.metrics
            from castor.metrics.fleet import instrument_coordinator

            instrument_coordinator(coordinator, settings)
            castor.metrics.serve(args.metrics_port, args.metrics_host)
        if args.trace:
            from castor.tracing import enable
            from castor.tracing.kernel import instrument_coordinator as traced

            enable("castor-coordinator", settings.security.secret if settings is not None else None)
            traced(coordinator)

    return setup


def worker_setup(args: argparse.Namespace) -> Any:
    """What ``castor.fleet.workers.main.run_worker`` calls with the worker's settings and runtime, or None."""
    if args.metrics_port is None and not args.trace:
        return None

    def setup(settings: Any, runtime: Any, pool_impl: str) -> None:
        if args.metrics_port is not None:
            if pool_impl == "prefork":
                raise ConfigError("--metrics-port needs --pool-impl threads or solo: a prefork worker's tasks "
                                  "run in child processes the metrics endpoint cannot see")
            import castor.metrics
            from castor.metrics.fleet import instrument_worker

            instrument_worker(runtime)
            castor.metrics.serve(args.metrics_port, args.metrics_host)
        if args.trace:
            from castor.tracing import enable
            from castor.tracing.worker import instrument_worker as traced

            enable(f"castor-worker-{runtime.pool}", settings.security.secret)
            traced(runtime)

    return setup
