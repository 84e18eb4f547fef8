"""``castor demo``: the three protection levels on the README's clean-up task, in one terminal session.

Every step is the real CLI (``castor.cli.main``) against a temporary SQLite store, so the runs persist
between commands exactly as they do between shell commands. The agent and tools are
``castor.cli.demo_agent``; the tools count their own executions, which is how the demo shows what really
ran and what came from the journal. Pids and the decider's name are fixed so the output is the same
every time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from castor.cli import demo_agent
from castor.kernel import Castor
from castor.summary import scan

AGENT = "castor.cli.demo_agent:cleanup"
TOOLS = ["--tool", "castor.cli.demo_agent:search", "--tool", "castor.cli.demo_agent:delete_file", "--destructive"]
RUN = ["run", AGENT, *TOOLS, "--budget", "api=10"]
RULE = "=" * 78


class DemoError(Exception):
    """A step of the demo did not do what the demo expects."""


def say(*lines: str) -> None:
    """Narration, indented under the command output it explains."""
    for line in lines:
        print(f"  > {line}" if line else "")


def title(text: str) -> None:
    print(f"\n{RULE}\n{text}\n{RULE}")


def castor(*words: str) -> None:
    """Show a command line, then run it in this process."""
    from castor.cli import main

    shown = " ".join(shlex.quote(w) for w in words)
    print(f"\n$ castor {shown}")
    code = main(list(words))
    if code != 0:
        raise DemoError(f"`castor {shown}` exited with {code}")


def counts() -> str:
    calls = demo_agent.CALLS
    return f"search ran {calls['search']}x, delete_file ran {calls['delete_file']}x"


@contextmanager
def temporary_store() -> Iterator[str]:
    """A fresh SQLite store for the demo's commands (never ./castor.db), removed afterwards."""
    previous = os.environ.get("CASTOR_STORE")
    with tempfile.TemporaryDirectory(prefix="castor-demo-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'demo.db'}"
        os.environ["CASTOR_STORE"] = url
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop("CASTOR_STORE", None)
            else:
                os.environ["CASTOR_STORE"] = previous


def level_1() -> None:
    title("Level 1: a human approves every destructive call")
    demo_agent.reset()
    castor(*RUN, "--pid", "level1")
    say(
        "search ran at once: it is not destructive. The first delete_file suspended the run:",
        "its journal, budget and pending call are in the store, and this process could exit here.",
    )
    castor("approve", "level1", "--as", "alice")
    say(
        "The approved call ran through the kernel (budget, tool, journal) and the run resumed:",
        "the agent started again from its first line, step 0 came from the journal, and it",
        f"stopped at the next destructive call. So far {counts()}.",
    )
    castor("reject", "level1", "--reason", "old2.log is still in use", "--as", "alice")
    say(
        "The tool did not run: the agent received {'status': 'HITL_REJECTED', 'human_feedback': ...}",
        "as the call's answer, reported the file as kept, and went on to the next file.",
    )
    castor("modify", "level1", "--feedback", "archive old3.log instead", "--as", "alice")
    say(
        "The agent received HITL_MODIFIED with alice's feedback instead of a deletion; the run completed.",
        f"Only the approved call touched anything: {counts()}.",
    )


def level_2(url: str) -> None:
    title("Level 2: speculative, full speed, review after")
    demo_agent.reset()
    castor(*RUN, "--speculative", "--pid", "level2")
    say(
        f"No suspension: every step ran ({counts()}). Each destructive step was",
        "flagged at execution time with needs_review and a reason; scan() lists the flagged",
        "steps for a human to review.",
    )
    summary = scan(Castor(store=url).load("level1"))
    decided = ", ".join(f"step {s.index}" for s in summary.human_decided)
    say(
        "Steps a human already decided are told apart, never flagged. scan() of the Level 1 run:",
        f"Human-decided: {len(summary.human_decided)} ({decided}), Flagged: {summary.flagged_count}.",
    )


def level_3(url: str) -> None:
    title("Level 3: time travel: fork at a step, replay the past, re-run the rest")
    demo_agent.reset()
    castor("fork", "level2", "--at-step", "2")
    fork = Castor(store=url).load("level2::fork-2")
    parent = Castor(store=url).load("level2")
    say(
        "Steps 0-1 (search and the first delete) came from level2's journal, shared and not copied:",
        f"nothing re-ran for them. Steps 2-3 re-executed; the tools counted it: {counts()}.",
        f"The fork was charged only its own steps plus the shared ones: api used {fork.budget_used('api'):g}"
        f" (the parent used {parent.budget_used('api'):g}), not twice the shared steps.",
    )


def level_4(url: str) -> None:
    title("Model calls: a syscall each, charged in tokens, replayed for free")
    import asyncio

    demo_agent.reset()
    model = demo_agent.triage_model()
    kernel = Castor(
        tools=[demo_agent.search, demo_agent.delete_file], destructive=["delete_file"], llm=model,
        budgets={"tokens": 2000}, store=url,
    )
    print("\n$ python: Castor(llm=castor.llm.Scripted(...), budgets={'tokens': 2000}).run(triage, speculative=True)")
    cp = asyncio.run(kernel.run(demo_agent.triage, pid="level4", speculative=True))
    used = cp.budget_used("tokens")
    say(
        "The agent (castor.cli.demo_agent:triage) asked the model which logs may go; the model answered",
        "with tool calls, which the agent sent through tool() like any call: validated, gated, journaled.",
        f"Each model call is one journaled step, charged the tokens the model reported: {used:g} tokens,",
        f"after reserving prompt + max_tokens before each call. The model was called {len(model.calls)}x.",
    )
    castor("inspect", "level4")
    calls_before = len(model.calls)
    fork = asyncio.run(kernel.run(demo_agent.triage, checkpoint=cp.fork(at_step=2), speculative=True))
    prefix = sum(r.charged.get("tokens", 0) for r in cp.syscall_log[:2])
    fork_used = fork.budget_used("tokens")
    say(
        f"Then forked at step 2, as run {fork.pid} (Python: cp.fork(at_step=2); the CLI: castor fork level4",
        "--at-step 2). Search and the model's decision (steps 0-1) came from the journal, so the model",
        f"was not asked again; the deletions and the summary re-ran: {len(model.calls) - calls_before} new model call.",
        f"Its usage is {fork_used:g} tokens: the shared model step's {prefix:g}, kept from the journal",
        f"(the replay charged nothing), plus {fork_used - prefix:g} for its own summary.",
    )
    asyncio.run(kernel.close())


def cmd_demo(args: argparse.Namespace) -> int:
    """Show the three protection levels on the README's clean-up task (a temporary store, not ./castor.db)."""
    from castor.cli._stores import given_stores

    named = [flag for flag, _ in given_stores(args)] + (["--config"] if getattr(args, "config", None) else [])
    if named:
        print(f"castor: warning: the demo runs on a temporary store of its own; {', '.join(named)} not used",
              file=sys.stderr)
    print(
        "Castor demo: one clean-up task, three levels of protection.\n"
        "The agent (castor.cli.demo_agent:cleanup) searches for old logs and deletes each file found\n"
        "(pretend deletions: nothing on disk is touched). It only calls castor.lib.tool(); the\n"
        "operator marks delete_file destructive and gives the run a budget of 10 api (1 per call).\n"
        "Each command below is the real CLI, run against a temporary SQLite store (not ./castor.db)."
    )
    with temporary_store() as url:
        level_1()
        level_2(url)
        level_3(url)
        level_4(url)
    print(f"\n{RULE}\nDone. Try it on your own files: castor run --help")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register demo."""
    demo = subparsers.add_parser("demo", help="show the three protection levels", description=cmd_demo.__doc__)
    demo.set_defaults(handler=cmd_demo)
