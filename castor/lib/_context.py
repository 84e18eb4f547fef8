"""castor-kernel 0.5.1's ``castor.lib._context``: the proxy of the run the calling code executes in.

``castor.lib`` finds its run itself (the run ``Castor.run()`` drives in this task); binding one by hand
with ``set_proxy`` is not supported.
"""

from __future__ import annotations

from typing import Any, NoReturn

from castor.errors import UnsupportedError
from castor.kernel.context import active_run
from castor.lib.proxy import SyscallProxy


def get_proxy() -> Any:
    """The legacy ``SyscallProxy`` of the current run; ``RunEndedError`` (a ``RuntimeError``) outside one."""
    return SyscallProxy(active_run())


def set_proxy(proxy: Any) -> NoReturn:
    """Not supported: ``Castor.run()`` binds the run; ``castor.lib`` finds it."""
    raise UnsupportedError(
        "castor.lib._context.set_proxy() (castor-kernel 0.5.1) is not provided: Castor.run() binds the run "
        "and castor.lib finds it; run the agent with Castor(...).run(agent)"
    )


__all__ = ["get_proxy", "set_proxy"]
