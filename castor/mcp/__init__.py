"""The MCP gateway: any MCP client's tool calls go through Castor (``castor mcp``).

Each MCP session is a Castor run (``castor.mcp.session``); the gateway's state without MCP is in
``castor.mcp.gateway``, the MCP server in ``castor.mcp.server``, the transports in
``castor.mcp.transport`` and the command in ``castor.mcp.cli``. Only ``server`` and ``transport`` import
the MCP SDK (the ``castor-kernel[mcp]`` extra), so this package imports without it.
"""
