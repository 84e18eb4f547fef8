"""Journal contract: write-once records, contiguous history, forks that share a prefix."""

from __future__ import annotations

import pytest

from castor import JournalConflictError
from castor.checkpoint import StepFailure, SyscallRecord
from castor.seams import Backend


def rec(i: int, **extra: object) -> SyscallRecord:
    return SyscallRecord(request={"tool_name": "t", "arguments": {"i": i}}, response={"value": i}, **extra)


async def test_append_get_history(backend: Backend) -> None:
    j = backend.journal
    for i in range(3):
        await j.append("r1", i, rec(i, charged={"api": 1.0}))
    assert await j.length("r1") == 3
    assert await j.get("r1", 1) == rec(1, charged={"api": 1.0})
    assert [r.response["value"] for r in await j.history("r1")] == [0, 1, 2]
    assert await j.get("r1", 3) is None
    assert await j.history("unknown") == []
    assert await j.length("unknown") == 0


async def test_records_are_write_once(backend: Backend) -> None:
    await backend.journal.append("r1", 0, rec(0))
    with pytest.raises(JournalConflictError):
        await backend.journal.append("r1", 0, rec(99))
    assert (await backend.journal.get("r1", 0)) == rec(0)


async def test_history_stops_at_a_hole(backend: Backend) -> None:
    await backend.journal.append("r1", 0, rec(0))
    await backend.journal.append("r1", 2, rec(2))
    assert len(await backend.journal.history("r1")) == 1
    assert await backend.journal.length("r1") == 1


async def test_fork_shares_the_prefix(backend: Backend) -> None:
    j = backend.journal
    for i in range(5):
        await j.append("parent", i, rec(i))
    await j.fork("parent", "child", 3)
    assert await j.length("child") == 3
    assert [r.response["value"] for r in await j.history("child")] == [0, 1, 2]
    with pytest.raises(JournalConflictError):
        await j.append("child", 2, rec(42))
    await j.append("child", 3, rec(30))
    assert [r.response["value"] for r in await j.history("child")] == [0, 1, 2, 30]
    assert (await j.get("child", 1)) == rec(1)
    assert (await j.get("child", 4)) is None
    assert [r.response["value"] for r in await j.history("parent")] == [0, 1, 2, 3, 4]


async def test_fork_of_a_fork(backend: Backend) -> None:
    j = backend.journal
    for i in range(4):
        await j.append("a", i, rec(i))
    await j.fork("a", "b", 2)
    await j.append("b", 2, rec(20))
    await j.fork("b", "c", 3)
    await j.append("c", 3, rec(300))
    assert [r.response["value"] for r in await j.history("c")] == [0, 1, 20, 300]


async def test_failures_are_kept_for_audit(backend: Backend) -> None:
    j = backend.journal
    await j.record_failure("r1", StepFailure(step=0, tool_name="t", error_type="OSError", message="disk"))
    await j.record_failure("r1", StepFailure(step=0, tool_name="t", error_type="OSError", message="again"))
    assert [f.message for f in await j.failures("r1")] == ["disk", "again"]
    assert await j.history("r1") == []  # failures are not cached steps


async def test_delete(backend: Backend) -> None:
    await backend.journal.append("r1", 0, rec(0))
    await backend.journal.delete("r1")
    assert await backend.journal.history("r1") == []
    await backend.journal.append("r1", 0, rec(7))  # the position is free again


def test_store_urls() -> None:
    from castor import ConfigError
    from castor.backends import open_backend

    with pytest.raises(ConfigError, match="unknown store"):
        open_backend("postgres://x")
    with pytest.raises(ConfigError, match="bogus"):
        open_backend("sqlite:///:memory:?bogus=1")
    with pytest.raises(ConfigError, match="synchronous"):
        open_backend("sqlite:///:memory:?synchronous=sometimes")
    assert open_backend("sqlite:///:memory:?synchronous=OFF").url == "sqlite:///:memory:"
    assert open_backend(None).url == "memory://"


async def test_one_claim_per_step_until_it_is_journaled(backend: Backend) -> None:
    """A step that must run at most once is claimed atomically with a look at the journal."""
    j = backend.journal
    assert (await j.claim("r", 0, 0, "a", 30)).state == "claimed"
    assert (await j.claim("r", 0, 0, "a", 30)).state == "claimed"  # the holder asking again
    held = await j.claim("r", 0, 0, "b", 30)
    assert (held.state, held.holder, held.attempt, held.expired) == ("held", "a", 0, False)
    assert await j.renew_claim("r", 0, "a", 30)
    assert not await j.renew_claim("r", 0, "b", 30)
    await j.append("r", 0, rec(0))
    assert (await j.claim("r", 0, 0, "b", 30)).state == "journaled"
    await j.release_claim("r", 0, "b")  # not b's: nothing happens
    await j.release_claim("r", 0, "a")
    assert (await j.claim("r", 0, 0, "b", 30)).state == "journaled"


async def test_a_released_claim_is_free_and_an_expired_one_is_reported(backend: Backend) -> None:
    j = backend.journal
    await j.claim("r", 1, 0, "a", 30)
    await j.release_claim("r", 1, "a")  # the call failed: the next one to reach the step runs it
    assert (await j.claim("r", 1, 0, "b", 0)).state == "claimed"
    lapsed = await j.claim("r", 1, 0, "c", 30)
    assert (lapsed.state, lapsed.holder, lapsed.expired) == ("held", "b", True)  # b's lease ran out
    assert (await j.claim("r", 1, 0, "c", 30, replace="x")).state == "held"
    assert (await j.claim("r", 1, 0, "c", 30, replace="b")).state == "claimed"  # taken over
    assert not await j.renew_claim("r", 1, "b", 30)


async def test_a_lapsed_only_takeover_leaves_a_holder_that_renewed_its_lease(backend: Backend) -> None:
    """A holder seen lapsed may be a live process that stalled: taken over with ``lapsed_only``, it keeps the
    claim if it renewed since (the store judges in the claim itself), and loses it once it has lapsed."""
    j = backend.journal
    assert (await j.claim("r", -1, 0, "a", 0)).state == "claimed"
    seen = await j.claim("r", -1, 0, "b", 30)
    assert (seen.state, seen.holder, seen.expired) == ("held", "a", True)
    assert await j.renew_claim("r", -1, "a", 30)  # a woke up and renewed before b's takeover landed
    kept = await j.claim("r", -1, 0, "b", 30, replace="a", lapsed_only=True)
    assert (kept.state, kept.holder, kept.expired) == ("held", "a", False)
    assert await j.renew_claim("r", -1, "a", 0)  # a's lease runs out again, and it stays silent
    assert (await j.claim("r", -1, 0, "b", 30, replace="a", lapsed_only=True)).state == "claimed"
    assert not await j.renew_claim("r", -1, "a", 30)  # a learns it lost the claim


async def test_a_later_round_claims_over_an_earlier_one(backend: Backend) -> None:
    """A step re-approved after it went in doubt (round 1) is claimed over round 0's claim, never the reverse."""
    j = backend.journal
    await j.claim("r", 2, 0, "a", 30)
    assert (await j.claim("r", 2, 1, "b", 30)).state == "claimed"
    stale = await j.claim("r", 2, 0, "c", 30)
    assert (stale.state, stale.holder, stale.attempt) == ("held", "b", 1)
    await j.delete("r")
    assert (await j.claim("r", 2, 0, "c", 30)).state == "claimed"
