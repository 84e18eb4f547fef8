"""``RedisBudgetStore``: per-run ledgers and shared scopes, charged atomically by one Lua script.

A ledger is a hash of ``L:<resource>`` (limit) and ``U:<resource>`` (used). A charge checks the run's
ledger and every scope the run draws from and takes the cost from all of them or none, in one round
trip. It leaves a record per (run, step): charging the step again is a no-op, a refund gives back
exactly what was taken, once. Each record is also a *reservation*: it names its holder (host:pid) and
when the holder's claim ends. Journaling a step spends its charge (the journal write drops the record);
a step whose holder died before journaling it is refunded by ``sweep()`` once the claim ended, so a
crash never leaks budget. The claim (``reservation_seconds``) must outlast the longest tool call.

The reservation index holds runs, not steps: a run with unsettled charges, scored no later than its
earliest claim end. A charge touches it only when the run is not there yet (or with an earlier claim),
which the run's ledger tells in the read the charge makes anyway; ``sweep()`` settles a due run's
records and scores it again. A record is NUL-joined text (holder, claim end, then ledger, resource,
amount, period of every part taken) that the scripts read without JSON: names holding NUL are refused.

A ledger has a period (``R``): resetting a scope or reopening a run's ledger starts a new one, and a refund
gives back only to the period its charge was taken from (a charge before a reset is spent by the reset).
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from castor.backends.redis import keys
from castor.backends.redis._client import Fence, RedisConnection
from castor.errors import ConfigError
from castor.seams import Charge

_OK = Charge(True)
_SCOPE_LISTS = 256  # scope lists whose keys are kept made; past that the table starts again


def default_holder() -> str:
    """Who holds the reservations this process makes: ``<host>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _number(value: float) -> str:
    return repr(float(value))


def _short(reply: list[Any], scopes: Sequence[str]) -> Charge:
    """The refusal of the charge script: ``resource`` of the run, ``scope:resource`` of a scope."""
    _, ledger, resource, left = reply
    name = resource if ledger == 1 else f"{scopes[ledger - 2]}:{resource}"
    return Charge(False, name, float(left))


