"""The heartbeats of the steps a worker process runs: one daemon thread renews them all; and the
worker's own presence in its pool (``Presence``), which tells ``ps`` / ``inspect`` that a pool has a
live worker.

``claim.lua`` sets a step's heartbeat key (the worker's id, a TTL of ``[workers] heartbeat`` seconds)
with its started marker. While the tool runs, this thread renews the key every quarter of the TTL; when
the tool has ended (journaled, failed or given up) the key is dropped. So a second delivery of the step
(a coordinator that took the run over sends it again) finds the key and waits for the result, and only
a step whose worker is gone — the key expired — is in doubt.

Renewing is ``PEXPIRE``, never a plain ``SET``: a key the step's finish dropped is not brought back. A
renewal that fails (Redis restarting) is tried again at the next beat. A Redis away for longer than the
TTL (its keys' expiry times run on, restored from the AOF) finds the key gone at the next beat while the
tool still runs: the key is set again then, only while the step's started marker still holds this round
(``RESTORE``: the finish drops the marker with the key, a tool that raised drops both), so a
coordinator looking at the heartbeat (``castor.executors._loss``) does not take a live worker for lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("castor.worker")


# Set a step's heartbeat again (KEYS[1]) only while its started marker (KEYS[2]) holds the round this worker
# runs (ARGV[3]); never over another's (NX). ARGV[1] the worker's id, ARGV[2] the TTL (ms).
RESTORE = """
if redis.call('GET', KEYS[2]) == ARGV[3] then
  return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
end
return false
"""


# Drop a step's heartbeat (KEYS[1]) only while it is this worker's (ARGV[1]): a delivery that started the step
# after this worker dropped its start holds the key now.
DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Beat:
    """One step's heartbeat while it is renewed: ``dropped`` once something else deleted the key."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = False


class Heartbeats:
    """Renews the heartbeat keys registered with ``beating``, on a client of its own."""

    def __init__(self, url: str, ttl: float, worker: str = "") -> None:
        from castor.backends.redis import redis_client

        self._worker = worker  # the id the claims set the keys to ('': drop whatever holds a key)
        self._ttl_ms = max(1, int(ttl * 1000))
        self._every = ttl / 4
        self._client = redis_client(url, sync=True, socket_timeout=max(self._every, 0.5))
        self._keys: dict[str, int] = {}  # key -> how many tools of this process hold it
        self._restore: dict[str, tuple[str, str, int]] = {}  # key -> (its step's marker, worker id, round)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def beating(self, key: str, worker: str | None = None, *,
                restore: tuple[str, str, int] | None = None) -> Iterator[Beat]:
        """Renew ``key`` until the block ends, then drop it (best effort: it expires anyway) unless the
        block set ``dropped`` on the ``Beat`` it got (the step's finish dropped it); ``worker``: set the
        key to it first (a step its claim did not mark, such as an idempotent step run again);
        ``restore``: the step's started marker, this worker's id and the round it runs, to set the key
        again should it expire while the block runs (module doc)."""
        if worker is not None:
            self._client.set(key, worker, px=self._ttl_ms)
        beat = Beat()
        with self._lock:
            self._keys[key] = self._keys.get(key, 0) + 1
            if restore is not None:
                self._restore[key] = restore
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="castor-heartbeats", daemon=True)
                self._thread.start()
        try:
            yield beat
        finally:
            with self._lock:
                held = self._keys.pop(key, 1) - 1
                if held > 0:
                    self._keys[key] = held
                else:
                    self._restore.pop(key, None)
            if held <= 0 and not beat.dropped:
                self._drop(key)

    def _drop(self, key: str) -> None:
        try:
            if self._worker:
                self._client.eval(DROP, 1, key, self._worker)
            else:
                self._client.delete(key)
        except Exception as exc:  # Redis away: the key expires within its TTL
            log.warning("could not drop the heartbeat %s (%s); it expires by itself", key, exc)

    def _run(self) -> None:
        while not self._wake.wait(self._every) and not self._closed:
            with self._lock:
                held = list(self._keys)
            if not held:
                continue
            try:
                pipe: Any = self._client.pipeline(transaction=False)
                for key in held:
                    pipe.pexpire(key, self._ttl_ms)
                renewed = pipe.execute()
                gone = [key for key, ok in zip(held, renewed, strict=True) if not ok]
                if gone:
                    self._set_again(gone)
            except Exception as exc:  # renewed at the next beat; the TTL spans several
                log.warning("could not renew %d heartbeat(s): %s", len(held), exc)

    def _set_again(self, gone: list[str]) -> None:
        """Set again the keys of ``gone`` that expired while their steps still run here (``RESTORE``).

        Under the lock a block's end takes before it drops its key: a key set again here is dropped after
        (a timed-out tool's: its marker stays), and one whose block ended first is not set at all. Rare
        (a Redis away past the TTL), so the lock's round trips stall no tool's start for long."""
        with self._lock:
            for key in gone:
                restore = self._restore.get(key)
                if restore is None:
                    continue
                marker, worker, attempt = restore
                if self._client.eval(RESTORE, 2, key, marker, worker, self._ttl_ms, str(attempt)):
                    log.warning("the heartbeat %s had expired while its step ran (Redis away?): set again", key)

    def close(self) -> None:
        """Stop renewing and release the client (the keys expire by themselves)."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._client.close()


PRESENCE_EVERY = 2.0  # how often a worker says it is alive (s)
PRESENCE_TTL = 10.0  # a worker silent this long is taken for gone (s)


class Presence:
    """A worker process's entry in its pool's registry (``keys.pool_workers``), renewed by a daemon thread
    every ``PRESENCE_EVERY`` seconds, and removed when it stops (or taken for gone ``PRESENCE_TTL`` after
    it last said it was alive)."""

    def __init__(self, url: str, key: str, node: str) -> None:
        from castor.backends.redis import redis_client

        self._client = redis_client(url, sync=True, socket_timeout=PRESENCE_EVERY)
        self._key, self._node = key, node
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="castor-presence", daemon=True)

    def start(self) -> Presence:
        """Say this worker is alive, and keep saying it."""
        self._beat()
        self._thread.start()
        return self

    def _beat(self) -> None:
        now = time.time()
        try:
            pipe: Any = self._client.pipeline(transaction=False)
            pipe.zadd(self._key, {self._node: now})
            pipe.zremrangebyscore(self._key, "-inf", now - 6 * PRESENCE_TTL)  # long gone: forgotten
            pipe.execute()
        except Exception as exc:  # Redis away: said again at the next beat
            log.debug("could not renew this worker's presence: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(PRESENCE_EVERY):
            self._beat()

    def close(self) -> None:
        """Leave the pool's registry (best effort: a silent entry is taken for gone anyway)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(PRESENCE_EVERY + 1)
        try:
            self._client.zrem(self._key, self._node)
        except Exception as exc:
            log.debug("could not leave the pool's registry: %s", exc)
        self._client.close()
