"""The instruments of one Castor process, on a registry of its own.

Counters on a hot path are plain ``collections.Counter`` entries, exported by a collector at scrape time:
an increment is a dict update, with no lock and no label lookup (a coordinator's syscalls run on one event
loop; a worker's threads update them under the GIL, where a lost increment is the worst case). The
coordinator's syscall latency is a ``Timings`` (lock-free, one thread); the worker's and the decision
times are prometheus-client histograms. A scrape runs on the HTTP server's thread: it copies each mapping
in one C call before reading it, so an insert on the loop meanwhile cannot break its iteration.

Every label value comes from a closed set: a tool's name only if the process's registry has it (else
``unknown``), a pool from the config, an outcome from ``OUTCOMES``. No pid, run, step or argument is ever
a label (``docs/metrics.md``).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

UNKNOWN = "unknown"  # a tool name no registry of this process has: never a label value of its own
# What became of a syscall (coordinator) or a tool task (worker).
OUTCOMES = frozenset({
    "ok", "error", "validation_error", "budget_denied", "rejected", "modified", "suspended", "in_doubt",
    "refused", "timeout", "dropped", "retry",
})
DECISIONS = frozenset({"approve", "reject", "modify"})
# The lease events a coordinator counts: (event, metric, help).
LEASE_EVENTS = (
    ("acquired", "castor_leases", "Run leases this coordinator took."),
    ("takeover", "castor_takeovers", "Leases taken on runs whose previous lease ran out unreleased (takeovers)."),
    ("quarantine", "castor_quarantines", "Runs quarantined after too many takeovers in a row."),
)
# Seconds: a replayed or refused call takes microseconds, a tool on a worker seconds or minutes.
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# A human decides in seconds to hours.
DECISION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600)


class Instruments:
    """What a process counts and times; ``castor.metrics.instruments()`` is the process's one."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.syscalls: Counter[tuple[str, str, str]] = Counter()  # (tool, pool, outcome), coordinator
        self.tasks: Counter[tuple[str, str, str]] = Counter()  # (tool, pool, outcome), worker
        self.replayed: Counter[str] = Counter()  # tool
        self.in_doubt: Counter[tuple[str, str]] = Counter()  # (tool, pool)
        self.leases: Counter[str] = Counter()  # "acquired", "takeover", "quarantine"
        # On a coordinator's event loop only: a lock-free histogram (prometheus-client's locks per sample).
        self.syscall_seconds = Timings(
            "castor_syscall_seconds", "Time of a live syscall through the kernel's chain, by tool and pool.",
            ("tool", "pool"), LATENCY_BUCKETS,
        )
        self.tool_seconds = Histogram(
            "castor_tool_seconds", "Time a worker spent on a tool task (claim, tool, journal, reply).",
            ["tool", "pool"], registry=self.registry, buckets=LATENCY_BUCKETS,
        )
        self.decision_seconds = Histogram(
            "castor_approval_decision_seconds", "From a call's approval request to the human's decision.",
            ["tool", "decision"], registry=self.registry, buckets=DECISION_BUCKETS,
        )
        # The console's own decisions (a few a minute at most: prometheus-client's locked instruments do).
        self.console_decisions = PromCounter(
            "castor_console_decisions", "Decisions recorded through this console, by decision.",
            ["decision"], registry=self.registry,
        )
        self.console_decision_seconds = Histogram(
            "castor_console_decision_seconds",
            "From a call's approval request to its decision through this console, by decision.",
            ["decision"], registry=self.registry, buckets=DECISION_BUCKETS,
        )
        self.registry.register(_Counters(self))


class _Counters(Collector):
    """Exports the plain counters of ``Instruments`` as Prometheus counters."""

    def __init__(self, instruments: Instruments) -> None:
        self.instruments = instruments

    def collect(self) -> Iterator[Any]:
        ins = self.instruments
        yield _family("castor_syscalls", "Syscalls a coordinator's kernel answered live, by tool, pool and outcome.",
                      ("tool", "pool", "outcome"), ins.syscalls)
        yield _family("castor_tasks", "Tool tasks a worker handled, by tool, pool and outcome.",
                      ("tool", "pool", "outcome"), ins.tasks)
        yield _family("castor_replayed_steps", "Steps served from the journal on resume, by tool.",
                      ("tool",), {(k,): v for k, v in dict(ins.replayed).items()})
        yield _family("castor_in_doubt_steps", "Steps left in doubt by a lost worker, by tool and pool.",
                      ("tool", "pool"), ins.in_doubt)
        yield ins.syscall_seconds.family()
        for event, name, text in LEASE_EVENTS:
            family = CounterMetricFamily(name, text)
            family.add_metric([], ins.leases[event])
            yield family

    def describe(self) -> Iterator[Any]:
        return iter(())  # collected at scrape time only: the registry must not call collect() to describe


def _family(name: str, text: str, labels: tuple[str, ...], counts: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=labels)
    for key, value in sorted(dict(counts).items()):
        family.add_metric(list(key), value)
    return family


class Timings:
    """A latency histogram by label values, observed from one thread (a coordinator's event loop): a
    sample is a C bisect and two list updates, with no lock. ``labels(...)`` gives a series to ``observe``."""

    def __init__(self, name: str, text: str, labels: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.name, self.text, self.label_names, self.bounds = name, text, labels, tuple(bounds)
        self.series: dict[tuple[str, ...], _Series] = {}

    def labels(self, *values: str) -> _Series:
        """The series of ``values`` (made on first use)."""
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = _Series(self.bounds)
        return series

    def family(self) -> HistogramMetricFamily:
        """The histogram as Prometheus shows it: cumulative buckets, ``+Inf``, sum."""
        family = HistogramMetricFamily(self.name, self.text, labels=self.label_names)
        edges = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        for values, series in sorted(dict(self.series).items()):
            counts, total = list(series.counts), 0
            buckets = []
            for edge, n in zip(edges, counts, strict=True):
                total += n
                buckets.append((edge, total))
            family.add_metric(list(values), buckets, series.total)
        return family


class _Series:
    """One labelled series of ``Timings``: a count per bucket (the last one ``+Inf``) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one sample: the first bucket whose bound is at least ``seconds`` (``le``)."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
