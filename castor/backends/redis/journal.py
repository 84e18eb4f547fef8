"""``RedisJournal``: each run's step records in one sorted set, written once, read back in batches.

A run's journal is a sorted set scored by step, so replay reads a range of steps with one
``ZRANGEBYSCORE`` that Redis answers without running any script (a hash needs a Lua loop over
``HMGET`` for that, which costs Redis ten times as much per record). A stored record is its
``SyscallRecord`` JSON, fields at their defaults left out (half the bytes to parse); a record equal to
another step's is stored led by ``"_s": <step>``, which keeps the two distinct members of the set and
which pydantic ignores. Write-once is kept by the append script. A fork stores only a pointer to its
parent and the step it forked at; ``get`` and ``history`` follow the pointers, so forking a 10,000-step
run costs a few commands, not 10,000 copies. ``history`` fetches ``BATCH`` records per round trip, several in flight,
and parses each batch as one JSON array with one pydantic call, the cyclic GC paused for that call only.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError

from castor.backends.redis import keys
from castor.backends.redis._client import Fence, RedisConnection
from castor.backends.redis.claims import RedisClaims
from castor.checkpoint import StepFailure, SyscallRecord
from castor.errors import ConfigError, JournalConflictError

BATCH = 1000  # records per range read: one round trip reads them all, a reply stays a few hundred KB
WINDOW = 8  # batches in flight at once
MAX_DEPTH = 10_000  # forks of forks deeper than this are a cycle, not a lineage

_RECORDS = TypeAdapter(list[SyscallRecord])


def encode(record: SyscallRecord, run_id: str, step: int) -> str:
    """A record's JSON as the append script takes it."""
    try:
        return record.model_dump_json(exclude_defaults=True)
    except PydanticSerializationError as exc:
        raise ConfigError(
            f"run {run_id!r} step {step}: the result cannot be journaled as JSON ({exc}); "
            "a durable store keeps JSON results only"
        ) from exc


def parse(rows: list[bytes]) -> list[SyscallRecord]:
    """Records as stored, parsed as one JSON array by one pydantic call."""
    return _RECORDS.validate_json(b"[" + b",".join(rows) + b"]")


class _GCPaused:
    """Pauses the cyclic GC while a replay's batch is parsed (nested and concurrent ones count).

    A replay makes tens of thousands of containers that all live on. Collected as they are made, they
    would be scanned by one young-generation collection after another and by the older generations'
    collections that their number sets off: in a process holding many objects, a replay took up to four
    times as long. Paused, they are scanned once, by the first collection after the parse. The pause
    covers one synchronous pydantic call and nothing else (no ``await`` inside): the program's other
    coroutines never run with the GC off. Only if the GC was on is it turned back on.
    """

    depth = 0
    resume = False
    lock = threading.Lock()  # event loops in other threads replay too

    def __enter__(self) -> None:
        with _GCPaused.lock:
            if _GCPaused.depth == 0:
                _GCPaused.resume = gc.isenabled()
                gc.disable()
            _GCPaused.depth += 1

    def __exit__(self, *exc: object) -> None:
        with _GCPaused.lock:
            _GCPaused.depth -= 1
            if _GCPaused.depth == 0 and _GCPaused.resume:
                gc.enable()


