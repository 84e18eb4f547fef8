"""``castor mcp`` (and the ``castor-mcp`` console script): serve Castor tools to MCP clients.

The tools come from ``--tool FILE:FUNC`` (repeatable), else the config's ``[tools] import``; the store is
the CLI's (``--db``, ``--store``, ``--redis``, ``./castor.db``), so ``castor ps``, ``inspect``,
``approvals`` and ``approve`` see every MCP session as a run. With ``--executor celery`` the tools run on
the fleet's worker pools and the runs live in the config's Redis. ``--metrics-port`` serves Prometheus
metrics of the gateway's syscalls (its kernel gets a coordinator's metrics interceptor: ``castor.metrics``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from castor.errors import ConfigError

TOKEN_ENV = "CASTOR_MCP_TOKEN"


def add_commands(subparsers: Any) -> None:
    """Register ``castor mcp``."""
    from castor.cli._args import DestructiveAction, pid_option
    from castor.cli._celery_cmds import add_executor_options
    from castor.cli._observe import metrics_options

    parser = subparsers.add_parser("mcp", help="serve the tools to MCP clients, every call through Castor",
                                   description=cmd_mcp.__doc__)
    parser.add_argument("--tool", dest="tools", action="append", metavar="SPEC",
                        help="a tool: FILE.py:FUNC, MODULE:FUNC or FILE.py:F1,F2 (repeatable; default: the "
                             "config's [tools] import)")
    parser.add_argument("--destructive", nargs="?", const="", action=DestructiveAction, metavar="NAME",
                        help="mark a tool destructive: by NAME, or bare right after its --tool (repeatable)")
    parser.add_argument("--budget", action="append", metavar="K=V", help="each session's budget, e.g. api=50")
    parser.add_argument("--scope", dest="scopes", action="append", metavar="SCOPE",
                        help="a shared budget scope every session also draws from (repeatable)")
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio",
                        help="stdio (default: the client starts the gateway) or streamable HTTP at /mcp")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP: the address to bind (default 127.0.0.1)")
    # Not 8765, the console's: the two often run on one machine.
    parser.add_argument("--port", type=_port, default=8766, help="HTTP: the port (default 8766)")
    parser.add_argument("--token", default=None,
                        help=f"HTTP: the bearer token clients must send; required off loopback (prefer ${TOKEN_ENV}: "
                             "a command line is visible to other users)")
    parser.add_argument("--pid", type=pid_option, metavar="PID",
                        help="the run of the stdio session (default mcp-<random>); the same pid after a restart "
                             "continues that run")
    parser.add_argument("--approval-timeout", type=_seconds, default=3600.0, metavar="S",
                        help="how long a destructive call stays open waiting for a decision (default 3600)")
    parser.add_argument("--progress-every", type=_seconds, default=5.0, metavar="S",
                        help="seconds between progress notifications while a call waits (default 5)")
    parser.add_argument("--speculative", "--dry-run", dest="speculative", action="store_true",
                        help="never wait for a human: destructive calls run, flagged for review (kernel.scan)")
    parser.add_argument("--client-may-decide", action="store_true",
                        help="DEVELOPMENT ONLY: list a castor_decide tool, so the client can approve its own calls")
    add_executor_options(parser)
    metrics_options(parser, "mcp")
    parser.set_defaults(handler=cmd_mcp)


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be 1 to 65535, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 30 * 86400:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 30 days, got {text}")
    return value


def build_gateway(args: argparse.Namespace) -> Any:
    """The kernel (tools, store, executor, budgets) and the gateway over it, from the options."""
    from castor import _imports
    from castor.cli._celery_cmds import celery_executor, executor_flags
    from castor.cli._common import open_store, store_flags
    from castor.cli._stores import settings_of, uses_celery
    from castor.kernel import Castor
    from castor.mcp.gateway import Gateway, budgets_of
    from castor.mcp.session import Options

    settings = settings_of(args)
    specs = list(args.tools or settings.tools.imports)
    if not specs:
        raise ConfigError("castor mcp serves no tool: give --tool FILE.py:FUNC or [tools] import in --config")
    loaded = _imports.load_tools(specs, from_cwd=True)
    tools = [func for _, func in loaded]
    names = {name for name, _ in loaded}
    # The config's list covers the whole fleet's tools; the gateway may serve a few of them.
    destructive = {*(args.destructive or ()), *(settings.tools.destructive & names)}
    budgets = budgets_of(args.budget, settings.budgets)
    backend = open_store(args)
    executor = None
    if uses_celery(args):
        executor, marked = celery_executor(args, backend)
        destructive.update(marked)
    interceptors = []
    if getattr(args, "metrics_port", None) is not None:  # no metrics stage unless asked: it costs nothing then
        from castor.metrics.services import gateway_metrics

        interceptors.append(gateway_metrics(settings if uses_celery(args) else None))
    kernel = Castor(tools=tools, destructive=sorted(destructive), store=backend, executor=executor,
                    budgets=budgets, scopes=args.scopes or (), structured_results=True, interceptors=interceptors)
    flags = " ".join(part for part in (store_flags(args), executor_flags(args)) if part)
    options = Options(budgets=budgets, scopes=tuple(args.scopes or ()), speculative=args.speculative,
                      approval_timeout=args.approval_timeout, progress_every=args.progress_every, decide_flags=flags)
    pid = args.pid
    if pid is None and args.transport == "stdio":  # one connection, one session: one run for all its calls
        pid = f"mcp-{uuid.uuid4().hex[:12]}"
    return Gateway(kernel, options, default_pid=pid, client_may_decide=args.client_may_decide)


async def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve the tools over MCP (stdio or streamable HTTP). Each MCP session is a Castor run: every call is
    validated, charged, gated and journaled; a destructive call stays open until a human decides it with
    ``castor approve/reject/modify PID`` (``castor approvals`` lists them)."""
    from castor.mcp.transport import check_http, serve_http, serve_stdio

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)  # stdout is the stdio transport's
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.transport == "http":
        check_http(args.host, token)  # before anything is opened
    gateway = build_gateway(args)
    if args.metrics_port is not None:
        serve_metrics(args)
    if args.transport == "http":
        await serve_http(gateway, args.host, args.port, token)
    else:
        await serve_stdio(gateway)
    return 0


def serve_metrics(args: argparse.Namespace) -> None:
    """Serve ``/metrics`` (the kernel's interceptor counts into it), with the fleet's gauges when the tools
    run on the fleet's workers; says where on stderr (stdout is the stdio transport's)."""
    import castor.metrics
    from castor.cli._stores import settings_of, uses_celery

    fleet = settings_of(args) if uses_celery(args) else None
    port = castor.metrics.serve(args.metrics_port, args.metrics_host, fleet=fleet)
    print(f"castor mcp: metrics on http://{args.metrics_host}:{port}/metrics", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``castor-mcp`` console script: ``castor mcp`` with its options."""
    from castor.cli import main as castor_main

    return castor_main(["mcp", *(sys.argv[1:] if argv is None else argv)])
