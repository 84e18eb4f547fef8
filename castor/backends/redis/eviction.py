"""A Redis that may evict keys is refused.

Redis given a memory limit (``maxmemory``) and any policy but ``noeviction`` drops keys when it is full,
silently: a journal record, a step's claim, a coordinator's lease or a waiting approval could vanish, and a
call that must run at most once run again, or a decision be forgotten. With ``noeviction`` a full Redis
refuses writes instead, an error Castor reports and recovers from (``config/redis.conf`` sets it). So every
process that drives runs or runs tools (a run driven on a Redis store, a decision applied there, a
coordinator, a worker) reads ``INFO memory`` once and refuses to start on a Redis that may evict, unless
told it may (``allow_eviction``: then those promises hold only while Redis has memory to spare).
"""

from __future__ import annotations

from collections.abc import Mapping

from castor.errors import ConfigError

HOW = (
    "set maxmemory-policy noeviction (config/redis.conf does) or maxmemory 0; to run anyway, knowing that, "
    "add allow_eviction=1 to the store URL ([redis] allow_eviction = true in castor.toml)"
)


def parse_info(info: object) -> dict[str, str]:
    """``INFO``'s fields as redis-py parses them (a dict) or as Redis sends them (``key:value`` lines)."""
    if isinstance(info, Mapping):
        return {str(k): str(v) for k, v in info.items()}
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
    return {key: value.strip() for key, value in fields}


def eviction_risk(info: object) -> str | None:
    """What ``INFO memory`` says of eviction: None when Redis never evicts (no ``maxmemory``, or the policy
    ``noeviction``), or it does not say; else ``maxmemory <size> with maxmemory-policy <policy>``."""
    fields = parse_info(info)
    try:
        limit = int(fields.get("maxmemory", "0"))
    except ValueError:
        return None
    policy = fields.get("maxmemory_policy", "noeviction")
    if limit <= 0 or policy == "noeviction":
        return None
    return f"maxmemory {fields.get('maxmemory_human', limit)} with maxmemory-policy {policy}"


def refusal(where: str, risk: str) -> ConfigError:
    """The one-line error of a Redis that may evict Castor's keys."""
    return ConfigError(
        f"Redis at {where} may evict keys ({risk}): an evicted journal record, claim, lease or approval "
        f"can make a call run twice or a decision be lost; {HOW}"
    )


def check(info: object, where: str, *, allow: bool) -> None:
    """Raise ``refusal`` unless ``INFO memory`` (``info``) says Redis never evicts, or ``allow``."""
    risk = eviction_risk(info)
    if risk is not None and not allow:
        raise refusal(where, risk)
