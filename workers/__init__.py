"""Castor's worker pools: the Celery app, the tool task and the worker entrypoint per pool.

``workers`` imports ``castor``; ``castor`` never imports ``workers`` (the CLI loads it lazily).
"""
