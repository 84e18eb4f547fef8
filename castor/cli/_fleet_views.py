"""What the fleet commands do and print: one coroutine per command, tables for people, JSON for tools."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from castor._imports import ImportSpec, parse_spec
from castor._redact import masked
from castor._terminal import stored_run
from castor.cli._escape import shown
from castor.cli._render import inspect_lines, ps_line
from castor.errors import ConfigError, InvalidPidError, RunNotFoundError
from castor.kernel.approvals import default_user
from castor.seams import Backend

if TYPE_CHECKING:  # the fleet client needs redis: imported when a fleet command runs, not for `castor --help`
    from castor.fleet.client import FleetClient


@asynccontextmanager
async def fleet(args: argparse.Namespace) -> AsyncIterator[tuple[Backend, FleetClient]]:
    """The fleet's backend and client for one command, closed after it."""
    from castor.backends.redis import redis_backend
    from castor.cli._stores import target

    url, prefix, options = target(args)
    backend = redis_backend(url, prefix=prefix, **options)
    from castor.fleet.client import FleetClient

    client = FleetClient(url, prefix)
    try:
        yield backend, client
    finally:
        await client.close()
        await backend.close()


def fleet_settings(args: argparse.Namespace) -> Any:
    """The fleet's settings (its pools, queues and broker): the config's, given or found, with the Redis
    this command reads."""
    from castor.cli._stores import config_path, target
    from castor.settings import Settings, find_config, load_settings

    url, prefix, _ = target(args)
    config = config_path(args) or find_config()  # its pools and queues, even where it names no store
    settings = load_settings(config) if config else Settings()
    return settings.on_redis(url, prefix)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned columns; what a cell holds from the store is escaped (no fake rows)."""
    cells = [[str(c) for c in header], *[[("-" if c is None else shown(c)) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def age(since: float) -> str:
    """``42s``, ``7m``, ``3h``, ``2d``."""
    s = max(time.time() - since, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print JSON with ``--json``, else the text."""
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


# --- commands -------------------------------------------------------------------------------------


async def coordinator(args: argparse.Namespace) -> int:
    """``castor coordinator``: run until SIGTERM."""
    from castor.cli import _observe
    from castor.cli._stores import config_path, target
    from castor.fleet.scheduler.coordinator import CoordinatorConfig
    from castor.fleet.scheduler.main import executor_factory, serve
    from castor.settings import Settings, load_settings
    from castor.settings._model import retention_of

    url, prefix, options = target(args)
    config_file, settings = config_path(args), None
    if config_file:
        settings = load_settings(config_file)
        if (url, prefix) != (settings.redis.url, settings.redis.prefix):  # --redis: its executor's too
            settings = settings.on_redis(url, prefix)
        settings.check_task_age(retention_of(options))  # the store's options may be --redis's, not the config's
    kind = args.executor if args.executor != "auto" else ("celery" if settings is not None else "local")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.executor == "auto" and kind == "local":
        await _no_pools_to_bypass(url, prefix)
    logging.getLogger("castor.coordinator").info(
        "executor: %s", f"celery (the pools of {config_file})" if kind == "celery" else "local (tools run in this "
        "process)")
    max_takeovers = args.max_takeovers if args.max_takeovers is not None else (
        (settings or Settings()).coordinator.max_takeovers
    )
    config = CoordinatorConfig(
        url=url, prefix=prefix, name=args.name or "", concurrency=args.concurrency, lease=args.lease,
        grace=args.grace, allow_code_change=args.allow_code_change, max_takeovers=max_takeovers,
        store_options=options, context_budget=int(args.context_budget), allowed=allowed_code(settings),
    )
    secret = settings.security.secret if settings else None
    if kind == "celery" and secret:
        await _leave_secret_proof(url, prefix, secret, config.name or "a coordinator")
    await serve(config, executor=executor_factory(kind, settings), secret=secret,
                setup=_observe.coordinator_setup(args, settings if kind == "celery" else None))
    return 0


async def _leave_secret_proof(url: str, prefix: str, secret: str, name: str) -> None:
    """Leave in Redis a proof of the secret this coordinator signs with (``FleetClient.leave_secret_proof``),
    so that a worker started with another one says so at once; say so here if the previous one differs."""
    from castor.fleet.client import FleetClient
    from castor.fleet.sealing import secret_proof

    client = FleetClient(url, prefix)
    try:
        if await client.leave_secret_proof(secret_proof(secret), name):
            logging.getLogger("castor.coordinator").warning(
                "the coordinator that started before this one signed with another [security] secret: workers "
                "that hold it refuse this one's tasks, and those that hold this one refuse its (rotating? "
                "restart every worker and coordinator with the new one)")
    finally:
        await client.close()


