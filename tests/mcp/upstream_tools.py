"""The test server's tools as a tool file names them (``--tool upstream_tools.py:files``, a config's
``[tools] import``): its calls are appended to ``$UPSTREAM_LOG``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from castor.mcp.upstream import McpServer

files = McpServer.stdio(
    sys.executable, str(Path(__file__).with_name("upstream_server.py")), os.environ.get("UPSTREAM_LOG", os.devnull),
    exclude=["mixed"],
)
