"""``castor mcp`` refuses what would be unsafe or cannot work, in one line, before it serves anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from castor.cli import main
from castor.errors import ConfigError
from castor.mcp.cli import main as castor_mcp
from castor.mcp.transport import check_http, is_loopback

TOOLS = str(Path(__file__).with_name("mcp_tools.py"))


def test_http_off_loopback_without_a_token_refuses_to_start(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["mcp", "--tool", f"{TOOLS}:add", "--transport", "http", "--host", "0.0.0.0",
                 "--db", str(tmp_path / "g.db")])
    assert code == 1
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 is not loopback" in err and "bearer token" in err
    assert not (tmp_path / "g.db").exists()  # refused before anything was opened


def test_token_rules() -> None:
    check_http("127.0.0.1", None)
    check_http("::1", None)
    check_http("10.0.0.5", "a-long-enough-token-123")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        check_http("127.0.0.1", "short")
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and not is_loopback("example.org")


def test_no_tools_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no castor.toml here
    assert main(["mcp", "--db", str(tmp_path / "g.db")]) == 1
    assert "castor mcp serves no tool" in capsys.readouterr().err


def test_a_tool_may_not_take_the_gateways_prefix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    module = tmp_path / "t.py"
    module.write_text("def castor_status() -> str:\n    return 'mine'\n")
    assert main(["mcp", "--tool", f"{module}:castor_status", "--db", str(tmp_path / "g.db")]) == 1
    assert "names starting with 'castor_' are the gateway's own" in capsys.readouterr().err


def test_console_script_is_castor_mcp(capsys: pytest.CaptureFixture[str]) -> None:
    assert castor_mcp(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--transport {stdio,http}" in out and "--client-may-decide" in out and "--dry-run" in out


async def test_castor_approvals_lists_a_waiting_mcp_call_in_a_sqlite_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp import Client

    from castor.kernel import Castor
    from castor.mcp.gateway import Gateway
    from castor.mcp.server import build_server
    from castor.mcp.session import Options
    from tests.mcp.mcp_tools import append_line

    monkeypatch.setenv("MCP_TEST_LOG", str(tmp_path / "log"))
    db = tmp_path / "g.db"
    kernel = Castor(tools=[append_line], destructive=["append_line"], store=f"sqlite:///{db}", structured_results=True)
    gateway = Gateway(kernel, Options(approval_timeout=0.1), default_pid="listed")
    async with Client(build_server(gateway)) as client:
        await client.call_tool("append_line", {"text": "waits"})
    await gateway.close()
    capsys.readouterr()
    assert await _approvals(["approvals", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "listed" in out and "append_line" in out and '"text": "waits"' in out
    from castor.cli._render import inspect_lines

    shown = "\n".join(inspect_lines(await Castor(store=f"sqlite:///{db}").aload("listed")))
    assert "Spec:   none (an MCP gateway session: a client's next call with its pid goes on with it)" in shown


async def _approvals(argv: list[str]) -> int:
    """``castor approvals`` in this loop (``main`` runs its own)."""
    from castor.cli import build_parser
    from castor.cli._fleet_views import approvals

    return await approvals(build_parser().parse_args(argv))


async def test_the_gateways_kernel_has_a_metrics_stage_only_with_metrics_port(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    from castor.cli import build_parser
    from castor.kernel.chain import replay
    from castor.mcp.cli import build_gateway
    from castor.metrics._kernel import KernelMetrics

    base = ["mcp", "--tool", f"{TOOLS}:add", "--db", str(tmp_path / "g.db")]
    for extra, first in (([], replay), (["--metrics-port", "0"], KernelMetrics)):
        gateway = build_gateway(build_parser().parse_args([*base, *extra]))
        try:
            stage = gateway.kernel.services.chain.stage  # the chain's outermost stage
            assert stage is first if first is replay else isinstance(stage, first), extra
        finally:
            await gateway.close()
