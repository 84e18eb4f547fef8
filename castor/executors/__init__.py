"""Executors run a checked tool call: ``LocalExecutor`` here, ``CeleryExecutor`` on a worker pool."""

from castor.executors.local import LocalExecutor

__all__ = ["LocalExecutor"]
