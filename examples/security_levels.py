"""The same agent at Castor's three levels of protection, with the Python API.

    python examples/security_levels.py

Level 1: destructive calls wait for a human (approve, reject, modify), then the run resumes.
Level 2: a speculative run goes at full speed; destructive steps are flagged for review.
Level 3: fork a finished run at a step: earlier steps replay from the journal, later ones re-execute.
"""

import asyncio
from collections import Counter

from castor import AgentCheckpoint, Castor
from castor.lib import tool

CALLS: Counter[str] = Counter()  # the tools count their own executions


async def search(query: str) -> list[str]:
    CALLS["search"] += 1
    return ["/tmp/old1", "/tmp/old2", "/tmp/old3"]


async def delete_file(path: str) -> str:
    CALLS["delete_file"] += 1
    return f"Deleted {path}"  # pretend: nothing is removed


async def my_agent() -> str:
    report = []
    for path in await tool("search", query="old logs"):
        answer = await tool("delete_file", path=path)
        report.append(answer if isinstance(answer, str) else f"kept {path}: {answer['human_feedback']}")
    return "; ".join(report)


async def level_1(kernel: Castor) -> None:
    print("== Level 1: a human approves every destructive call")
    cp = await kernel.run(my_agent, budgets={"api": 10})
    print(f"suspended at {cp.pending_tool}({cp.pending_args}); search ran at once")
    await kernel.approve(cp, by="alice")  # executes the call now and journals it
    cp = await kernel.run(my_agent, checkpoint=cp)  # replays step 0, stops at the next delete
    kernel.reject(cp, "still in use", by="alice")  # the agent receives HITL_REJECTED
    cp = await kernel.run(my_agent, checkpoint=cp)
    kernel.modify(cp, "archive it instead", by="alice")  # the agent receives HITL_MODIFIED
    cp = await kernel.run(my_agent, checkpoint=cp)
    print(f"{cp.status}: {cp.result}")
    print(f"tool executions: {dict(CALLS)} (only the approved delete ran)\n")


async def level_2(kernel: Castor) -> AgentCheckpoint:
    print("== Level 2: speculative, review after")
    CALLS.clear()
    cp = await kernel.run(my_agent, speculative=True)
    summary = kernel.scan(cp)
    print(f"{summary.total_steps} steps, {summary.auto_verified} auto-verified, {summary.flagged_count} flagged")
    for step in summary.flagged:
        print(f"  step {step.index}: {step.tool_name}({step.arguments}) - {step.reason}")
    print(f"tool executions: {dict(CALLS)}\n")
    return cp


async def level_3(kernel: Castor, cp: AgentCheckpoint) -> None:
    print("== Level 3: time travel")
    CALLS.clear()
    forked = cp.fork(at_step=2)  # keeps steps 0-1 (search, first delete), shared with the parent
    cp2 = await kernel.run(my_agent, checkpoint=forked)
    print(f"fork {cp2.pid}: {cp2.status}, {len(cp2.syscall_log)} steps")
    print(f"tool executions: {dict(CALLS)} (steps 0-1 came from the journal; steps 2-3 re-ran)")


async def main() -> None:
    kernel = Castor(tools=[search, delete_file], destructive=["delete_file"])
    await level_1(kernel)
    await level_3(kernel, await level_2(kernel))


if __name__ == "__main__":
    asyncio.run(main())
