"""``castor deadletters``: list a fleet's dead letters per pool (a table escaping what a forger chose, or
JSON) and purge them, against a real Redis."""

from __future__ import annotations

import json

import redis
from castor.fleet.workers._deadletter import MAX_LETTERS, DeadLetters, letter

from castor.backends.redis import keys

from .conftest import Cli


def test_dead_letters_are_listed_per_pool_and_purged(cli: Cli, redis_url: str, redis_prefix: str) -> None:
    web, fs = DeadLetters(redis_url, redis_prefix, "web"), DeadLetters(redis_url, redis_prefix, "fs")
    web.record(letter("the body is a str, not [args, kwargs, embed]", b'"just a string"',
                      {"id": "t1", "task": "castor.tool.search\x1b[2J"}, "application/json"))
    fs.record(letter("no authorization token", b"{}", {"id": "t2", "task": "castor.tool.rm", "castor_run": "r\n1"}))
    where = ("--redis", redis_url, "--prefix", redis_prefix)

    shown = cli("deadletters", *where)
    assert shown.code == 0, shown.err
    assert "castor.tool.search\\x1b[2J" in shown.out and "\x1b" not in shown.out  # escaped, never raw
    assert "r\\n1" in shown.out and "just a string" not in shown.out
    assert "fs: 1, web: 1" in shown.out
    assert "castor.tool.rm" in shown.out

    # A homoglyph and an invisible character in a forged name are escaped, not shown as a real task's.
    web.record(letter("no authorization token", b"[]", {"id": "t3", "task": "castor.tool.\u0441earch\u200b"}))
    forged = cli("deadletters", "--pool", "web", *where)
    assert "castor.tool.\\u0441earch\\u200b" in forged.out and "\u0441" not in forged.out, forged.out

    data = json.loads(cli("deadletters", "--pool", "web", "--json", *where).out)
    assert data["counts"] == {"web": 2}
    entry = data["letters"][-1]
    assert entry["size"] == 15 and len(entry["sha256"]) == 64 and entry["pool"] == "web"

    assert cli("deadletters", "purge", *where).code == 1  # which pool?
    purged = cli("deadletters", "purge", "--pool", "web", *where)
    assert purged.code == 0 and "purged 2 dead letters of pool 'web'" in purged.out
    assert json.loads(cli("deadletters", "--json", *where).out)["counts"] == {"fs": 1}
    assert "purged 1 dead letter of every pool" in cli("deadletters", "purge", "--all", *where).out
    assert cli("deadletters", *where).out.strip() == "no dead letters"


def test_a_pools_list_keeps_only_the_newest(redis_url: str, redis_prefix: str) -> None:
    letters = DeadLetters(redis_url, redis_prefix, "web")
    for i in range(MAX_LETTERS + 5):
        letters.record(letter(f"bad {i}", b"x"))
    client = redis.Redis.from_url(redis_url)
    try:
        key = keys.dead_letters(redis_prefix, "web")
        assert client.llen(key) == MAX_LETTERS
        assert json.loads(client.lindex(key, 0))["reason"] == f"bad {MAX_LETTERS + 4}"  # type: ignore[arg-type]
    finally:
        client.close()
