"""An agent of twelve plain calls, each noted in the file ``CASTOR_TEST_TICKS`` names: a test counts how often
each call ran when two processes may drive the run (``test_resume_refused``, ``test_embedded_drive``)."""

from __future__ import annotations

import os
import time

from castor.lib import tool

CALLS = 12


def tick(n: int) -> str:
    """Note call ``n``, then take a while, as a real tool does."""
    with open(os.environ["CASTOR_TEST_TICKS"], "a") as out:
        out.write(f"{n}\n")
    time.sleep(0.4)
    return f"tick {n}"


async def ticks() -> str:
    """``tick`` twelve times."""
    for n in range(CALLS):
        await tool("tick", n=n)
    return "ticked"
