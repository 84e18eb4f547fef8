"""The kernel's metrics interceptor: what it counts and times, and that a replayed step is counted too."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import generate_latest

from castor import Castor
from castor.lib import tool
from castor.metrics._instruments import Instruments
from castor.metrics._kernel import KernelMetrics


def echo(text: str) -> str:
    return text


def wipe(path: str) -> str:
    return f"wiped {path}"


def broken(text: str) -> str:
    raise RuntimeError("no")


async def calls() -> list[Any]:
    out = [await tool("echo", text="a"), await tool("echo", text=3)]  # the second: a validation error
    try:
        await tool("made_up_name_42", text="x")
    except Exception as exc:
        out.append(type(exc).__name__)
    try:
        await tool("broken", text="b")
    except Exception as exc:
        out.append(type(exc).__name__)
    return out


def sample(ins: Instruments, name: str, labels: dict[str, str]) -> float | None:
    return ins.registry.get_sample_value(name, labels)


async def test_live_calls_are_counted_by_tool_pool_and_outcome_and_timed() -> None:
    ins = Instruments()
    kernel = Castor(tools=[echo, broken], interceptors=[KernelMetrics(ins, lambda tool: f"pool-{tool}")])
    cp = await kernel.run(calls)
    assert cp.result[0] == "a" and cp.result[1]["status"] == "VALIDATION_ERROR"
    assert cp.result[2:] == ["UnknownToolError", "RuntimeError"]
    ok = {"tool": "echo", "pool": "pool-echo", "outcome": "ok"}
    assert sample(ins, "castor_syscalls_total", ok) == 1
    assert sample(ins, "castor_syscalls_total", {**ok, "outcome": "validation_error"}) == 1
    # A name no registry has is "unknown", never itself: agents choose tool names.
    assert sample(ins, "castor_syscalls_total", {"tool": "unknown", "pool": "unknown", "outcome": "error"}) == 1
    assert sample(ins, "castor_syscalls_total", {"tool": "broken", "pool": "pool-broken", "outcome": "error"}) == 1
    assert sample(ins, "castor_syscall_seconds_count", {"tool": "echo", "pool": "pool-echo"}) == 2
    assert b"made_up_name_42" not in generate_latest(ins.registry)


async def test_replayed_steps_are_counted_and_not_timed_as_live() -> None:
    ins = Instruments()

    async def two() -> list[str]:
        return [await tool("echo", text="a"), await tool("echo", text="b")]

    kernel = Castor(tools=[echo], interceptors=[KernelMetrics(ins)])
    cp = await kernel.run(two)
    resumed = await kernel.run(two, checkpoint=cp.fork(at_step=2))
    assert resumed.result == ["a", "b"]
    assert sample(ins, "castor_replayed_steps_total", {"tool": "echo"}) == 2
    assert sample(ins, "castor_syscalls_total", {"tool": "echo", "pool": "local", "outcome": "ok"}) == 2


async def test_a_budget_refusal_and_a_human_decision_are_outcomes_and_the_wait_is_timed() -> None:
    ins = Instruments()

    async def agent() -> list[Any]:
        return [await tool("wipe", path="/a"), await tool("wipe", path="/b")]

    kernel = Castor(tools=[wipe], destructive=["wipe"], interceptors=[KernelMetrics(ins)])
    cp = await kernel.run(agent, budgets={"wipe": 1})
    assert cp.pending_hitl is not None
    assert sample(ins, "castor_syscalls_total", {"tool": "wipe", "pool": "local", "outcome": "suspended"}) == 1
    await kernel.approve(cp, by="alice")
    cp = await kernel.run(agent, checkpoint=cp)
    assert cp.result[1]["status"] == "INSUFFICIENT_CAPABILITY"
    assert sample(ins, "castor_syscalls_total", {"tool": "wipe", "pool": "local", "outcome": "ok"}) == 1
    assert sample(ins, "castor_syscalls_total", {"tool": "wipe", "pool": "local", "outcome": "budget_denied"}) == 1
    assert sample(ins, "castor_approval_decision_seconds_count", {"tool": "wipe", "decision": "approve"}) == 1


async def test_a_kernel_without_the_interceptor_has_no_metrics_stage() -> None:
    from castor.kernel.chain import build_chain, replay

    assert build_chain().stage is replay  # type: ignore[attr-defined]
    metrics = KernelMetrics(Instruments())
    assert build_chain([metrics]).stage is metrics  # type: ignore[attr-defined]  # before replay


class LostWorker:
    """An executor whose worker is lost mid-call: the step is in doubt."""

    writes_journal = False

    async def execute(self, call: Any) -> Any:
        from castor.errors import InDoubtError

        raise InDoubtError(f"{call.tool_name} started and never finished")

    async def close(self) -> None:
        pass


async def test_a_step_left_in_doubt_is_counted() -> None:
    ins = Instruments()

    async def agent() -> Any:
        return await tool("echo", text="a")

    kernel = Castor(tools=[echo], executor=LostWorker(), interceptors=[KernelMetrics(ins, lambda tool: "web")])
    cp = await kernel.run(agent)
    assert cp.pending_hitl is not None  # in doubt: a human decides
    assert sample(ins, "castor_syscalls_total", {"tool": "echo", "pool": "web", "outcome": "in_doubt"}) == 1
    assert sample(ins, "castor_in_doubt_steps_total", {"tool": "echo", "pool": "web"}) == 1


async def test_leases_takeovers_and_quarantines_are_counted_from_the_lease_operation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    import castor.metrics
    from castor.metrics import fleet

    ins = Instruments()
    monkeypatch.setattr(castor.metrics, "_current", ins)
    monkeypatch.setattr(fleet, "add_fleet", lambda *a, **k: None)
    answers = iter([("ok", 0), ("ok", 2), ("quarantine", 4), ("held", "token"), ("cancelled", None)])

    async def acquire(pid: str, token: str, lease_ms: int, max_takeovers: int = 3) -> tuple[str, Any]:
        return next(answers)

    coordinator = SimpleNamespace(kernels=SimpleNamespace(interceptors=[]), ops=SimpleNamespace(acquire=acquire),
                                  config=SimpleNamespace(url="redis://unused", prefix="p"))
    metrics = fleet.instrument_coordinator(coordinator)
    assert coordinator.kernels.interceptors == [metrics]
    for _ in range(5):
        await coordinator.ops.acquire("pid", "token", 1000)
    assert [sample(ins, f"castor_{name}_total", {}) for name in ("leases", "takeovers", "quarantines")] == [3, 1, 1]


def test_the_lock_free_histogram_buckets_like_prometheus() -> None:
    from castor.metrics._instruments import Timings

    timings = Timings("castor_x_seconds", "x", ("tool",), (0.1, 1.0))
    series = timings.labels("t")
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        series.observe(seconds)
    family = timings.family()
    got = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert got[("castor_x_seconds_bucket", "0.1")] == 2  # le: a sample on the bound counts in it
    assert got[("castor_x_seconds_bucket", "1.0")] == 4
    assert got[("castor_x_seconds_bucket", "+Inf")] == 5
    assert got[("castor_x_seconds_count", None)] == 5
    assert got[("castor_x_seconds_sum", None)] == pytest.approx(8.65)
