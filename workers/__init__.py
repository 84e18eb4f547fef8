"""Castor's worker pools: the Celery app, the tool task and the worker entrypoint per pool.

``workers`` imports ``castor``'s public modules only (``castor.fleet`` and those its docstring lists;
``tests/test_imports.py`` checks it); ``castor`` never imports ``workers`` (the CLI loads it lazily).
"""
