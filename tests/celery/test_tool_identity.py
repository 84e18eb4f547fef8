"""What a pool refuses is told to the run as such. A pool runs a call only as the function its coordinator
checked it against: a run whose ``write_note``
is another function than the pool's (the same name, another file) is refused with one line naming both,
and the pool's function does not run. A newcomer submitting an example's tools to a fleet whose pools
serve other tools of the same names (a pretend ``delete_file`` against a real one) met this."""

from __future__ import annotations

import uuid

import pytest

import castor.lib as lib
from castor import Castor, TaskRefusedError
from castor._code import function_name
from castor.executors.celery import fleet_options

from . import fleet_tools
from .conftest import Fleet


def write_note(name: str, content: str) -> dict[str, str]:
    """Named like the fs pool's ``write_note`` (``fleet_tools.py``), but another function."""
    return {"name": name, "written by": "the test's own write_note"}


def test_a_function_is_named_by_its_file_and_qualified_name_wherever_it_lies() -> None:
    assert function_name(write_note) == "test_tool_identity:write_note"
    assert function_name(fleet_tools.write_note) == "fleet_tools:write_note"  # through @castor_tool
    assert function_name(len) == ""  # no Python source: nothing to compare


async def test_a_tool_of_the_same_name_from_another_file_is_refused_and_the_pools_does_not_run(
    fleet: Fleet,
) -> None:
    tag = f"other-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("write_note", name=tag, content="body")

    kernel = Castor(**fleet_options(fleet.settings, budgets={}, tools=[write_note]))
    try:
        with pytest.raises(TaskRefusedError) as refused:
            await kernel.run(agent)
        cp = next(iter(kernel.live.values()))
        [failure] = await kernel.backend.journal.failures(cp.pid)  # journaled: a replay raises it again
    finally:
        await kernel.close()
    message = str(refused.value)
    assert "the run's is 'test_tool_identity:write_note', this pool's is 'fleet_tools:write_note'" in message
    assert failure.error_type == "TaskRefusedError"
    assert fleet.count(tag, "done") == 0  # the pool's write_note never ran


async def test_the_pools_own_function_runs_as_before(fleet: Fleet, kernel: Castor) -> None:
    tag = f"same-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("write_note", name=tag, content="body")

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    assert fleet.count(tag, "done") == 1


async def test_an_agent_that_catches_the_refusal_is_told_why(fleet: Fleet) -> None:
    async def agent() -> str:
        try:
            await lib.tool("write_note", name="caught", content="body")
        except TaskRefusedError as error:
            return str(error)
        return "ran"

    kernel = Castor(**fleet_options(fleet.settings, budgets={}, tools=[write_note]))
    try:
        cp = await kernel.run(agent)
    finally:
        await kernel.close()
    assert cp.status == "COMPLETED", cp.error
    assert "not the run's tool here" in cp.result


pytestmark = pytest.mark.fleet  # the session's worker pools


async def test_a_task_the_pool_cannot_authenticate_fails_naming_the_refusal_not_a_missing_worker(
    fleet: Fleet,
) -> None:
    """A coordinator whose secret is not the workers': every task is dead-lettered unread (no reply may
    come), and the call failed at its deadline with "is a worker of pool ... running?", while one was."""
    import secrets

    from castor.executors.celery import CeleryExecutor

    other = fleet.settings.updated(security={"secret": secrets.token_hex(32)}, tools={"timeouts": {"search": 0.5}})

    async def agent() -> object:
        return await lib.tool("search", query="anything")

    options = fleet_options(other, budgets={})
    options["executor"] = CeleryExecutor._builder(other, journal=options["store"].journal, reply_grace=1.0)
    kernel = Castor(**options)
    try:
        with pytest.raises(TaskRefusedError) as refused:
            await kernel.run(agent)
    finally:
        await kernel.close()
    message = str(refused.value)
    assert "was refused unread by a worker of pool" in message
    assert "are its [security] secret and this coordinator's the same?" in message, message


async def test_a_letter_a_forged_task_left_for_the_same_step_is_not_taken_for_the_calls_refusal(
    fleet: Fleet,
) -> None:
    """Anyone who writes to the broker can have a worker dead-letter a task naming any run and step. Taken
    for the call's own refusal, it would turn a call no worker took (a timeout: its claim left for a human)
    into one refused unread (known never to run). Only a letter that digests the call's own task counts."""
    import json
    import time

    from castor import ToolTimeoutError
    from castor.backends.redis import keys
    from castor.executors.celery import CeleryExecutor

    pid = f"forged-{uuid.uuid4().hex[:6]}"
    letter = {"at": time.time(), "reason": "no authorization token for 'castor.tool.noop'", "size": 10,
              "sha256": "0" * 64, "headers": {"task": "castor.tool.noop", "castor_run": pid, "castor_step": 0}}
    fleet.redis.lpush(keys.dead_letters(fleet.prefix, "default"), json.dumps(letter))  # no worker serves it

    async def agent() -> object:
        return await lib.tool("noop")

    options = fleet_options(fleet.settings, budgets={})
    options["executor"] = CeleryExecutor._builder(fleet.settings, journal=options["store"].journal, reply_grace=0.5)
    kernel = Castor(**options)
    try:
        with pytest.raises(ToolTimeoutError):
            await kernel.run(agent, pid=pid)
    finally:
        await kernel.close()
