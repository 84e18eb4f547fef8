"""The coordinator's cheap paths give the same bytes and answers as the plain ones: templated task
messages equal ``json.dumps``, cheap ids stay unique, replies parse from every client's shape, and the
reply reader notices a server that stopped answering without a timeout scope of its own."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest

from castor.backends.redis.resp import RespConnection
from castor.executors._replies import ReplyReader
from castor.executors._template import Template, quote, slot, value
from castor.fleet.records import unique_ids
from castor.fleet.wire import OK, Reply, parse_reply
from tests.redis_support import silent_port

_AWKWARD = [
    "", "plain", 'quo"te', "back\\slash", "\\u0000x\\u0000", "été ✓", "\x00nul\x00", "a\x00x\x00b", "\x00x",
    "line\nbreak", "\U0001f600",
]


@pytest.mark.parametrize("text", _AWKWARD)
def test_a_rendered_template_is_what_json_dumps_writes(text: str) -> None:
    document = {"a": slot("x"), "b": [slot("y"), None, 1.5], "c": {"again": slot("x"), "const": text}, "d": True}
    template = Template(document, ["x", "y"])
    for x, y in [(text, 7), ("other", None), (text, {"k": [text]}), (3.25, "s")]:
        expected = json.dumps({"a": x, "b": [y, None, 1.5], "c": {"again": x, "const": text}, "d": True})
        assert template.render([value(x), value(y)]) == expected
    assert quote(text) == json.dumps(text)


def test_a_template_refuses_a_slot_it_does_not_hold_and_a_name_that_is_no_identifier() -> None:
    with pytest.raises(ValueError, match=r"\['y'\]"):
        Template({"a": slot("x")}, ["x", "y"])
    with pytest.raises(ValueError, match="identifier"):
        slot("a|b")


def test_cheap_ids_are_unique_across_sources_and_uuid_shaped_unless_compact() -> None:
    sources = [unique_ids() for _ in range(4)]
    ids = [source() for source in sources for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(str(uuid.UUID(i)) == i for i in ids[:10])
    compact = unique_ids(compact=True)
    short = {compact() for _ in range(1000)}
    assert len(short) == 1000 and all(len(i) <= 16 and int(i, 16) >= 0 for i in short)


@pytest.mark.parametrize("shape", ["str list", "bytes list", "str map", "bytes map"])
def test_a_reply_parses_from_every_client_shape(shape: str) -> None:
    reply = Reply("run:3", 1, OK, {"n": [1, "été"]}, journaled=True)
    fields = reply.fields()
    flat: list[str] = [item for pair in fields.items() for item in pair]
    given = {
        "str list": flat,
        "bytes list": [item.encode() for item in flat],
        "str map": fields,
        "bytes map": {k.encode(): v.encode() for k, v in fields.items()},
    }[shape]
    assert parse_reply(given) == reply


async def test_the_reader_gives_up_on_a_silent_server_and_reads_again(caplog: pytest.LogCaptureFixture) -> None:
    with silent_port() as port:
        conn = RespConnection(f"redis://127.0.0.1:{port}/0", reply_timeout=0.4)
        reader = ReplyReader(conn, "castor-test:replies")
        with caplog.at_level(logging.WARNING, logger="castor.replies"):
            future = reader.expect("run:1", 0, deadline=30.0)
            for _ in range(40):  # the connection's watch fails the read after 0.4-0.5 s
                await asyncio.sleep(0.05)
                if "reading again" in caplog.text:
                    break
        assert "no reply within 0.4s" in caplog.text and "reading again" in caplog.text
        assert not future.done()  # the reader tries again; the caller still waits for its reply
        reader._closed = True
        await reader.close()
