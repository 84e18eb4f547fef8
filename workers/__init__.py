"""Castor's worker pools: the Celery app, the tool task and the worker entrypoint per pool.

Installed as ``castor.fleet.workers`` (this repository's ``workers/`` folder, mapped by pyproject.toml's
``package-dir``): import it by that name. It imports ``castor``'s public modules only (``castor.fleet``
and those its docstring lists; ``tests/test_imports.py`` checks it); the rest of ``castor`` never imports
it (the CLI loads it lazily).
"""