async def _no_pools_to_bypass(url: str, prefix: str) -> None:
    """A coordinator that found no config runs tools in its own process: refused on a Redis where worker
    pools live (it would run their tools here, past their workers, secret and pool isolation), unless
    ``--executor local`` says that is meant."""
    from castor.fleet.client import FleetClient

    client = FleetClient(url, prefix)
    try:
        pools = await client.live_pools()
    finally:
        await client.close()
    if pools:
        raise ConfigError(
            f"worker pools live on this Redis ({', '.join(pools)}), and this coordinator found no config: it "
            "would run their tools in its own process; give the fleet's --config (or set CASTOR_CONFIG), or "
            "--executor local if that is meant"
        )


def allowed_code(settings: Any) -> Any:
    """The agents and tools a coordinator of ``settings`` imports (None: any a run names, with a warning
    when a config is given: it could list them)."""
    from castor.fleet.scheduler._allowed import AllowedCode

    if settings is None:
        return None
    allowed = AllowedCode.of(settings)
    if allowed is None:
        logging.getLogger("castor.coordinator").warning(
            "%s lists no [coordinator] agents: this coordinator imports whatever agent and tools a run names "
            "(any process that can write the fleet's Redis can name one); list the agents it runs there",
            settings.source,
        )
    return allowed


async def submit(args: argparse.Namespace) -> int:
    """``castor submit``: store the run and queue it; print its pid."""
    from castor.cli._runs import parse_budgets
    from castor.cli._stores import settings_of
    from castor.fleet.client import new_run
    from castor.fleet.scheduler._allowed import AllowedCode

    settings = settings_of(args)  # the fleet's config, given or found: its tools and budgets are the defaults
    tools = [one for spec in args.tools or settings.tools.imports for one in single_specs(spec)]
    budgets = parse_budgets(args.budget) or {name: float(limit) for name, limit in settings.budgets.items()}
    cp = new_run(
        agent_spec(args.agent), tools, destructive=args.destructive or [], budgets=budgets,
        speculative=args.speculative, scopes=args.scopes or [], pid=args.pid,
    )
    if getattr(args, "config", None):  # given: the coordinators' config (one found may be another's)
        allowed = AllowedCode.of(settings)
        if allowed is not None and cp.spec is not None:
            allowed.check(cp.spec)  # the coordinators of this config would set the run aside
        _warn_other_functions(tools, settings.tools.imports)
    async with fleet(args) as (backend, client):
        pid = await client.submit(backend, cp)  # the store refuses a pid it holds (RunExistsError), atomically
    emit(args, {"pid": pid}, pid)
    return 0


def _warn_other_functions(tools: Sequence[str], served: Sequence[str]) -> None:
    """Say when a tool the run names is, by its spec, another function than the one of the same name the
    config's pools serve (``[tools] import``): the workers would refuse its calls (``castor._code.
    function_name``, which they compare, is the file's stem and the function's name, as here)."""

    def by_name(specs: Sequence[str]) -> dict[str, str]:
        named: dict[str, str] = {}
        for spec in specs:
            parsed = parse_spec(spec, "tool")
            stem = Path(parsed.target).stem if parsed.is_file else parsed.target.rpartition(".")[2]
            named.update({name: f"{stem}:{name}" for name in parsed.names})
        return named

    pools = by_name(served)
    for name, function in by_name(tools).items():
        if name in pools and pools[name] != function:
            print(f"castor: warning: this run's {name} is {function}, the config's [tools] import names {pools[name]}: "
                  "workers that serve that one refuse its calls (workers started with --tools naming this run's "
                  "tools serve them; or submit the run with theirs)", file=sys.stderr)


def single_specs(spec: str) -> list[str]:
    """``file.py:a,b`` as ``[/abs/file.py:a, /abs/file.py:b]``: a coordinator loads one function per spec."""
    return [str(one) for one in parse_spec(spec, "tool").absolute().each()]


def agent_spec(spec: str) -> str:
    """The agent's spec with an absolute path and its function named (``file.py`` means its agent or main)."""
    from castor.cli._specs import load_agent

    parsed = parse_spec(spec, "agent").absolute()
    if not parsed.names:
        parsed = ImportSpec(parsed.target, (load_agent(spec).__name__,))
    return str(parsed)


