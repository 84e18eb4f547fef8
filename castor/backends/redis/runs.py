"""``RedisRunStore``: run headers for resume, ``castor ps`` and ``castor inspect``.

A run's header is a hash: the checkpoint JSON without its journal, plus the few fields ``ps`` lists,
so listing runs never parses checkpoints. Sorted sets index every run and the runs of each status by
creation time, for paging newest first. Retention: when a run finishes (COMPLETED, FAILED) all of its
keys get ``retention_seconds`` to live, journal included; a fork's ancestors are kept at least as long,
since the fork's history is theirs.

A save may carry a ``Fence`` (or find one in the ``fences`` table the backend's stores share): the save
script then compares the run's lease with the fence's token inside Redis and refuses the write with
``StaleLeaseError`` when another coordinator holds the run, with no window between check and write.
"""

from __future__ import annotations

import time
from builtins import list as _list
from typing import Any

from castor.backends.redis import keys
from castor.backends.redis._client import Fence, RedisConnection
from castor.backends.redis.journal import RedisJournal
from castor.backends.redis.scripts import STORE_SCRIPTS
from castor.checkpoint import FINISHED, AgentCheckpoint
from castor.errors import RunExistsError, RunFinishedError
from castor.seams import RunSummary

WEEK = 7 * 24 * 3600.0
_PRUNE_SHA = STORE_SCRIPTS["run_prune"].sha
_SUMMARY = ("status", "agent", "parent", "pending_tool", "steps", "created", "updated", "owner")


