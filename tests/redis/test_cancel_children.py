"""A run cancelled after the process driving it died while a child agent of it ran: the child's own row
said it still ran, so a call of the child's that its dead coordinator left on a queue would start on a worker
after the cancel (a worker's claim reads only the child's row). The cancel stores such children cancelled
with their parent; the parent's resume drives them again, as it does a cancelled child that waited."""

from __future__ import annotations

import redis

from castor.backends.redis import keys, redis_backend
from castor.checkpoint import new_record
from castor.kernel.cancel import cancel_stored
from castor.kernel.runner import new_checkpoint


async def test_a_cancel_stores_the_children_its_dead_drive_left_running_cancelled(
    redis_url: str, redis_prefix: str
) -> None:
    backend = redis_backend(redis_url, prefix=redis_prefix)
    parent, child, grandchild = "p", "p::worker-0", "p::worker-0::helper-0"
    try:
        for pid, name in ((parent, "boss"), (child, "worker"), (grandchild, "helper")):
            cp = new_checkpoint(pid, name, {})
            if pid != parent:
                cp.parent_pid = parent if pid == child else child
            await backend.runs.save(cp)
        # The spawns are journaled; the parent's header was not saved again before its process died.
        await backend.journal.append(parent, 0, new_record({"tool_name": "spawn", "arguments": {}}, child))
        await backend.journal.append(child, 0, new_record({"tool_name": "spawn", "arguments": {}}, grandchild))
        done = new_checkpoint("p::done-1", "done", {})
        done.parent_pid = parent
        await backend.runs.save(done)
        await backend.journal.append(parent, 1, new_record({"tool_name": "spawn", "arguments": {}}, done.pid))
        await backend.journal.append(parent, 2, new_record({"tool_name": "join", "arguments": {"handle": done.pid}},
                                                           "joined"))

        assert await cancel_stored(backend, parent, "ann") == "cancelled"

        direct = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            for pid in (parent, child, grandchild):
                stored = await backend.runs.load(pid)
                assert stored is not None and (stored.status, stored.preemption_reason) == ("PREEMPTED", "cancelled")
                assert direct.hget(keys.run_header(redis_prefix, pid), "stopped") == "cancelled"  # read by claim.lua
            for pid, above in ((child, parent), (grandchild, child)):
                stored = await backend.runs.load(pid)
                assert stored is not None and stored.preemption_payload == {"by": "ann", "parent": above}
            joined = await backend.runs.load(done.pid)
            assert joined is not None and joined.status == "RUNNING"  # joined already: not the cancel's to stop
        finally:
            direct.close()
    finally:
        await backend.close()
