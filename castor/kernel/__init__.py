"""The kernel: every tool call an agent makes passes through it.

    facade      Castor, the operator's handle: builds the Services, drives runs, takes decisions
    approvals   human decisions on a pending call (approve runs it through the chain; reject, modify)
    children    spawn / join of child agents, replayed and journaled as steps
    runner      one run: prepare its checkpoint and context, drive the agent, finish (persist) it
    chain       the syscall handler chain: replay → interceptors → validate → gate → budget → execute
    claims      at most one process runs a step that must run at most once
    steps       how a step is answered: from the journal, by a journaled result, or by a human
    context     RunContext (one run in progress), Services (what a run may use), Syscall, Interceptor

Imports go one way, down this list: ``castor.lib`` (the agent's side) imports only ``context``; the
runner builds the legacy proxy (``castor.lib.proxy``); no module of the kernel or of ``castor.lib``
imports the facade. ``tests/test_imports.py`` keeps it so. Extending the chain is declared, not patched:
``Castor(interceptors=[...])`` (``castor.kernel.context.Interceptor``).

``castor.kernel.journal`` and ``castor.kernel.decisions`` are castor-kernel 0.5.1's module paths,
kept for code written for it (``docs/compatibility.md``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from castor.kernel.facade import Castor, CastorWarning
    from castor.kernel.runner import CastorTask

__all__ = ["Castor", "CastorTask", "CastorWarning"]

_HOME = {"Castor": "castor.kernel.facade", "CastorWarning": "castor.errors", "CastorTask": "castor.kernel.runner"}


def __getattr__(name: str) -> Any:
    # Looked up on first use: importing a module of the package (castor.lib imports
    # castor.kernel.context) must not import the facade, which imports nearly all of castor.
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'castor.kernel' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
