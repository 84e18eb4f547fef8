"""Two drivers of one run (two kernels on one store, as two processes would be): the first record of a
step stands, and a driver whose write finds it takes it and goes on."""

from __future__ import annotations

import itertools

from castor import AgentCheckpoint, Castor
from castor.backends.memory import memory_backend
from castor.lib import tool


async def test_a_step_journaled_first_by_another_driver_stands_for_both() -> None:
    backend = memory_backend()
    counter = itertools.count()

    async def stamp() -> int:
        return next(counter)

    async def agent() -> int:
        return int(await tool("stamp"))

    first = await Castor(tools=[stamp], store=backend).run(agent, pid="p")
    assert (first.status, first.result) == ("COMPLETED", 0)
    # A second driver that loaded the run before the step was journaled runs it too, and finds it written.
    stale = AgentCheckpoint(pid="p", status="RUNNING", agent_function_name="agent", capabilities={})
    second = await Castor(tools=[stamp], store=backend).run(agent, checkpoint=stale)
    assert (second.status, second.result) == ("COMPLETED", 0)  # the stored record's answer, not its own 1
    assert [r.response for r in await backend.journal.history("p")] == [0]
