"""The fleet's coordinator (``castor coordinator``): takes submitted runs from Redis, drives them with
the kernel under a renewable lease, parks runs that wait for a human, wakes them on decisions, takes
over runs whose coordinator died, and drains cleanly on SIGTERM.

``scheduler`` imports ``castor``'s public modules only (``castor.fleet`` and those its docstring lists;
``tests/test_imports.py`` checks it); ``castor`` never imports ``scheduler`` (the CLI loads it lazily).
"""

from scheduler.coordinator import Coordinator, CoordinatorConfig
from scheduler.main import serve

__all__ = ["Coordinator", "CoordinatorConfig", "serve"]
