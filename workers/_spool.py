"""Finished steps a worker could not journal in time: kept on local disk until Redis takes them.

A worker whose tool has finished asks Redis to journal the step (``finish.lua``) again and again while
Redis is away, for up to ``[workers] outage_deadline`` seconds. Past that it does not drop the result:
it writes the finish it could not make (the script's keys and arguments, the journal record and the
reply included) to a file of ``[workers] spool`` (``~/.castor/spool`` by default; keep it on a
volume that outlives the container), frees the pool slot, and a thread of the process keeps trying to
replay the spooled finishes; a worker replays what its spool holds when it starts, too. Replaying is the
same write-once script: a record already there wins, a second replay changes nothing.

A file names the Redis it belongs to by a digest of its URL, so a worker of another fleet sharing the
directory leaves it alone. The files hold the step's record in full: the directory is made private
(0700) and each file 0600.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from castor.fleet.restart import REPLAY_EVERY  # a promise to whoever judges a step in doubt

log = logging.getLogger("castor.worker")
DEFAULT_SPOOL = Path("~/.castor/spool")

Script = Callable[..., Any]  # script(keys=..., args=...), redis-py's registered script or the lean twin


class Spool:
    """The spooled finishes of one Redis (``url``) in ``directory``; ``finish`` runs one (raises when Redis
    is still away)."""

    def __init__(self, directory: Path | str, url: str, finish: Script) -> None:
        self.directory = Path(directory).expanduser()
        self._redis = hashlib.sha256(url.encode()).hexdigest()[:16]
        self._finish = finish
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def keep(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Path:
        """Write one finish to the spool (atomically, synced) and make sure a thread replays it."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_.#" else "_" for c in name)[:200]
        path = self.directory / f"{self._redis}-{safe}-{time.time_ns()}.json"
        temp = path.with_suffix(".tmp")
        body = json.dumps({"redis": self._redis, "keys": list(keys), "args": [str(a) for a in args]})
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        log.error("finish of %s could not reach Redis in time: kept in %s until Redis takes it", name, path)
        self._start()
        return path

    def pending(self) -> list[Path]:
        """The spooled finishes of this Redis, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"{self._redis}-*.json"))

    def replay(self) -> int:
        """Run every spooled finish of this Redis; how many Redis took (each file then deleted). Stops at
        the first that fails: Redis is still away, the rest waits for the next try."""
        done = 0
        with self._lock:
            for path in self.pending():
                try:
                    entry = json.loads(path.read_text())
                except FileNotFoundError:  # another process of the worker replayed it
                    continue
                except ValueError as exc:
                    log.error("spooled finish %s cannot be read (%s): left in place", path, exc)
                    continue
                try:
                    self._finish(keys=entry["keys"], args=entry["args"])
                except Exception as exc:
                    log.warning("spooled finish %s not taken yet: %s", path.name, exc)
                    break
                path.unlink(missing_ok=True)
                done += 1
                log.warning("spooled finish %s journaled", path.name)
        return done

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="castor-spool", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while self.pending():
            time.sleep(REPLAY_EVERY)
            self.replay()
