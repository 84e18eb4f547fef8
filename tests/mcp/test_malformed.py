"""A client's malformed message gets JSON-RPC's error, and the gateway goes on serving: ``castor mcp`` in a
process of its own, spoken to line by line over stdio (the SDK's client would never send such lines), and
over streamable HTTP. Before ``castor.mcp.malformed``, the stdio gateway answered none of these lines."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError

from castor.mcp.malformed import INVALID_REQUEST, PARSE_ERROR, error_for
from tests.mcp.test_processes import TOKEN, free_port, gateway_args, http_process

pytestmark = pytest.mark.fleet  # starts the gateway's process

HELLO = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}


class RawStdio:
    """The gateway's stdin and stdout, a line at a time."""

    def __init__(self, db: Path, log: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *gateway_args(db)], cwd=db.parent, env={"MCP_TEST_LOG": str(log), "PATH": "/usr/bin"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def send(self, line: str | dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 20) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no answer within {timeout} s"
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def close(self) -> str:
        """Close its stdin (it stops) and return what it wrote on stderr."""
        _, stderr = self.proc.communicate(timeout=15)
        return stderr


MALFORMED = [
    ("this is not json", None, PARSE_ERROR, "Parse error: Invalid JSON"),
    ('{"jsonrpc": "2.0", "id": 7, "method": 5}', 7, INVALID_REQUEST, "Invalid Request: method:"),
    ('{"jsonrpc": "2.0", "id": "seven", "method": "tools/call", "params": 3}', "seven", INVALID_REQUEST, "params"),
    ("[" * 5000 + "]" * 5000, None, PARSE_ERROR, "recursion limit"),
    ('{"jsonrpc": "2.0", "id": 8, "method": "tools/list", "params": {"x": ' + "[" * 3000 + "]" * 3000 + "}}",
     None, PARSE_ERROR, "recursion limit"),
    ("[1, 2]", None, INVALID_REQUEST, "Invalid Request"),
    ('{"jsonrpc": "2.0", "id": 5}', 5, INVALID_REQUEST, "Invalid Request"),  # no method, result nor error
]


def test_a_malformed_line_over_stdio_gets_its_error_and_the_gateway_serves_on(tmp_path: Path) -> None:
    gateway = RawStdio(tmp_path / "gateway.db", tmp_path / "appended.log")
    try:
        gateway.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO})
        assert "result" in gateway.answer()
        gateway.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for line, rid, code, says in MALFORMED:
            gateway.send(line)
            answer = gateway.answer()
            assert answer["id"] == rid and answer["error"]["code"] == code, (line[:60], answer)
            assert says in answer["error"]["message"], answer
        gateway.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "add",
                                                                                  "arguments": {"a": 2, "b": 3}}})
        served = gateway.answer()
        assert served["id"] == 2 and served["result"]["content"][0]["text"] == "5", served
    finally:
        stderr = gateway.close()
    assert stderr.count("no JSON-RPC message: answered") == len(MALFORMED), stderr


def test_error_for_reads_the_id_of_the_top_level_object_only() -> None:
    from mcp_types import jsonrpc_message_adapter

    def read(line: str) -> Exception:
        with pytest.raises(ValidationError) as caught:
            jsonrpc_message_adapter.validate_json(line, by_name=False)
        return caught.value

    # An "id" inside the params of a message without one is not the message's.
    inner = error_for(read('{"jsonrpc": "2.0", "method": 4, "params": {"id": 9}}'))
    assert inner.id is None and inner.error.code == INVALID_REQUEST
    assert error_for(OSError("stream broke")).error.code == PARSE_ERROR
    long = error_for(read('{"jsonrpc": "2.0", "id": 3, "method": ' + json.dumps("x" * 10) + ', "params": 7}'))
    assert long.id == 3 and len(long.error.message) <= 500


def test_a_malformed_body_over_http_gets_a_parse_error(tmp_path: Path) -> None:
    with http_process(tmp_path / "gateway.db", tmp_path / "appended.log", free_port()) as url:
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json"}
        answer = httpx2.post(url, content="this is not json", headers=headers, timeout=20)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == PARSE_ERROR, answer.text