async def ps(args: argparse.Namespace) -> int:
    """``castor ps``: runs with their owner coordinator, status, age and pending step (the lines of the
    embedded ``ps``, with where each run is in the fleet)."""
    from castor.cli._live import live_summaries
    from castor.cli._waiting import waiting_runs

    async with fleet(args) as (backend, client):
        runs = await live_summaries(backend, await backend.runs.list(status=args.status, limit=args.limit))
        state = await client.fleet_state([r.pid for r in runs])
        waiting = await waiting_runs(client, fleet_settings(args), [r.pid for r in runs if r.status == "RUNNING"])
        queued = [r.pid for r in runs if state[r.pid]["queued"] and not state[r.pid]["owner"]]
        if queued and not await client.coordinators():  # nobody will take them: said, as a pool nobody serves
            waiting.update({pid: "no live coordinator" for pid in queued if pid not in waiting})
    for pid, what in waiting.items():
        state[pid]["waiting"] = what
    rows: list[dict[str, Any]] = []
    for r in runs:
        s = state[r.pid]
        status = "QUEUED" if s["queued"] and not s["owner"] and r.status == "RUNNING" else r.status
        pending = f"{r.pending_tool}@{s['parked'] if s['parked'] is not None else r.steps}" if r.pending_tool else None
        rows.append({
            "pid": r.pid, "status": status, "owner": s["owner"], "age": round(time.time() - r.created_at, 3),
            "steps": r.steps, "pending": pending, "parked": s["parked"] is not None, "agent": r.agent,
            "waiting": s.get("waiting"), "driven_by": s["driven_by"],
        })
    # each line escaped on its own: what it holds from the store draws no fake row
    emit(args, rows, "\n".join(shown(ps_line(r, state[r.pid])) for r in runs) if runs else "No agents found.")
    return 0


async def inspect(args: argparse.Namespace) -> int:
    """``castor inspect PID``: the embedded ``inspect``, with where the run is in the fleet."""
    from castor.cli._waiting import waiting_runs

    async with fleet(args) as (backend, client):
        header = await stored_run(backend, args.pid)  # its budgets' usage as its journal says, while it runs too
        if header is None:
            raise RunNotFoundError(args.pid)
        state = (await client.fleet_state([args.pid]))[args.pid]
        if header.status == "RUNNING":
            state["waiting"] = (await waiting_runs(client, fleet_settings(args), [args.pid])).get(args.pid)
    data = header.model_dump(mode="json")
    data["fleet"] = state
    emit(args, data, "\n".join(shown(line) for line in inspect_lines(header, state)))
    return 0


async def approvals(args: argparse.Namespace) -> int:
    """``castor approvals``: what waits for a human, oldest first."""
    from castor.cli._stores import given_stores, store_of

    if given_stores(args) and store_of(args) is None:  # --db / sqlite:// / memory://: that store's waiting calls
        from castor.cli._common import open_store

        embedded = open_store(args, existing=True)
        try:
            pending = await embedded.approvals.pending()
        finally:
            await embedded.close()
    else:
        async with fleet(args) as (backend, _):
            pending = await backend.approvals.pending()
        if not pending:
            await _local_waiting_hint(args)
    rows: list[dict[str, Any]] = [
        {"pid": p.run_id, "step": p.step, "tool": p.tool_name, "arguments": p.arguments,
         "waiting": round(time.time() - p.created_at, 3), "reason": p.reason}
        for p in pending
    ]
    text = table(
        [(r["pid"], r["step"], r["tool"], json.dumps(masked(r["arguments"]), default=str)[:60],
          age(time.time() - r["waiting"]), r["reason"] or None) for r in rows],
        ("PID", "STEP", "TOOL", "ARGUMENTS", "WAITING", "REASON"),
    )
    emit(args, rows, text)
    return 0


async def _local_waiting_hint(args: argparse.Namespace) -> None:
    """Nothing waits in the fleet this command read by default: say so on stderr if ``./castor.db`` (what
    ``castor run`` and ``ps`` use by default) holds calls that wait, so an embedded run's are not missed."""
    import os

    from castor.backends.sqlite import sqlite_backend
    from castor.cli._stores import DEFAULT_DB, STORE_ENV, given_stores, target

    if given_stores(args) or getattr(args, "config", None) or any(os.environ.get(n) for n in STORE_ENV):
        return  # a store named: what it holds is the answer (a config found is only the default's)
    if not os.path.isfile(DEFAULT_DB):
        return
    local = sqlite_backend(DEFAULT_DB)
    try:
        waiting = len(await local.approvals.pending())
    finally:
        await local.close()
    if waiting:
        url, prefix, _ = target(args)
        print(f"castor: nothing waits in the fleet's Redis ({url}, prefix {prefix}); ./{DEFAULT_DB} has {waiting} "
              f"call(s) waiting: castor approvals --db {DEFAULT_DB}", file=sys.stderr)


