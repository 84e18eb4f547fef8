"""Another MCP server's tools as Castor tools: name the server, and give it where a tool goes
(``--tool examples/mcp/upstream.py:files``, a config's ``[tools] import``, ``Castor(tools=[files])``).

Castor starts the server (over stdio) once per process, lists its tools with their schemas, and makes
every call a syscall: ``delete_file``, which the server annotates as destructive, waits for a human.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from castor.mcp.upstream import McpServer

# A server started over stdio gets a safe few of this process's variables (PATH, HOME, ...), never its
# secrets: what it needs is given in env.
files = McpServer.stdio(sys.executable, str(Path(__file__).with_name("files_server.py")), name="files",
                        env={"FILES_ROOT": os.environ.get("FILES_ROOT", "/tmp/castor-files")})
