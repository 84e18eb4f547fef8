"""The Celery app of a worker pool, built from settings (never a module-level global)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from castor.fleet.celery_config import celery_config
from castor.registry import ToolSpec
from castor.settings import Settings


def make_app(settings: Settings, *, name: str = "castor", tools: Iterable[ToolSpec] = ()) -> Any:
    """A Celery app for ``settings``: the fleet's shared config plus what only workers need. ``tools``:
    those the worker serves (the broker's visibility timeout stays above their deadlines)."""
    from celery import Celery

    from ._broker_loss import patch_restore_unacked

    patch_restore_unacked()  # a broker restart must not stop the worker (kombu's restore on a lost connection)
    # task events on a Redis broker leave by a lean PUBLISH (castor.fleet.workers._events): a third of the
    # consumer thread
    app = Celery(name, set_as_current=True, events="castor.fleet.workers._events:LeanEvents")
    conf = celery_config(settings, tools=tools)
    conf.update(
        {
            # One task per worker slot at a time: long tools must not hold queued tasks hostage.
            "worker_prefetch_multiplier": 1,
            "worker_disable_rate_limits": True,
            "worker_redirect_stdouts": False,
            "task_track_started": False,
        }
    )
    app.conf.update(conf)
    return app
