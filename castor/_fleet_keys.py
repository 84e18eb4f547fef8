"""Redis key names of the fleet machinery: run queue, leases, parked runs, coordinator registry.

Temporary home: these join the "fleet keys" section of ``castor/backends/redis/keys.py`` once the Redis
backend lands, so that every key name is built in one module. ``lease`` keeps the spelling that module
uses, because the Redis scripts check the fencing token stored there.
"""

from __future__ import annotations


def lease(prefix: str, run_id: str) -> str:
    """String: the fencing token of the coordinator that drives the run, expiring with the lease."""
    return f"{prefix}:{{{run_id}}}:lease"


def decision_stream(prefix: str) -> str:
    """Stream announcing every decision (``run``, ``step``, ``decision``): parked runs wake on it."""
    return f"{prefix}:decisions"


def run_queue(prefix: str) -> str:
    """List of pids ready to be driven: submitted, decided, drained or taken over. Taken from the right."""
    return f"{prefix}:fleet:queue"


def taking(prefix: str, coordinator: str) -> str:
    """List: pids a coordinator moved off the queue and has not leased yet (reliable take)."""
    return f"{prefix}:fleet:taking:{coordinator}"


def leased(prefix: str) -> str:
    """Sorted set: pids under a lease, scored by when the lease runs out (ms); the takeover sweep reads it."""
    return f"{prefix}:fleet:leased"


def parked(prefix: str) -> str:
    """Hash: pid -> the step it waits on, for runs that wait for a human and hold no coordinator."""
    return f"{prefix}:fleet:parked"


def refused(prefix: str) -> str:
    """Hash: pid -> why a coordinator refused to resume it (its code changed)."""
    return f"{prefix}:fleet:refused"


def cancelled(prefix: str) -> str:
    """Set: pids an operator cancelled; whoever holds or takes one stops it."""
    return f"{prefix}:fleet:cancelled"


def control_stream(prefix: str) -> str:
    """Stream of operator commands to coordinators (``cancel`` a run)."""
    return f"{prefix}:fleet:control"


def coordinators(prefix: str) -> str:
    """Sorted set: live coordinator names, scored by when their registration runs out (ms)."""
    return f"{prefix}:fleet:coordinators"


def coordinator(prefix: str, name: str) -> str:
    """Hash: one coordinator's host, pid, concurrency, load and state, expiring with its registration."""
    return f"{prefix}:fleet:coordinator:{name}"


def fleet_keys(prefix: str) -> list[str]:
    """The fleet-wide keys (not per coordinator, not per run)."""
    return [
        run_queue(prefix), leased(prefix), parked(prefix), refused(prefix), cancelled(prefix),
        control_stream(prefix), coordinators(prefix),
    ]