class RedisBudgetStore:
    """Budgets every process shares; see the module docstring for the layout."""

    # A charge of nothing still checks a fenced run's lease (``charge``): the kernel always makes it.
    empty_charges_checked = True

    def __init__(
        self,
        conn: RedisConnection,
        prefix: str,
        *,
        reservation_seconds: float = 3600.0,
        holder: str | None = None,
        fences: dict[str, Fence] | None = None,
    ) -> None:
        self._conn = conn
        self._prefix = prefix
        self.reservation_seconds = reservation_seconds
        self.holder = holder or default_holder()
        self.fences: dict[str, Fence] = {} if fences is None else fences
        if "{" in prefix or "}" in prefix or "\0" in self.holder:
            raise ConfigError(f"key prefix {prefix!r} holds a brace or holder {self.holder!r} a NUL character")
        self._scope_keys: dict[tuple[str, ...], list[str]] = {}  # scopes -> [reservations, *scope ledgers]
        self._names: set[str] = set()  # resource names checked for NUL already

    # --- runs -------------------------------------------------------------------------------------

    async def open_run(self, run_id: str, limits: Mapping[str, float], used: Mapping[str, float]) -> None:
        """Set the run's limits and what it used so far (replacing any ledger it had)."""
        args: list[str] = []
        for resource, limit in limits.items():
            args.extend((f"L:{resource}", _number(limit), f"U:{resource}", _number(used.get(resource, 0.0))))
        await self._conn.script("budget_open", [keys.ledger(self._prefix, run_id)], args)

    def _keys(self, run_id: str, scopes: Sequence[str]) -> list[str]:
        """The charge script's keys: the run's ledger, the reservation index, then each scope's ledger.

        The part after the run's ledger is made once per list of scopes (a process sees a handful); the
        run's key is made on each call. Nothing is kept per run: a coordinator charges every run it drives,
        and a table keyed by run would keep memory for each run it ever drove, parked or finished since.
        """
        if "\0" in run_id:
            raise ConfigError(f"run {run_id!r} holds a NUL character")
        named = tuple(scopes)
        tail = self._scope_keys.get(named)
        if tail is None:
            if any("\0" in name for name in named):
                raise ConfigError(f"scopes {list(named)!r} hold a NUL character")
            if len(set(named)) != len(named):  # the kernel draws from a scope named twice once
                raise ConfigError(f"scopes {list(named)!r} name a scope twice")
            if len(self._scope_keys) >= _SCOPE_LISTS:
                self._scope_keys.clear()
            p = self._prefix
            tail = [keys.reservations(p), *(keys.scope(p, name) for name in named)]
            self._scope_keys[named] = tail
        return [keys.ledger(self._prefix, run_id), *tail]

    def _call(self, token: str, step: int | str, cost: Mapping[str, float]) -> list[str]:
        """The charge script's arguments: fence token, step, holder, claim end, then resource, amount pairs."""
        args = [token, str(step), self.holder, repr(time.time() + self.reservation_seconds)]
        for resource, amount in cost.items():
            if resource not in self._names:
                if "\0" in resource:  # the charge record is NUL-joined
                    raise ConfigError(f"resource name {resource!r} holds a NUL character")
                self._names.add(resource)
            args.append(resource)
            args.append(repr(float(amount)))
        return args

    async def charge(
        self, run_id: str, step: int, cost: Mapping[str, float], scopes: Sequence[str] = (), *,
        fence: Fence | None = None,
    ) -> Charge:
        """Draw ``cost`` from the run and every scope, all or nothing, in one round trip; once per step.

        A charge precedes every dispatch, so for a fenced run (a ``fence`` given, or the run's in
        ``fences``) the script runs even when the call costs nothing: it checks the fence, and a
        coordinator that lost the run gets ``StaleLeaseError`` instead of dispatching a free tool.
        """
        fence = fence or self.fences.get(run_id)
        if not cost and fence is None:
            return _OK  # nothing to take and no fence to check: no round trip
        key_list = self._keys(run_id, scopes)
        if fence is not None:
            key_list = [*key_list, fence.key]
        reply = await self._conn.script("budget_charge", key_list, self._call(fence.token if fence else "", step, cost))
        return _OK if reply == 1 else _short(reply, scopes)

    async def can_afford(self, run_id: str, cost: Mapping[str, float], scopes: Sequence[str] = ()) -> Charge:
        """Whether ``charge`` would succeed now, without charging."""
        if not cost:
            return _OK
        reply = await self._conn.script("budget_charge", self._keys(run_id, scopes), self._call("", "", cost))
        return _OK if reply == 1 else _short(reply, scopes)

    async def refund(self, run_id: str, step: int) -> None:
        """Give back what ``step`` was charged; a second refund finds nothing to give."""
        record = await self._conn.call("hget", keys.charges(self._prefix, run_id), str(step))
        if record is not None:
            await self._give_back(run_id, str(step), record, sweeping=False)

    async def settle(
        self, run_id: str, step: int, actual: Mapping[str, float], scopes: Sequence[str] = ()
    ) -> None:
        """Replace what ``step`` was charged by ``actual`` (a model call's usage), atomically in every ledger.

        ``scopes`` is not needed: the charge record names the ledgers it drew from.
        """
        charges = keys.charges(self._prefix, run_id)
        args = [arg for resource, amount in actual.items() for arg in (resource, repr(float(amount)))]
        for _ in range(3):  # the record changes only by a concurrent settle or refund of the same step
            record = await self._conn.call("hget", charges, str(step))
            if record is None:
                return
            ledgers = list(dict.fromkeys(record.split("\0")[2::4]))
            if await self._conn.script("budget_settle", [charges, *ledgers], [str(step), record, *args]):
                return

    async def _give_back(self, run_id: str, step: str, record: str, *, sweeping: bool) -> bool:
        p = self._prefix
        ledgers = list(dict.fromkeys(record.split("\0")[2::4]))
        reply = await self._conn.script(
            "budget_refund",
            [keys.charges(p, run_id), keys.journal(p, run_id), *ledgers],
            [step, record, "sweep" if sweeping else ""],
        )
        return bool(reply)

    async def remaining(self, run_id: str, resource: str, scopes: Sequence[str] = ()) -> float:
        """The least any of the run's ledgers leaves for ``resource`` (``inf`` if none limits it)."""
        p = self._prefix
        ledgers = [keys.ledger(p, run_id), *(keys.scope(p, name) for name in scopes)]

        async def read(c: Any) -> list[Any]:
            async with c.pipeline(transaction=False) as pipe:
                for key in ledgers:
                    pipe.hmget(key, f"L:{resource}", f"U:{resource}")
                return await pipe.execute()

        left = math.inf
        for limit, used in await self._conn.run(read):
            if limit is not None:
                left = min(left, max(float(limit) - float(used or 0.0), 0.0))
        return left

    async def close_run(self, run_id: str) -> None:
        """Drop the run's ledger and charge records (its usage lives on in its journal)."""
        p = self._prefix
        await self._conn.script(
            "budget_close", [keys.ledger(p, run_id), keys.charges(p, run_id), keys.reservations(p)], [run_id]
        )

    async def sweep(self, now: float | None = None, limit: int = 500, rounds: int = 100) -> int:
        """Settle reservations whose claim ended: refund the steps never journaled. Returns how many.

        Looks at ``limit`` due runs per round trip, ``rounds`` times at most (call again for more).
        """
        now = time.time() if now is None else now
        p = self._prefix
        index = keys.reservations(p)
        refunded = 0
        for _ in range(rounds):
            due = await self._conn.run(lambda c: c.zrangebyscore(index, "-inf", now, start=0, num=limit))
            for run_id in due:
                charges = keys.charges(p, run_id)
                for step, record in (await self._conn.call("hgetall", charges)).items():
                    if float(record.split("\0", 2)[1]) <= now:
                        refunded += await self._give_back(run_id, step, record, sweeping=True)
                # the run's remaining charges are all claimed past now: it comes due again with the earliest
                await self._conn.script("budget_reindex", [charges, index, keys.ledger(p, run_id)], [run_id])
            if len(due) < limit:
                break
        return refunded

    # --- scopes -----------------------------------------------------------------------------------

    async def set_scope(self, scope: str, limits: Mapping[str, float]) -> None:
        """Create a shared scope or change its limits (usage kept)."""
        await self._scope_write(scope, limits, raise_by=False)

    async def top_up(self, scope: str, amounts: Mapping[str, float]) -> None:
        """Raise a scope's limits by ``amounts`` (a missing resource starts from zero)."""
        await self._scope_write(scope, amounts, raise_by=True)

    async def _scope_write(self, scope: str, values: Mapping[str, float], *, raise_by: bool) -> None:
        key = keys.scope(self._prefix, scope)
        names = keys.scope_names(self._prefix)

        async def write(c: Any) -> None:
            async with c.pipeline(transaction=True) as pipe:
                for resource, value in values.items():
                    if raise_by:
                        pipe.hincrbyfloat(key, f"L:{resource}", float(value))
                    else:
                        pipe.hset(key, f"L:{resource}", _number(value))
                    pipe.hsetnx(key, f"U:{resource}", "0")
                # A new scope's first period is its own, not that of a scope of the same name deleted before:
                # a refund of a charge taken there must not give back into this one (budget_refund.lua).
                pipe.hsetnx(key, "R", str(time.time_ns() // 1000))
                pipe.sadd(names, scope)
                await pipe.execute()

        # A top-up repeated after a lost reply would add twice: only setting limits is retried.
        await self._conn.run(write, retry=not raise_by)

    async def reset_scope(self, scope: str) -> None:
        """Set a scope's usage back to zero."""
        await self._conn.script("scope_reset", [keys.scope(self._prefix, scope)], [])

    async def read_scope(self, scope: str) -> dict[str, tuple[float, float]]:
        """``{resource: (limit, used)}`` of a scope; ``{}`` if it does not exist."""
        key = keys.scope(self._prefix, scope)
        fields = await self._conn.command("hgetall", key)
        return {
            name[2:]: (float(value), float(fields.get(f"U:{name[2:]}", 0.0)))
            for name, value in fields.items()
            if name.startswith("L:")
        }

    async def scopes(self) -> list[str]:
        """Every scope that was set, sorted."""
        names = keys.scope_names(self._prefix)
        return sorted(await self._conn.command("smembers", names))

    async def delete_scope(self, scope: str) -> None:
        """Forget a scope (runs that name it draw from nothing there any more)."""
        key, names = keys.scope(self._prefix, scope), keys.scope_names(self._prefix)

        async def drop(c: Any) -> None:
            async with c.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.srem(names, scope)
                await pipe.execute()

        await self._conn.run(drop)

    async def close(self) -> None:
        """Close this event loop's connections."""
        await self._conn.close()