_PAST = {"approve": "approved", "reject": "rejected", "modify": "modified"}


async def decide(args: argparse.Namespace) -> int:
    """``castor approve`` / ``reject`` / ``modify``: record the decision; a coordinator resumes the run."""
    reason = getattr(args, "reason", "") or getattr(args, "feedback", "") or ""
    async with fleet(args) as (backend, client):
        decision = await client.decide(backend, args.pid, args.outcome, args.by or default_user(), reason)
    done = f"step {decision.step} {_PAST[decision.outcome]} by {decision.by}"
    print(shown(f"{args.pid}: {done}; a coordinator resumes the run"))
    return 0


async def cancel(args: argparse.Namespace) -> int:
    """``castor cancel PID``: in the fleet, or in the local store ``--db`` / ``--store sqlite://`` names."""
    from castor.cli._stores import given_stores, store_of

    if given_stores(args) and store_of(args) is None:
        from castor.cli._runs import opened
        from castor.kernel.cancel import cancel_stored

        async with opened(args) as backend:
            outcome = await cancel_stored(backend, args.pid, args.by or default_user())
        print(shown(f"{args.pid}: {outcome}"))
        return 0
    args.looked_in_fleet = True  # a pid not found was not looked for in ./castor.db (castor._stores.not_found_hint)
    async with fleet(args) as (backend, client):
        outcome = await client.cancel(backend, args.pid, args.by or default_user())
    print(shown(f"{args.pid}: {outcome}"))
    return 0


async def held_by_fleet(args: argparse.Namespace, command: str) -> bool:
    """Whether ``command`` on ``args.pid`` is the fleet's: a decision on a run the fleet holds, a fork of a
    run submitted to the fleet."""
    async with fleet(args) as (_, client):
        if command == "fork":
            return await client.was_submitted(args.pid)
        return await client.is_fleet_run(args.pid)


async def resume(args: argparse.Namespace) -> int:
    """``castor resume`` of a run the fleet holds (queued, leased or parked): refused. Its coordinators
    drive it under their lease, which an embedded drive does not see: both would drive it, and a plain call
    would run in each."""
    async with fleet(args) as (_, client):
        state = (await client.fleet_state([args.pid]))[args.pid]
    if state["owner"]:
        where = f"coordinator {state['owner']} drives it"
    elif state["parked"] is not None:
        where = f"it waits for a decision on step {state['parked']}"
    else:
        where = "it is queued for a coordinator"
    raise ConfigError(
        f"run {args.pid!r} is the fleet's ({where}): its coordinators drive it, not `castor resume`; "
        f"`castor approve {args.pid}` decides a waiting call, `castor cancel {args.pid}` stops it (a cancelled "
        "run can then be resumed here)"
    )


async def fork(args: argparse.Namespace) -> int:
    """``castor fork PID --at-step N``: the fork shares the first N steps and is submitted to the fleet."""
    async with fleet(args) as (backend, client):
        header = await backend.runs.load(args.pid)
        if header is None:
            raise RunNotFoundError(args.pid)
        header.syscall_log = await backend.journal.history(args.pid)
        try:
            child = header.fork(at_step=args.at_step)
        except InvalidPidError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if getattr(args, "new_pid", None):
            child.pid = args.new_pid
        if getattr(args, "speculative", False):
            child.speculative = True
        pid = await client.submit_fork(backend, header.pid, child, args.at_step)  # once, whoever else forks
    emit(args, {"pid": pid, "parent": args.pid, "at_step": args.at_step}, shown(pid))
    return 0


async def coordinators(args: argparse.Namespace) -> int:
    """``castor coordinators``: live coordinators with their load."""
    async with fleet(args) as (_, client):
        rows = await client.coordinators()
        counts = await client.counts()
    if args.alive is not None:
        alive = any(r["name"] == args.alive for r in rows)
        print(shown(f"{args.alive}: {'alive' if alive else 'not registered'}"))
        return 0 if alive else 1
    text = table(
        [(r["name"], r["host"], r["pid"], f"{r['driving']}/{r['concurrency']}", r["taken"], r["state"],
          f"{r['seen_ago']:.1f}s") for r in rows],
        ("NAME", "HOST", "PID", "DRIVING", "TAKEN", "STATE", "SEEN"),
    )
    text += f"\nqueued {counts['queued']}, driven {counts['leased']}, parked {counts['parked']}"
    emit(args, {"coordinators": rows, **counts}, text)
    return 0
