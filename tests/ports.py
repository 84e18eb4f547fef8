"""Ports for the servers tests start (redis-servers, Sentinels, gateways, metrics endpoints).

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` comes from the ephemeral range, which every
outgoing connection of every process draws its local port from too: closed again, it could be a client's
local port (or another test's server) a moment later, before the server meant for it binds. So a free port
is drawn at random below the ephemeral range, where no connection is given one, and checked free."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_FALLBACK_START = 32768  # Linux's default start of the ephemeral range


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_START


def free_port(also: int = 0) -> int:
    """A TCP port nobody listens on right now, outside the range outgoing connections draw from (the
    kernel's own choice, where that range leaves too little room below it). With ``also``, the port that
    far above it is free and outside that range as well (a Redis cluster node's bus: port + 10000)."""
    top = _ephemeral_start() - also
    for _ in range(200):
        port = random.randrange(max(1024, top - 12000), top)
        if all(_bindable(p) for p in {port, port + also}):
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