class RedisJournal(RedisClaims):
    """The step cache of every run, shared by every process that reaches the Redis server.

    ``fences`` maps a run to the ``Fence`` its writes must pass (the coordinator that holds the run's
    lease puts it there); an ``append`` may also pass one explicitly.
    """

    def __init__(self, conn: RedisConnection, prefix: str, fences: dict[str, Fence] | None = None) -> None:
        self._conn = conn
        self._prefix = prefix
        self.fences: dict[str, Fence] = {} if fences is None else fences

    async def append(self, run_id: str, step: int, record: SyscallRecord, *, fence: Fence | None = None) -> None:
        """Write the record of ``step`` once; ``JournalConflictError`` if the step holds another record."""
        fence = fence or self.fences.get(run_id)
        p = self._prefix
        data = encode(record, run_id, step)
        written = await self._conn.script(
            "journal_append",
            [keys.journal(p, run_id), keys.journal_meta(p, run_id), fence.key if fence else keys.journal(p, run_id)],
            [step, data, fence.token if fence else ""],
        )
        if not written:
            raise JournalConflictError(
                f"run {run_id!r} step {step} is journaled already; records are write-once"
            )
        if self._conn.replicas:  # written counts once N replicas have it (written again, the same record is taken)
            await self._conn.replicated(keys.replicated(p), f"the record of run {run_id!r} step {step}")

    async def get(self, run_id: str, step: int) -> SyscallRecord | None:
        """The record of ``step``, looked up through the fork's parents."""
        p = self._prefix
        for _ in range(MAX_DEPTH):
            journal, meta = keys.journal(p, run_id), keys.journal_meta(p, run_id)

            async def read(c: Any, journal: str = journal, meta: str = meta) -> list[Any]:
                async with c.pipeline(transaction=False) as pipe:
                    pipe.zrangebyscore(journal, step, step)
                    pipe.hmget(meta, "parent", "at")
                    return await pipe.execute()

            rows, (parent, at) = await self._conn.run(read)
            if rows:
                return SyscallRecord.model_validate_json(rows[0])
            if parent is None or step >= int(at):
                return None
            run_id = parent
        return None

    async def segments(self, run_id: str) -> list[tuple[str, int, int]]:
        """``(run, first, end)`` ranges of own records that make up the run's history, in step order."""
        p = self._prefix
        out: list[tuple[str, int, int]] = []
        limit: int | None = None
        seen: set[str] = set()
        while run_id not in seen and len(seen) < MAX_DEPTH:
            seen.add(run_id)
            meta = keys.journal_meta(p, run_id)
            parent, at, length = await self._conn.command("hmget", meta, "parent", "at", "len")
            first = int(at or 0)
            end = int(length or first) if limit is None else min(int(length or first), limit)
            if end > first:
                out.append((run_id, first, end))
            if parent is None or first == 0:
                break
            limit, run_id = first, parent
        out.reverse()
        return out

    async def ancestors(self, run_id: str) -> list[str]:
        """The runs whose records a fork shares: its parent, the parent's parent, ..."""
        out: list[str] = []
        p = self._prefix
        while len(out) < MAX_DEPTH:
            meta = keys.journal_meta(p, run_id)
            parent = await self._conn.command("hget", meta, "parent")
            if parent is None or parent in out or parent == run_id:
                return out
            out.append(parent)
            run_id = parent
        return out

    async def history(self, run_id: str) -> list[SyscallRecord]:
        """Every record of the run in step order, in one round trip per ``BATCH`` steps at most."""
        segments = await self.segments(run_id)
        if not segments:
            return []
        p = self._prefix
        ranges = [
            (keys.journal(p, run), first, min(first + BATCH, end))
            for run, start, end in segments
            for first in range(start, end, BATCH)
        ]

        # Up to WINDOW batches are in flight at once and each is parsed as soon as it arrives, so parsing
        # one batch overlaps with Redis preparing and sending the next ones.
        window = asyncio.Semaphore(WINDOW)

        async def batch(key: str, first: int, end: int) -> list[SyscallRecord]:
            async with window:
                # as bytes: pydantic reads them as they are, nothing is decoded to str first
                rows = await self._conn.call("execute_command", "ZRANGEBYSCORE", key, first, end - 1, NEVER_DECODE=True)
            if len(rows) < end - first:
                rows = await self._contiguous(key, first, end)
            if not rows:
                return []
            with _GCPaused():
                return parse(rows)

        parsed = await asyncio.gather(*(batch(*r) for r in ranges))
        records: list[SyscallRecord] = []
        for (_key, first, end), part in zip(ranges, parsed, strict=True):
            records.extend(part)
            if len(part) < end - first:
                break  # a hole (a parent's record is gone): history is contiguous from step 0
        return records

    async def _contiguous(self, key: str, first: int, end: int) -> list[bytes]:
        """The stored records of a batch that has a hole: those before the first missing step."""
        pairs = await self._conn.call(
            "execute_command", "ZRANGEBYSCORE", key, first, end - 1, "WITHSCORES", NEVER_DECODE=True, withscores=True
        )
        rows: list[bytes] = []
        for expected, (row, score) in enumerate(pairs, first):
            if int(score) != expected:
                break
            rows.append(row)
        return rows

    async def length(self, run_id: str) -> int:
        """How many contiguous steps the run has journaled, a fork's shared prefix included."""
        meta = keys.journal_meta(self._prefix, run_id)
        length = await self._conn.command("hget", meta, "len")
        return int(length or 0)

    async def fork(self, parent_id: str, child_id: str, at_step: int) -> None:
        """Make ``child_id`` refer to the parent's first ``at_step`` records; nothing is copied."""
        p = self._prefix
        done = await self._conn.script(
            "journal_fork", [keys.journal_meta(p, child_id), keys.journal(p, child_id)], [parent_id, at_step]
        )
        if not done:
            raise JournalConflictError(f"run {child_id!r} has a journal already; it cannot become a fork")
        if at_step > 0:
            # The child now depends on its ancestors' records: retention must not drop them under it.
            lineage = [parent_id, *await self.ancestors(parent_id)]

            async def keep(c: Any) -> None:
                async with c.pipeline(transaction=False) as pipe:
                    for run in lineage:
                        pipe.persist(keys.journal(p, run))
                        pipe.persist(keys.journal_meta(p, run))
                    await pipe.execute()

            await self._conn.run(keep)

    async def record_failure(self, run_id: str, failure: StepFailure) -> None:
        """Keep the failure for audit (not retried: a repeated audit line is worse than a missing retry)."""
        key = keys.failures(self._prefix, run_id)
        await self._conn.command("rpush", key, failure.model_dump_json(), retry=False)

    async def failures(self, run_id: str) -> list[StepFailure]:
        """The run's failures, oldest first."""
        key = keys.failures(self._prefix, run_id)
        rows = await self._conn.command("lrange", key, 0, -1)
        return [StepFailure.model_validate_json(row) for row in rows]

    async def delete(self, run_id: str) -> None:
        """Forget the run's journal (forks of it keep working only while it exists)."""
        p = self._prefix
        names = (
            keys.journal(p, run_id), keys.journal_meta(p, run_id), keys.failures(p, run_id), keys.claims(p, run_id)
        )
        await self._conn.command("delete", *names)

    async def close(self) -> None:
        """Close this event loop's connections."""
        await self._conn.close()
