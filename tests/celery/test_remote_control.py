"""Celery's remote control, forged by anyone who can write to the broker, against real workers.

A control message is unsigned. Before, a broadcast ``shutdown`` made every worker of the fleet exit 0 (a
supervisor that restarts on failure left them down), ``cancel_consumer`` left a pool up and looking healthy
while it took no task, and ``revoke(..., terminate=True)`` killed the child running a tool mid-call. Now a
worker answers the questions (``ping``, ``active_queues``: ``castor worker --ping``, Flower's pages) and
refuses every order, on one logged line (``castor.fleet.workers._control``). The fleet is the test's own: a
worker the attack stopped would fail the rest of the session. ``test_amqp.py`` runs the same on RabbitMQ.
"""

from __future__ import annotations

import logging

import pytest

from castor import Castor

from .checks import refuses_control_orders
from .conftest import Fleet


async def test_forged_control_orders_neither_stop_a_pool_nor_a_call(own_fleet: Fleet, own_kernel: Castor) -> None:
    await refuses_control_orders(own_fleet, own_kernel)


def test_a_worker_answers_questions_and_refuses_orders_and_unknown_names() -> None:
    from castor.fleet.workers._control import ANSWERED, answering_only
    from celery.worker import control

    table = answering_only(control.Panel.data)
    assert set(table) == ANSWERED & set(control.Panel.data)
    assert table["ping"] is control.Panel.data["ping"]
    for name in ("shutdown", "revoke", "cancel_consumer", "hello", "pool_restart", "no such\x1b[31m"):
        refusal = table[name](None, anything=1)
        assert refusal["error"].startswith("refused"), name


def test_flowers_enable_events_is_answered_quietly_and_a_repeated_refusal_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Flower asks every worker to ``enable_events`` every few seconds: a refusal logged each time was most
    of a worker's log. Events are on from the start, so it is answered as done (Celery's handler is not run),
    while ``disable_events``, which would blind Flower, is refused; a refusal that repeats is logged once."""
    from castor.fleet.workers import _control
    from celery.worker import control

    table = _control.answering_only(control.Panel.data)
    _control._said.clear()  # what this process refused before
    with caplog.at_level(logging.WARNING, logger="castor.worker"):
        for _ in range(5):
            assert table["enable_events"](None) == {"ok": "task events are on"}
            assert table["heartbeat"](None) == {"ok": "task events are on"}
            assert table["disable_events"](None)["error"].startswith("refused")
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "'disable_events'" in refusals[0]
