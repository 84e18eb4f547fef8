"""A Redis that writes nothing to disk as it acknowledges is named at start, in one warning.

Castor's promises rest on what Redis acknowledged: a step's claim, a journal record, a lease, a waiting
approval. A Redis without its append-only file (``appendonly no``, Redis's own default) keeps them in
memory and, at best, in a snapshot taken every few minutes: if it crashes or restarts, what it acknowledged
since is gone, and a call whose claim is lost so can run again. Development Redis servers often run so, and
a user's first fleet may: so every process that drives runs or runs tools reads ``INFO persistence`` once
and warns, saying what to set. Not refused: the risk is the operator's to take, and ``config/redis.conf``
sets ``appendonly yes``.
"""

from __future__ import annotations

from castor.backends.redis.eviction import parse_info


def durability_warning(info: object, where: str) -> str | None:
    """The warning ``INFO persistence`` (``info``) calls for: None when the append-only file is on, or when
    ``info`` does not say (a managed Redis may hide it)."""
    fields = parse_info(info)
    if fields.get("aof_enabled", "1") != "0":
        return None
    return (f"Redis at {where} logs no write to disk as it acknowledges it (appendonly no): if it crashes or "
            "restarts, the claims, journal records and approvals written since its last snapshot (if it takes any) "
            "are lost, and a call whose claim is lost can run again; set appendonly yes (config/redis.conf does)")
