"""kombu's and Celery's internals Castor relies on (``castor.fleet.workers._broker_loss``'s patch, the key names in
``castor.fleet.kombu_keys``, the worker's event dispatcher): a change fails here, not in a fleet; and on a channel whose
connection is gone, the patched restore/ack/reject do what they promise."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kombu
from castor.fleet.workers._broker_loss import KOMBU_TESTED, patch_restore_unacked
from kombu.transport import redis as transport

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def test_the_installed_kombu_is_one_the_patch_was_written_for() -> None:
    low, high = KOMBU_TESTED
    assert low <= _version(kombu.__version__) < high, (
        f"kombu {kombu.__version__} is outside {KOMBU_TESTED}: check workers/_broker_loss.py against it"
    )
    pins = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["celery"]
    assert f"kombu>={low[0]}.{low[1]},<{high[0]}" in pins  # the package cannot install a kombu it was not written for


def test_the_wrapped_methods_keep_the_signatures_the_patch_calls() -> None:
    patch_restore_unacked()
    expected = {
        "restore_unacked": ["self", "client"],
        "ack": ["self", "delivery_tag"],
        "reject": ["self", "delivery_tag", "requeue"],
    }
    for name, parameters in expected.items():
        original = inspect.unwrap(getattr(transport.QoS, name))
        assert list(inspect.signature(original).parameters) == parameters, name
    assert getattr(transport.QoS, "_castor_restore_patched", False)


def test_the_channel_internals_the_lean_publishers_read_keep_their_signatures() -> None:
    from celery.events.dispatcher import EventDispatcher

    from castor.fleet.kombu_keys import is_redis_channel

    assert list(inspect.signature(transport.Channel._q_for_pri).parameters) == ["self", "queue", "pri"]
    assert list(inspect.signature(transport.Channel._get_publish_topics).parameters) == [
        "self", "exchange", "routing_key",
    ]
    assert "global_keyprefix" in transport.Channel.from_transport_options
    assert is_redis_channel(transport.Channel) and not is_redis_channel(object())
    # the worker's LeanEventDispatcher overrides it, passing the rest through
    publish = list(inspect.signature(EventDispatcher._publish).parameters)
    assert publish[:4] == ["self", "event", "producer", "routing_key"]


def _orphan_qos() -> Any:
    """A Redis QoS whose channel lost its connection (kombu dropped the transport's client)."""
    qos = transport.QoS(SimpleNamespace(connection=SimpleNamespace(client=None), do_restore=False))
    qos._delivered["tag-1"] = "message"  # the attribute the patch counts in its warning
    return qos


def test_on_a_lost_connection_restore_leaves_the_messages_and_ack_forgets_them() -> None:
    patch_restore_unacked()
    qos = _orphan_qos()
    assert qos.restore_unacked() is None  # kombu's own would raise AttributeError on the missing client
    assert "tag-1" in qos._delivered  # left to the broker's unacked set, not restored now
    qos.ack("tag-1")  # kombu's own would reach for the missing client; forgotten here (dropped at the next flush)
    assert "tag-1" in qos._dirty
    qos = _orphan_qos()
    qos.reject("tag-1", requeue=True)
    assert "tag-1" in qos._dirty