class RedisRunStore:
    """Run headers every process shares; see the module docstring."""

    def __init__(
        self,
        conn: RedisConnection,
        prefix: str,
        journal: RedisJournal,
        *,
        retention_seconds: float = WEEK,
        fences: dict[str, Fence] | None = None,
    ) -> None:
        self._conn = conn
        self._prefix = prefix
        self._journal = journal
        self.retention_seconds = retention_seconds
        self.fences: dict[str, Fence] = {} if fences is None else fences

    def _index_keys(self) -> _list[str]:
        p = self._prefix
        return [keys.runs_expiring(p), keys.runs_all(p), *(keys.runs_by_status(p, s) for s in keys.STATUSES)]

    async def create(self, checkpoint: AgentCheckpoint) -> None:
        """Store a new run's header; ``RunExistsError`` if the pid has one (the save script looks, then
        writes: nothing comes between)."""
        await self.save(checkpoint, create=True)

    def lives_at(self, url: str, prefix: str) -> bool:
        """Whether this store is the Redis at ``url`` under ``prefix`` (as a fleet's client names its own)."""
        return self._conn.url == url and self._prefix == prefix

    async def create_submitted(self, checkpoint: AgentCheckpoint) -> None:
        """Store a new run's header and submit it to the fleet (mark it submitted, queue it for the
        coordinators) in one transaction: a submitter that dies has done both or neither (two steps left a
        run stored and never queued, every later submit of its pid refused). ``RunExistsError`` if the pid has
        another header; the same header again (this submit repeated after a lost reply) is done already."""
        cp, p = checkpoint, self._prefix
        run_save = self._save_call(cp, owner=None, fence=None, reopen=None, create=True)
        submit = ("fleet_submit", [keys.submitted(p), keys.run_queue(p), keys.run_header(p, cp.pid)], [cp.pid])
        _, created = await self._conn.scripts_at_once([submit, run_save])
        if created == 0:  # another's header: not queued either
            raise RunExistsError(cp.pid)
        if self._conn.replicas:  # a run submitted counts once the replicas have it too, as a claim does
            await self._conn.replicated(keys.replicated(p), f"run {cp.pid!r} is stored and queued on the primary")
        # Queued now, or (the header being this one) by this very submit's first try: submitted either way.

    async def save(
        self, checkpoint: AgentCheckpoint, *, owner: str | None = None, fence: Fence | None = None,
        reopen: str | None = None, create: bool = False,
    ) -> None:
        """Store the checkpoint's header; a finished run starts its retention time.

        With a ``fence`` (given, or the run's in ``fences``) the write goes through only while the
        fence's lease key holds its token (checked inside the script); ``StaleLeaseError`` otherwise.
        Over a finished run the script writes nothing and the save raises ``RunFinishedError``, unless
        ``reopen`` names the stored status (see ``RunStore.save``).
        """
        cp = checkpoint
        fence = fence or self.fences.get(cp.pid)
        _, script_keys, args = self._save_call(cp, owner=owner, fence=fence, reopen=reopen, create=create)
        done = await self._conn.script("run_save", script_keys, args)
        if done == 0:  # created already: nothing was written
            raise RunExistsError(cp.pid)
        if done != 1:  # the stored status of a finished run: nothing was written
            raise RunFinishedError(cp.pid, done.decode() if isinstance(done, bytes) else str(done))
        if cp.status in FINISHED:
            await self._keep_ancestors(cp.pid, max(int(self.retention_seconds), 1))

    def _save_call(
        self, cp: AgentCheckpoint, *, owner: str | None, fence: Fence | None, reopen: str | None, create: bool
    ) -> tuple[str, _list[str], _list[Any]]:
        """The save script's call for ``cp``: its name, keys and arguments."""
        p = self._prefix
        header = cp.model_copy(update={"syscall_log": []}).model_dump_json()
        finished = cp.status in FINISHED
        retention = max(int(self.retention_seconds), 1) if finished else 0
        expiring, every, *by_status = self._index_keys()
        own = keys.run_keys(p, cp.pid)
        fields = {
            "cp": header, "status": cp.status, "agent": cp.agent_function_name, "parent": cp.parent_pid or "",
            "pending_tool": cp.pending_tool or "", "steps": len(cp.syscall_log), "created": repr(cp.created_at),
            "updated": repr(cp.updated_at), "owner": owner or "",
            # Read by a worker's claim (claim.lua): a cancelled run's task still on a queue starts nothing.
            "stopped": (cp.preemption_reason or "") if cp.status == "PREEMPTED" else "",
        }
        status_at = keys.STATUSES.index(cp.status) + 1
        args: _list[Any] = [
            cp.pid, status_at, repr(cp.created_at), retention, repr(time.time()), fence.token if fence else "",
            reopen or "", "1" if create else "",
        ]
        for name, value in fields.items():
            args.extend((name, value))
        lease = fence.key if fence else own[0]
        return "run_save", [own[0], every, expiring, *by_status, lease, *own[1:]], args

    async def _keep_ancestors(self, pid: str, retention: int) -> None:
        """Give the runs a finished fork shares records with at least the fork's retention."""
        lineage = await self._journal.ancestors(pid)
        if not lineage:
            return
        p = self._prefix
        shared = [key for run in lineage for key in (keys.journal(p, run), keys.journal_meta(p, run))]
        headers = [keys.run_header(p, run) for run in lineage]

        async def extend(c: Any) -> None:
            async with c.pipeline(transaction=False) as pipe:
                for key in shared:
                    pipe.ttl(key)
                for key in headers:
                    pipe.hget(key, "status")
                replies = await pipe.execute()
            ttls, statuses = replies[: len(shared)], replies[len(shared) :]
            async with c.pipeline(transaction=False) as pipe:
                for i, key in enumerate(shared):
                    status = statuses[i // 2]
                    live = status is not None and status not in FINISHED
                    # a live ancestor keeps its records anyway; a finished or gone one keeps them this long
                    if not live and (ttls[i] == -1 or 0 <= ttls[i] < retention):
                        pipe.expire(key, retention)
                await pipe.execute()

        await self._conn.run(extend)

    async def load(self, pid: str) -> AgentCheckpoint | None:
        """The header (``syscall_log`` empty) or None if no such run."""
        key = keys.run_header(self._prefix, pid)
        data = await self._conn.command("hget", key, "cp")
        return None if data is None else AgentCheckpoint.model_validate_json(data)

    async def list(self, status: str | None = None, limit: int = 100, offset: int = 0) -> _list[RunSummary]:
        """Runs, newest first, optionally of one status; runs past their retention are pruned first."""
        p = self._prefix
        index = keys.runs_all(p) if status is None else keys.runs_by_status(p, status)
        if limit <= 0:
            return []

        prune_keys = [*self._index_keys(), keys.submitted(p)]

        async def page(c: Any) -> _list[str]:
            async with c.pipeline(transaction=False) as pipe:
                pipe.evalsha(_PRUNE_SHA, len(prune_keys), *prune_keys, repr(time.time()), 1000)
                pipe.zrevrange(index, offset, offset + limit - 1)
                return (await pipe.execute())[1]

        pids = await self._conn.run(page)

        async def read(c: Any) -> _list[Any]:
            async with c.pipeline(transaction=False) as pipe:
                for pid in pids:
                    pipe.hmget(keys.run_header(p, pid), *_SUMMARY)
                return await pipe.execute()

        rows = await self._conn.run(read) if pids else []
        return [_summary(pid, row) for pid, row in zip(pids, rows, strict=True) if row[0] is not None]

    async def delete(self, pid: str) -> None:
        """Forget the run's header and take it off the indexes (its journal is the journal's)."""
        header = keys.run_header(self._prefix, pid)
        indexes = self._index_keys()
        submitted = keys.submitted(self._prefix)

        async def drop(c: Any) -> None:
            async with c.pipeline(transaction=False) as pipe:
                pipe.delete(header)
                for index in indexes:
                    pipe.zrem(index, pid)
                pipe.srem(submitted, pid)
                await pipe.execute()

        await self._conn.run(drop)

    async def ready(self) -> None:
        """Refuse a Redis that may evict keys (``castor.backends.redis.eviction``), once a process."""
        await self._conn.ready()

    async def close(self) -> None:
        """Close this event loop's connections."""
        await self._conn.close()


def _summary(pid: str, row: _list[Any]) -> RunSummary:
    status, agent, parent, pending_tool, steps, created, updated, owner = row
    return RunSummary(
        pid=pid, status=status, agent=agent, parent_pid=parent or None, pending_tool=pending_tool or None,
        steps=int(steps or 0), created_at=float(created), updated_at=float(updated), owner=owner or None,
    )
