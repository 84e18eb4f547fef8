"""``castor run``, ``resume`` and ``fork``: drive a run to its next stop and say where it stopped.

Every command rebuilds the kernel from the import specs the run recorded (``cp.spec``), so a run
started in one process is resumed, approved or forked from any other. A run that suspends is already
persisted; the command prints the exact commands that decide it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from castor._ids import is_child_agent
from castor.checkpoint import AgentCheckpoint
from castor.cli import _specs
from castor.cli._args import pid_option
from castor.cli._celery_cmds import add_executor_options, celery_executor, config_tools, uses_celery
from castor.cli._common import bare_kernel, command, open_store
from castor.cli._escape import shown
from castor.cli._progress import add_progress, step_counter
from castor.cli._render import MCP_AGENT, finished_lines, result_lines
from castor.cli._stores import settings_of
from castor.errors import (
    BackendUnavailable,
    CastorError,
    ConfigError,
    InDoubtError,
    InvalidPidError,
    RunExistsError,
    UnknownToolError,
)
from castor.kernel import Castor, runner
from castor.kernel.forks import refuse_leftover, store_fork
from castor.policies import auto_approve, auto_reject, interactive
from castor.seams import Backend

HITL_MODES = ("suspend", "interactive", "approve-all", "reject-all", "auto")
POLICIES: dict[str, Callable[[AgentCheckpoint], Any]] = {
    "approve-all": auto_approve, "auto": auto_approve, "reject-all": auto_reject, "interactive": interactive,
}
POLICY_USERS = {"approve-all": "approve-all", "auto": "approve-all", "reject-all": "reject-all"}


class RunFailed(Exception):
    """The agent (or a tool it called) raised; the run is persisted ``FAILED``."""


def out(*lines: str) -> None:
    """Print lines of text on stdout, each on one line: what they hold from the store is escaped (a pid with
    a newline draws no fake row). JSON goes through ``out_json``."""
    for line in lines:
        print(shown(line))


def out_json(text: str) -> None:
    """Print JSON (``json.dumps`` escapes control characters itself) on stdout."""
    print(text)


def parse_budgets(items: list[str] | None) -> dict[str, float]:
    """``['api=50', 'gpu=2.5']`` → ``{'api': 50.0, 'gpu': 2.5}``; a clear error for anything else (exit 1,
    as castor-kernel 0.5.1 exits on a bad ``--budget``, where a bad ``--pid`` is a usage error, exit 2)."""
    budgets: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"bad --budget {item!r}: expected key=value, e.g. api=50")
        try:
            amount = float(value)
        except ValueError:
            raise ConfigError(f"budget {key!r} must be a number, got {value!r}") from None
        if not math.isfinite(amount) or amount < 0:  # inf: no budget is an absent one, and Redis adds no inf
            raise ConfigError(f"budget {key!r} must be a finite non-negative number, got {value!r}")
        budgets[key] = amount
    return budgets


@asynccontextmanager
async def opened(args: argparse.Namespace, *, existing: bool = True) -> AsyncIterator[Backend]:
    """The command's store, closed when the command ends; ``existing`` (all but a command that starts a
    run or a scope): an SQLite file that is not there is read as empty, not made (``open_store``)."""
    backend = open_store(args, existing=existing)
    try:
        yield backend
    finally:
        await backend.close()


async def load_run(backend: Backend, pid: str) -> AgentCheckpoint:
    """The run ``pid`` with its journal (``RunNotFoundError`` if the store has none)."""
    return await bare_kernel(backend).aload(pid)


def kernel_of(loaded: _specs.Loaded, backend: Backend, args: argparse.Namespace) -> Castor:
    """The kernel that drives the run: its tools in this process, or, with ``--executor celery``, on
    their worker pools (the run's state on the config's Redis, where the workers journal)."""
    settings = settings_of(args)
    llm = settings.llm
    if not uses_celery(args):  # model calls made here: the config's [llm] provider, with this process's key
        from castor.llm.fleet import local_provider

        return loaded.kernel(backend, llm=llm, provider=local_provider(settings))
    executor, destructive = celery_executor(args, backend)
    return loaded.kernel(backend, executor, destructive, llm=llm)




def rebuild(cp: AgentCheckpoint, what: str) -> _specs.Loaded:
    """The agent and tools a run recorded, imported again."""
    if cp.spec is None and cp.agent_function_name == MCP_AGENT:
        raise ConfigError(
            f"run {cp.pid!r} is an MCP gateway session: it goes on when a client opens it again (castor mcp "
            f"... --pid {cp.pid}, or an HTTP client's Mcp-Session-Id); castor approve decides its waiting call"
        )
    if cp.spec is None and is_child_agent(cp.pid, cp.parent_pid, cp.agent_function_name):
        verb = "fork it with castor fork" if what == "fork" else "resume it with castor resume"
        raise ConfigError(f"run {cp.pid!r} is a child agent of run {cp.parent_pid!r}, which drives it: {verb} "
                          f"{cp.parent_pid}")
    if cp.spec is None:
        raise ConfigError(
            f"run {cp.pid!r} records no agent or tool specs (a host program saved it with save()); "
            f"the host program {what}s it"
        )
    loaded, changed = _specs.reload(cp.spec)
    if changed:
        print(
            f"castor: warning: the source of run {cp.pid!r} changed since it started ({', '.join(changed)}); "
            "replayed steps are checked against the journal and a different call stops the run",
            file=sys.stderr,
        )
    return loaded


async def advance(
    kernel: Castor, agent: Callable[..., Any], cp: AgentCheckpoint, hitl: str, **options: Any
) -> AgentCheckpoint:
    """Run to the next stop; under an approval policy other than ``suspend``, answer and go on."""
    cp = await kernel.run(agent, checkpoint=cp, **options)
    policy = POLICIES.get(hitl)
    while cp.is_suspended and policy is not None:
        step, tool = cp.pending_step, cp.pending_tool
        try:
            decision, feedback = await policy(cp)
        except EOFError:
            raise ConfigError(f"no answer on standard input; run {cp.pid} stays suspended at step {step}") from None
        except InDoubtError as exc:  # approve-all: a step that may have acted waits for a human
            print(f"castor: ({hitl}) {exc}", file=sys.stderr)
            return cp
        await kernel.decide(cp, decision, feedback, by=POLICY_USERS.get(hitl))
        out(f"({hitl}) {decision} step {step}: {tool}")
        cp = await kernel.run(agent, checkpoint=cp)
    return cp


async def go(
    kernel: Castor, agent: Callable[..., Any], cp: AgentCheckpoint, args: argparse.Namespace, **options: Any
) -> int:
    """Advance the run, print where it stopped; errors of the agent become one-line CLI errors."""
    try:
        async with step_counter(kernel.backend, cp.pid, args):
            cp = await advance(kernel, agent, cp, getattr(args, "hitl", "suspend"), **options)
    except UnknownToolError as exc:
        out(*result_lines(cp))
        raise ConfigError(
            f"the agent called {exc}; register it with --tool FILE.py:FUNC (run {cp.pid} is {cp.status})"
        ) from exc
    except BackendUnavailable:
        raise  # the store is away: nothing was saved, and the run's status here would say nothing true
    except CastorError:
        out(*result_lines(cp))
        raise
    except KeyboardInterrupt:
        out(*result_lines(cp), f"Interrupted. Resume with: {command(args, 'resume', cp.pid)}")
        return 130
    except Exception as exc:
        out(*result_lines(cp))
        raise RunFailed(f"run {cp.pid} failed: {type(exc).__name__}: {exc}") from exc
    out(*finished_lines(cp))
    if cp.is_suspended:
        out(
            "The run is saved and waits for a decision:",
            f"  {command(args, 'approve', cp.pid)}",
            f"  {command(args, 'reject', cp.pid)} --reason \"...\"",
            f"  {command(args, 'modify', cp.pid)} --feedback \"...\"",
        )
        if kernel.backend.url.startswith("memory"):
            print("castor: warning: the memory:// store ends with this command; use --db PATH to decide later",
                  file=sys.stderr)
    return 0


async def cmd_run(args: argparse.Namespace) -> int:
    """Start a run of AGENT with the given tools and budgets (with ``--executor celery``, the tools of
    ``--config`` unless --tool names others, and its ``[budgets]`` unless --budget gives some)."""
    budgets = parse_budgets(args.budget)
    if uses_celery(args) and not budgets:  # a fleet run: the fleet's default budgets, as its coordinators'
        budgets = {name: float(limit) for name, limit in settings_of(args).budgets.items()}
    tools = args.tools or (config_tools(args) if uses_celery(args) else [])
    loaded = _specs.load(args.agent, tools, args.destructive or [])
    async with opened(args, existing=False) as backend:
        kernel = kernel_of(loaded, backend, args)
        try:
            cp = AgentCheckpoint(
                pid=args.pid or runner.new_pid(loaded.agent),
                status="RUNNING",
                agent_function_name=runner.agent_name(loaded.agent),
                capabilities={},
                speculative=args.speculative,
                spec=loaded.spec,
            )
            scopes = args.scopes or []
            await _check_scopes(backend, scopes, args)
            if args.pid:  # a pid the user chose: stored once, so of two `castor run --pid` at once one runs it
                await _create(backend, cp, args)
            return await go(
                kernel, loaded.agent, cp, args, budgets=budgets, speculative=args.speculative, scopes=scopes
            )
        finally:
            await kernel.executor.close()


async def _create(backend: Backend, cp: AgentCheckpoint, args: argparse.Namespace) -> None:
    """Store the new run's header once (``RunStore.create``): ``RunExistsError`` with how to continue it. A pid
    whose journal holds steps but no run (a fork whose forker stopped before storing it) is refused too: a new
    run under it would be served those steps as its own."""
    await refuse_leftover(backend, cp.pid)
    try:
        await backend.runs.create(cp)
    except RunExistsError:
        raise RunExistsError(cp.pid, f"continue it with: {command(args, 'resume', cp.pid)}") from None


async def _check_scopes(backend: Backend, scopes: list[str], args: argparse.Namespace) -> None:
    for scope in scopes:
        if not await backend.budgets.read_scope(scope):
            create = command(args, "budget", "set", scope, "api=1000")
            raise ConfigError(f"budget scope {scope!r} does not exist; create it with: {create}")


async def cmd_resume(args: argparse.Namespace) -> int:
    """Run a stored run again from its first line; journaled steps come from the cache."""
    budgets = parse_budgets(args.budget) or None
    async with opened(args) as backend:
        cp = await load_run(backend, args.pid)
        if cp.status == "COMPLETED":
            out(*finished_lines(cp), f"Run {cp.pid} completed already; nothing to resume.")
            return 0
        loaded = rebuild(cp, "resume")
        kernel = kernel_of(loaded, backend, args)
        try:
            return await go(kernel, loaded.agent, cp, args, budgets=budgets)
        finally:
            await kernel.executor.close()


async def cmd_fork(args: argparse.Namespace) -> int:
    """A new run from the first N steps of a stored run, replayed from the cache and continued."""
    async with opened(args) as backend:
        cp = await load_run(backend, args.pid)
        try:
            forked = cp.fork(at_step=args.at_step)
        except InvalidPidError:
            raise
        except ValueError as exc:
            raise ConfigError(f"cannot fork {cp.pid!r}: {exc}") from exc
        if args.new_pid:
            forked.pid = args.new_pid
        loaded = rebuild(cp, "fork")
        resume = command(args, "resume", forked.pid)
        hint = f"fork under another name with --pid NEW; if its forker stopped before driving it: {resume}"
        # Stored once, whoever else forks it at this step (the console, another castor fork): only the
        # process that stored it drives it.
        await store_fork(backend, cp.pid, forked, args.at_step, hint)
        kernel = kernel_of(loaded, backend, args)
        out(f"Forked: {cp.pid} at step {args.at_step} -> {forked.pid}")
        try:
            code = await go(kernel, loaded.agent, forked, args, speculative=True if args.speculative else None)
        finally:
            await kernel.executor.close()
        replayed = min(args.at_step, len(forked.syscall_log))
        out(
            f"Replayed from cache: {replayed} step{'' if replayed == 1 else 's'} (not validated, charged or executed "
            "again)",
            f"Executed:            {loaded.executed} tool call{'' if loaded.executed == 1 else 's'}",
        )
        return code


def add_hitl(parser: argparse.ArgumentParser) -> None:
    """``--hitl``: what happens when the run reaches a destructive call."""
    parser.add_argument(
        "--hitl", choices=HITL_MODES, default="suspend",
        help="suspend (default: persist the run and print how to decide), interactive (ask here), "
             "approve-all / auto (a step in doubt, which may have acted already, still waits for a human), "
             "reject-all",
    )


def add_commands(subparsers: Any) -> None:
    """Register run, resume and fork."""
    from castor.cli._args import add_run_options

    run = subparsers.add_parser("run", help="run an agent", description=cmd_run.__doc__)
    add_run_options(run)
    add_hitl(run)
    add_executor_options(run)
    add_progress(run)
    run.set_defaults(handler=cmd_run)

    resume = subparsers.add_parser("resume", help="resume a stored run", description=cmd_resume.__doc__)
    resume.add_argument("pid", metavar="PID")
    resume.add_argument("--budget", action="append", metavar="K=V", help="set a new limit (a top-up)")
    add_hitl(resume)
    add_executor_options(resume)
    add_progress(resume)
    resume.set_defaults(handler=cmd_resume)

    fork = subparsers.add_parser("fork", help="fork a run at a step", description=cmd_fork.__doc__)
    fork.add_argument("pid", metavar="PID")
    fork.add_argument("--at-step", type=int, required=True, metavar="N", help="keep steps 0..N-1 of the run")
    fork.add_argument("--pid", dest="new_pid", metavar="NEW", type=pid_option,
                      help="the new run's pid (default PID::fork-N)")
    fork.add_argument("--speculative", action="store_true", help="run the fork speculatively")
    add_hitl(fork)
    add_executor_options(fork)
    add_progress(fork)
    fork.set_defaults(handler=cmd_fork)
