"""The worker's hot path in two synchronous round trips from the pool thread: claim, then finish.

A tool task used to hop to the worker's event loop three times (claim, journal, reply), each hop a
cross-thread wake-up and a redis.asyncio round trip. The common case — a signed call that starts,
returns and is journaled — needs none of the loop: ``StepScripts`` runs ``claim.lua`` and
``finish.lua`` (the journal's own ``journal_append.lua`` with the reply ``XADD`` after it, one atomic
call) from the pool thread, on a socket of the thread's own parsed by hiredis (``_lean``; redis-py's
client where hiredis is missing or the URL is not plain ``redis://``). Every other case (refusals,
in-doubt steps, failures, a record already there) keeps the loop and the async seams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from castor.backends.redis import keys
from castor.backends.redis.journal import encode
from castor.checkpoint import SyscallRecord
from castor.executors._wire import Job, Reply

MARKER_TTL = 7 * 24 * 3600
REPLY_MAXLEN = 100_000
DUPLICATE = -3  # claim: another copy of a task message a worker took already
ABANDONED = -4  # claim: a task its coordinator gave up on before any worker took it


@dataclass(frozen=True, slots=True)
class Delivery:
    """Which task message a worker got: its task id with Celery's retry count (a retry is a new message
    under the same id), and whether the broker redelivers it (its worker was lost, or it was requeued)."""

    message: str
    redelivered: bool = False

    @property
    def task_id(self) -> str:
        """The Celery task id of the message."""
        return self.message.rpartition("/")[0]


def finish_source() -> str:
    """``finish.lua`` with ``journal_append.lua`` inlined as the function ``append``: one source of truth
    for the write-once rule."""
    append = (resources.files("castor.backends.redis") / "lua" / "journal_append.lua").read_text()
    finish = resources.files("workers").joinpath("lua/finish.lua").read_text()
    return f"local function append()\n{append}\nend\n{finish}"


class StepScripts:
    """``claim`` and ``finish`` of one step, on a synchronous client (thread-safe)."""

    def __init__(self, url: str, prefix: str) -> None:
        from workers import _lean

        self._prefix = prefix
        claim, finish = resources.files("workers").joinpath("lua/claim.lua").read_text(), finish_source()
        self._claim: Any  # script(keys=..., args=...): redis-py's registered script, or the lean twin
        self._finish: Any
        self._close: Callable[[], None]
        if _lean.available(url):
            lean = _lean.LeanClient(url)
            self._claim, self._finish, self._close = _lean_script(lean, claim), _lean_script(lean, finish), lean.close
        else:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # Never a resend: a claim whose reply was lost may have run, and run again it would find its
            # own delivery taken and drop the task as a duplicate (redis-py's default retries vary by version).
            client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))
            self._claim, self._finish = client.register_script(claim), client.register_script(finish)
            self._close = client.close

    def claim(self, job: Job, delivery: Delivery | None = None) -> int:
        """-2: the journal holds the step (serve its record, never run it again); -3 (``DUPLICATE``): another
        copy of a message a worker took already, to drop; -4 (``ABANDONED``): a task its coordinator gave up
        on, to drop; -1: this attempt starts the step (marker set); else the attempt that started it before
        (in doubt). Without ``delivery`` nothing is a duplicate or abandoned."""
        run, step = job.run_id, job.step
        key_list = [
            keys.started_marker(self._prefix, run, step), keys.journal(self._prefix, run),
            keys.deliveries(self._prefix, run, step), keys.abandoned(self._prefix, run, step),
        ]
        if delivery is None:
            args = [job.attempt, MARKER_TTL, step, "", 0, ""]
        else:
            args = [job.attempt, MARKER_TTL, step, delivery.message, int(delivery.redelivered), delivery.task_id]
        return int(self._claim(keys=key_list, args=args))

    def finish(self, job: Job, record: SyscallRecord, reply: Reply) -> bool:
        """Journal ``record`` write-once, drop the step's marker and deliveries, and reply; False (nothing
        replied, nothing dropped) if another record holds the step."""
        run, step = job.run_id, job.step
        journal = keys.journal(self._prefix, run)
        key_list = [
            journal, keys.journal_meta(self._prefix, run), journal,
            keys.started_marker(self._prefix, run, step), keys.deliveries(self._prefix, run, step),
        ]
        args: list[Any] = [job.step, encode(record, job.run_id, job.step), ""]
        if job.reply_to:
            key_list.append(job.reply_to)
            args.append(REPLY_MAXLEN)
            for name, value in reply.fields().items():
                args += (name, value)
        return int(self._finish(keys=key_list, args=args)) != 0

    def close(self) -> None:
        """Release the client's connections."""
        self._close()


def _lean_script(client: Any, source: str) -> Callable[[Sequence[str], Sequence[Any]], Any]:
    """``script(keys=..., args=...)`` as redis-py's registered scripts take it, over ``client``:
    ``EVALSHA``, and the source loaded first when the server does not know it (it did not run)."""
    from castor.backends.redis._resp import RespError

    sha = hashlib.sha1(source.encode()).hexdigest()

    def run(keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return client.call("EVALSHA", sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        client.call("SCRIPT", "LOAD", source)
        return client.call("EVALSHA", sha, len(keys), *keys, *args)

    return run
