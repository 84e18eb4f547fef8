"""What bench/celery_exec.py runs against: the tool, raw Celery's app, and worker processes.

``raw_app()`` is plain Celery as its docs set it up (Redis broker and result backend), with the fleet's
reliability settings (JSON, late acks, prefetch 1, events) so that only the result path differs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def noop() -> None:
    """The tool both sides run: nothing."""
    return None


def raw_app() -> Any:
    """Raw Celery: broker and result backend on Redis, under the bench's own key prefix."""
    from celery import Celery

    url = os.environ["BENCH_REDIS"]
    prefix = os.environ["BENCH_RAW_PREFIX"]
    app = Celery("rawbench", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_acks_late=True, worker_prefetch_multiplier=1, worker_send_task_events=True,
        task_send_sent_event=True, task_default_queue=f"{prefix}.q",
        broker_transport_options={"global_keyprefix": f"{prefix}:"},
        result_backend_transport_options={"global_keyprefix": f"{prefix}:"},
        worker_hijack_root_logger=False,
    )

    @app.task(name="raw.noop", shared=False)
    def raw_noop() -> None:
        return None

    return app


if os.environ.get("BENCH_RAW_PREFIX"):
    app = raw_app()  # what `celery -A bench._celery_fixtures worker` loads


def start(cmd: list[str], env: dict[str, str], log: Path, ready: str = " ready.") -> subprocess.Popen[bytes]:
    """A worker subprocess, returned once its log says it is ready."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while ready not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{cmd[:4]} did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return proc


def celery_cmd(app: str, queue: str, threads: int) -> list[str]:
    """``celery worker`` with a thread pool, started the fast way."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker", "--pool=threads", f"--concurrency={threads}",
        f"--queues={queue}", "--without-mingle", "--without-gossip", "--without-heartbeat", "-E",
        "--loglevel=INFO", f"--hostname=raw-{os.getpid()}@%h",
    ]
