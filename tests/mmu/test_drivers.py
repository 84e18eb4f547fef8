"""One contract for every memory driver: in memory, SQLite (a temporary file), Redis (this test's prefix)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from castor import ConfigError
from castor.mmu import InMemoryDriver, Page, SQLiteDriver
from castor.mmu.driver import KeywordRecency, LegacyDriver, MemoryDriver, as_driver, rank


def page(step: int, index: int, content: str, role: str = "user") -> Page:
    return Page(f"{step}.{index}", step, role, content, len(content) // 3, {"role": role, "content": content})


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def driver(request: pytest.FixtureRequest, tmp_path: object) -> AsyncIterator[MemoryDriver]:
    if request.param == "memory":
        yield InMemoryDriver()
    elif request.param == "sqlite":
        made = SQLiteDriver(f"{tmp_path}/memory.db")
        yield made
        made.close()
    else:
        from castor.mmu.drivers.redis import RedisDriver

        url = request.getfixturevalue("redis_url")
        redis_made = RedisDriver(url, prefix=request.getfixturevalue("redis_prefix"))
        yield redis_made
        await redis_made.close()


async def test_pages_are_kept_per_run_oldest_first_and_once(driver: MemoryDriver) -> None:
    await driver.store_pages("run-a", [page(7, 0, "later"), page(3, 1, "second"), page(3, 0, "first")])
    await driver.store_pages("run-a", [page(3, 0, "first")])  # a replayed page-out stores it again
    await driver.store_pages("run-b", [page(1, 0, "other run")])
    assert [p.id for p in await driver.load_pages("run-a")] == ["3.0", "3.1", "7.0"]
    assert (await driver.load_pages("run-a"))[0] == page(3, 0, "first")
    assert [p.content for p in await driver.load_pages("run-b")] == ["other run"]
    await driver.drop("run-a")
    assert await driver.load_pages("run-a") == []
    assert len(await driver.load_pages("run-b")) == 1


async def test_find_ranks_by_keyword_then_recency(driver: MemoryDriver) -> None:
    await driver.store_pages("run", [
        page(1, 0, "the battery of the drone lasts two hours"),
        page(2, 0, "lunch was pasta"),
        page(5, 0, "battery swap planned for friday"),
        page(6, 0, "battery battery battery chemistry notes"),
    ])
    hits = await driver.find("run", "Battery", 10)
    assert [h.page.id for h in hits] == ["6.0", "5.0", "1.0"]  # more mentions first, then the newer page
    assert all(h.score > 0 for h in hits)
    assert [h.page.id for h in await driver.find("run", "drone", 10)] == ["1.0"]
    assert await driver.find("run", "quantum", 10) == []
    assert len(await driver.find("run", "battery", 2)) == 2
    assert await driver.find("nobody", "battery", 5) == []
    assert [h.page.id for h in await driver.find("run", "", 2)] == ["6.0", "5.0"]  # no words: the newest


def test_a_rare_word_outweighs_a_common_one() -> None:
    pages = [page(1, 0, "report about budget"), page(2, 0, "report report"), page(3, 0, "report on weather")]
    best = rank("budget report", pages, 1, KeywordRecency())
    assert best[0].page.id == "1.0"


class Legacy:
    """A castor-kernel 0.5.1 SemanticMemoryDriver: text in, text out."""

    def __init__(self) -> None:
        self.got: list[tuple[list[dict[str, object]], str]] = []

    async def ingest(self, messages: list[dict[str, object]], pid: str) -> str:
        self.got.append((messages, pid))
        return "ok"

    async def search(self, query: str, pid: str) -> str:
        return f"{pid}: {query}"


async def test_a_051_driver_is_adapted_and_anything_else_refused() -> None:
    legacy = Legacy()
    adapted = as_driver(legacy)
    assert isinstance(adapted, LegacyDriver)
    await adapted.store_pages("p", [page(1, 0, "hello")])
    assert legacy.got == [([{"role": "user", "content": "hello"}], "p")]
    assert [h.page.content for h in await adapted.find("p", "q", 3)] == ["p: q"]
    with pytest.raises(ConfigError, match="MMU driver must be"):
        as_driver(object())


async def test_the_in_memory_driver_speaks_051s_ingest_and_search() -> None:
    mem = InMemoryDriver()
    await mem.ingest([{"role": "user", "content": "battery tech breakthroughs"}], pid="agent-1")
    assert "battery" in (await mem.search("BATTERY", pid="agent-1")).lower()
    assert "no matching" in (await mem.search("battery", pid="agent-2")).lower()


class Trigrams:
    """A stand-in for an embedding search: cosine of character trigram counts (a ``Scorer``)."""

    def score(self, query: str, pages: list[Page]) -> list[float]:
        def grams(text: str) -> dict[str, int]:
            text = text.lower()
            out: dict[str, int] = {}
            for i in range(len(text) - 2):
                out[text[i:i + 3]] = out.get(text[i:i + 3], 0) + 1
            return out

        q = grams(query)
        norm_q = sum(v * v for v in q.values()) ** 0.5
        scores = []
        for page in pages:
            g = grams(page.content)
            dot = sum(v * g.get(k, 0) for k, v in q.items())
            scores.append(dot / (norm_q * sum(v * v for v in g.values()) ** 0.5 or 1.0))
        return scores


async def test_another_scorer_plugs_in_where_an_embedding_search_would() -> None:
    pages = [page(1, 0, "batteries of drones"), page(2, 0, "pasta for lunch")]
    by_trigrams, by_keywords = InMemoryDriver(scorer=Trigrams()), InMemoryDriver()
    for driver in (by_trigrams, by_keywords):
        await driver.store_pages("run", pages)
    hits = await by_trigrams.find("run", "battery", 5)
    assert hits and hits[0].page.id == "1.0"
    assert await by_keywords.find("run", "battery", 5) == []  # no word in common


async def test_redis_pages_expire_after_the_ttl(redis_url: str, redis_prefix: str) -> None:
    from castor.mmu.drivers.redis import RedisDriver

    with pytest.raises(ConfigError, match="ttl must be a positive number"):
        RedisDriver(redis_url, prefix=redis_prefix, ttl=0)
    driver = RedisDriver(redis_url, prefix=redis_prefix, ttl=60)
    await driver.store_pages("run", [page(1, 0, "kept a minute")])
    left = await driver.conn.command("pttl", driver.key("run"))
    assert 0 < left <= 60_000
    await driver.close()
