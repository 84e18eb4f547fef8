"""The fleet's coordinator (``castor coordinator``): takes submitted runs from Redis, drives them with
the kernel under a renewable lease, parks runs that wait for a human, wakes them on decisions, takes
over runs whose coordinator died, and drains cleanly on SIGTERM.

Installed as ``castor.fleet.scheduler`` (this repository's ``scheduler/`` folder, mapped by pyproject.toml's
``package-dir``): import it by that name. It imports ``castor``'s public modules only (``castor.fleet``
and those its docstring lists; ``tests/test_imports.py`` checks it); the rest of ``castor`` never imports
it (the CLI loads it lazily).
"""

from .coordinator import Coordinator, CoordinatorConfig
from .main import serve

__all__ = ["Coordinator", "CoordinatorConfig", "serve"]
