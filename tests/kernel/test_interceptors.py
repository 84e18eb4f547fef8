"""Extending the kernel is declared: ``Castor(interceptors=[...])`` and the optional ``JournalBinding``."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest

from castor import Castor
from castor.executors.local import LocalExecutor
from castor.kernel.context import Handler, Syscall
from castor.lib import tool
from castor.registry import ToolRegistry
from castor.seams import Call, Journal, JournalBinding


def echo(text: str) -> str:
    return text


async def two_calls() -> list[str]:
    return [await tool("echo", text="a"), await tool("echo", text="b")]


def recorder(seen: list[str], name: str) -> Any:
    def stage(call: Syscall, inner: Handler) -> Awaitable[Any]:
        seen.append(f"{name}:{call.step}:{call.arguments['text']}")
        return inner(call)

    return stage


async def test_interceptors_see_every_live_call_in_their_declared_order() -> None:
    seen: list[str] = []
    kernel = Castor(tools=[echo], interceptors=[recorder(seen, "first"), recorder(seen, "second")])
    cp = await kernel.run(two_calls)
    assert cp.result == ["a", "b"]
    assert seen == ["first:0:a", "second:0:a", "first:1:b", "second:1:b"]


async def test_a_replayed_step_never_reaches_an_interceptor() -> None:
    seen: list[str] = []
    kernel = Castor(tools=[echo], interceptors=[recorder(seen, "i")])
    cp = await kernel.run(two_calls)
    seen.clear()
    resumed = await kernel.run(two_calls, checkpoint=cp.fork(at_step=2))
    assert resumed.result == ["a", "b"]
    assert seen == []  # both steps came from the journal


async def test_an_interceptor_runs_before_validation_and_can_refuse_a_call() -> None:
    class Refused(Exception):
        pass

    def refuse(call: Syscall, inner: Handler) -> Awaitable[Any]:
        raise Refused(call.tool_name)

    kernel = Castor(tools=[echo], interceptors=[refuse])
    with pytest.raises(Refused):
        await kernel.run(two_calls)
    assert kernel.load(next(iter(kernel.live))).syscall_log == []  # nothing ran, nothing journaled


def test_the_chain_is_fixed_when_the_kernel_is_built() -> None:
    kernel = Castor(tools=[echo])
    with pytest.raises(AttributeError):
        kernel.chain = kernel.chain  # type: ignore[misc]
    with pytest.raises(AttributeError):
        kernel.executor = kernel.executor  # type: ignore[misc]  # its runs would keep the one they were built with


async def test_an_executor_that_reads_the_journal_is_given_the_kernels() -> None:
    class Reading(LocalExecutor):
        journal: Journal | None = None

        def bind_journal(self, journal: Journal) -> None:
            self.journal = journal

        async def execute(self, call: Call) -> Any:
            return await super().execute(call)

    def build(tools: ToolRegistry) -> Reading:
        return Reading(tools)

    kernel = Castor(tools=[echo], executor=build)
    assert isinstance(kernel.executor, JournalBinding)
    assert kernel.executor.journal is kernel.backend.journal  # type: ignore[attr-defined]
    assert not isinstance(Castor(tools=[echo]).executor, JournalBinding)
