"""A streamed model step's chunks, from the ``llm`` pool's worker to the coordinator, as they come.

The worker that streams a model step (its task's checked arguments say ``stream``) ``XADD``s each chunk of
text the provider sends to the step's chunk stream (``keys.chunks``: under the fleet's prefix and the run's
hash tag, named from the task's run, step and round, never from a field a task could choose), bounded in
length (``MAXLEN ~``) and in time (a TTL set with the first chunk), and an end entry once the provider's
stream is over, before it journals the step and replies. Each entry is signed like a reply
(``castor.fleet.wire``): HMAC-SHA256 under the fleet's secret over the Celery task id the coordinator
published, the chunk's position and its text. The coordinator follows the stream while it waits for the
reply and hands the agent only the signed chunks of the task it published, in order: an entry anyone else
wrote (a forged chunk, one of an earlier task of the step) reaches no agent. The journal keeps the whole
response, as ever; the chunk stream is only the way there, and the coordinator deletes it once done.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any

from castor._secret import digests_match

log = logging.getLogger("castor.llm.chunks")
MAXLEN = 10_000  # entries a chunk stream keeps (approximately): a reader that lags that far loses the oldest
TTL = 3600  # seconds a chunk stream outlives its last write if no coordinator deletes it
BLOCK_MS = 100  # a follower's longest wait for the next chunk before it looks whether the call ended
END = "end"


def signature(secret: str | None, task_id: str, seq: int, text: str, kind: str) -> str:
    """The entry's HMAC-SHA256 under ``secret`` (empty without one: an insecure development fleet)."""
    if not secret:
        return ""
    signed = f"chunk|{len(task_id)}:{task_id}|{seq}|{kind}|{len(text)}:{text}"
    return hmac.digest(secret.encode(), signed.encode(), "sha256").hex()


class ChunkWriter:
    """The worker's side: writes the chunks of one task's stream (``redis``: an asyncio redis-py client)."""

    def __init__(self, redis: Any, key: str, secret: str | None, task_id: str) -> None:
        self.redis = redis
        self.key = key
        self.secret = secret
        self.task_id = task_id
        self.seq = 0

    async def write(self, text: str, kind: str = "t") -> None:
        """Append one chunk (``kind`` ``t``) or the end (``END``); the first write sets the stream's TTL."""
        fields = {"i": self.task_id, "n": str(self.seq), "k": kind, "x": text,
                  "h": signature(self.secret, self.task_id, self.seq, text, kind)}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.key, fields, maxlen=MAXLEN, approximate=True)
            if self.seq == 0:
                pipe.expire(self.key, TTL)
            await pipe.execute()
        self.seq += 1

    async def end(self) -> None:
        """The provider's stream is over: the follower stops at this entry."""
        await self.write("", END)


class ChunkFollower:
    """The coordinator's side: reads one step's chunk stream and hands each signed chunk of ``task_id`` to
    ``chunk``, in order, until the end entry, or until ``finish()`` and a last read find nothing more."""

    def __init__(self, run: Callable[..., Any], key: str, secret: str | None, task_id: str,
                 chunk: Callable[[str], None]) -> None:
        self._run = run  # RedisConnection.run: a function of an asyncio client, on a connection of the pool
        self.key = key
        self.secret = secret
        self.task_id = task_id
        self.chunk = chunk
        self.seq = 0
        self.ended = False
        self._finishing = asyncio.Event()

    def finish(self) -> None:
        """The call ended: read what is there once more without waiting, then stop."""
        self._finishing.set()

    async def follow(self) -> None:
        """Hand over the chunks as they come; never raises but for a cancellation (a lost chunk is text
        the journaled response still holds)."""
        last = "0-0"
        try:
            while not self.ended:
                finishing = self._finishing.is_set()
                block = None if finishing else BLOCK_MS
                reply = await self._run(lambda c, at=last, b=block: c.xread({self.key: at}, count=500, block=b))
                entries = [entry for _name, batch in reply or [] for entry in batch]
                for entry_id, fields in entries:
                    last = entry_id
                    self._take(fields)
                if finishing and not entries:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the reply (and the journal) still carry the whole text
            log.warning("chunk stream %s: %s: %s; the rest comes with the step's record", self.key,
                        type(exc).__name__, exc)

    def _take(self, fields: dict[str, str]) -> None:
        task_id, kind, text = fields.get("i", ""), fields.get("k", ""), fields.get("x", "")
        seq = fields.get("n", "")
        if task_id != self.task_id or seq != str(self.seq):
            return  # another task's (an earlier publish, a forger's), or out of order
        expected = signature(self.secret, task_id, self.seq, text, kind)
        if not digests_match(expected, fields.get("h")):
            log.warning("ignoring a chunk on %s without a valid signature", self.key)
            return
        self.seq += 1
        if kind == END:
            self.ended = True
        elif text:
            self.chunk(text)
