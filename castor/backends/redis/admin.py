"""What the operator's CLI calls: shared budget scopes, pending approvals, sweeps.

Each function takes a ``Backend`` (``open_backend(url)``) and returns plain JSON-ready data, so
``castor budget show SCOPE --json`` and ``castor approvals --json`` print it as is. Scopes and pending
approvals work on any backend through the seams; the sweeps are what a shared store needs (Redis):
on a backend without them they do nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from castor.seams import Backend


async def set_scope(backend: Backend, scope: str, limits: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Create ``scope`` or set its limits (usage kept); returns the scope as ``show_scope`` does."""
    await backend.budgets.set_scope(scope, limits)
    return await show_scope(backend, scope)


async def top_up(backend: Backend, scope: str, amounts: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Raise ``scope``'s limits by ``amounts``; returns the scope."""
    await backend.budgets.top_up(scope, amounts)
    return await show_scope(backend, scope)


async def reset_scope(backend: Backend, scope: str) -> dict[str, dict[str, float]]:
    """Set ``scope``'s usage back to zero; returns the scope."""
    await backend.budgets.reset_scope(scope)
    return await show_scope(backend, scope)


async def show_scope(backend: Backend, scope: str) -> dict[str, dict[str, float]]:
    """``{resource: {"limit", "used", "remaining"}}`` of ``scope`` (``{}`` if it does not exist)."""
    ledger = await backend.budgets.read_scope(scope)
    return {
        resource: {"limit": limit, "used": used, "remaining": max(limit - used, 0.0)}
        for resource, (limit, used) in sorted(ledger.items())
    }


async def list_scopes(backend: Backend) -> list[str]:
    """Every scope the store knows by name (empty where the store cannot list them)."""
    names = getattr(backend.budgets, "scopes", None)
    return list(await names()) if names is not None else []


async def delete_scope(backend: Backend, scope: str) -> None:
    """Forget ``scope`` where the store can (Redis); elsewhere reset its usage."""
    drop = getattr(backend.budgets, "delete_scope", None)
    if drop is not None:
        await drop(scope)
    else:
        await backend.budgets.reset_scope(scope)


async def pending_approvals(backend: Backend, run_id: str | None = None) -> list[dict[str, Any]]:
    """Calls waiting for a decision across the fleet (or of one run), oldest first, as JSON-ready dicts."""
    now = time.time()
    return [
        {**asdict(p), "waiting_seconds": round(max(now - p.created_at, 0.0), 3)}
        for p in await backend.approvals.pending(run_id)
    ]


async def sweep_reservations(backend: Backend, now: float | None = None) -> int:
    """Refund charges whose holder's claim ended before the step was journaled; how many were refunded."""
    sweep = getattr(backend.budgets, "sweep", None)
    return int(await sweep(now)) if sweep is not None else 0


async def sweep_approvals(backend: Backend, now: float | None = None) -> int:
    """Give every expired pending call its configured outcome; how many expired."""
    sweep = getattr(backend.approvals, "sweep", None)
    return int(await sweep(now)) if sweep is not None else 0


async def sweep(backend: Backend, now: float | None = None) -> dict[str, int]:
    """Both sweeps: ``{"reservations_refunded": n, "approvals_expired": m}``."""
    return {
        "reservations_refunded": await sweep_reservations(backend, now),
        "approvals_expired": await sweep_approvals(backend, now),
    }
