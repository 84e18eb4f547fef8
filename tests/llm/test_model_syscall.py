"""The model syscall: one journaled step, replayed and forked without calling the model, charged in tokens."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from castor import Castor, ReplayDivergenceError
from castor.lib import chat, complete, model_call, tool
from castor.llm import ModelCallError, ModelRefusedError, ModelTimeoutError, Scripted, canonical_request


async def search(query: str) -> list[str]:
    return [f"result for {query}"]


async def agent() -> str:
    first = await complete(prompt="find old logs", tools=[{"name": "search", "parameters": {"type": "object"}}])
    for call in first.tool_calls:
        await tool(call.name, **call.arguments)
    second = await complete(prompt="summarise")
    return second.text


def script() -> Scripted:
    return Scripted([{"tool_calls": [{"name": "search", "arguments": {"query": "logs"}}]}, "all clean"])


async def test_a_model_call_is_one_journaled_step_charged_its_reported_usage() -> None:
    model = script()
    kernel = Castor(tools=[search], llm=model, budgets={"tokens": 10_000}, scopes=["team"])
    await kernel.backend.budgets.set_scope("team", {"tokens": 5_000})
    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED" and cp.result == "all clean"
    names = [r.tool_name for r in cp.syscall_log]
    assert names == ["model:scripted", "search", "model:scripted"]
    first = cp.syscall_log[0]
    assert first.request["arguments"]["request"]["messages"] == [{"role": "user", "content": "find old logs"}]
    assert first.response["tool_calls"][0]["name"] == "search"
    usage = first.response["usage"]
    assert first.charged == {
        "input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
        "tokens": usage["input_tokens"] + usage["output_tokens"],
    }
    spent = sum(r.charged.get("tokens", 0) for r in cp.syscall_log)
    assert cp.capabilities["tokens"].current_usage == spent  # settled to usage, not the reservation
    assert await kernel.backend.budgets.read_scope("team") == {"tokens": (5_000, spent)}


async def test_resume_and_fork_replay_model_steps_without_calling_the_model() -> None:
    model = script()
    kernel = Castor(tools=[search], llm=model, budgets={"tokens": 10_000})
    cp = await kernel.run(agent)
    assert len(model.calls) == 2
    again = await kernel.run(agent, checkpoint=cp.fork(at_step=3))
    assert again.result == "all clean" and len(model.calls) == 2
    prefix = cp.fork(at_step=2)
    model.script.append("fresh ending")
    forked = await kernel.run(agent, checkpoint=prefix)
    assert forked.result == "fresh ending" and len(model.calls) == 3
    expected = sum(r.charged.get("tokens", 0) for r in forked.syscall_log)
    assert forked.capabilities["tokens"].current_usage == expected


async def test_a_different_request_at_a_model_step_is_a_divergence_naming_the_step() -> None:
    kernel = Castor(tools=[search], llm=script())
    cp = await kernel.run(agent)

    async def other() -> str:
        await complete(prompt="find NEW logs")
        return "x"

    with pytest.raises(ReplayDivergenceError, match="step 0") as caught:
        await kernel.run(other, checkpoint=cp.fork(at_step=1))
    assert caught.value.step == 0


async def test_an_in_process_model_is_called_once_and_its_json_response_journaled() -> None:
    calls: list[dict[str, Any]] = []

    async def framework_model(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(request)
        return {"content": "hi", "usage": {"input_tokens": 7, "output_tokens": 3}, "meta": ("a", 1)}

    async def framework_agent() -> Any:
        request = canonical_request({"messages": [{"role": "user", "content": "hey", "id": "run-123"}]}, drop={"id"})
        return await model_call(request, model="local-model", invoke=framework_model, max_tokens=50)

    kernel = Castor(budgets={"input_tokens": 100})
    cp = await kernel.run(framework_agent)
    assert cp.result == {"content": "hi", "usage": {"input_tokens": 7, "output_tokens": 3}, "meta": ["a", 1]}
    assert calls == [{"messages": [{"role": "user", "content": "hey"}]}]
    assert cp.syscall_log[0].charged == {"input_tokens": 7.0, "output_tokens": 3.0, "tokens": 10.0}
    replayed = await kernel.run(framework_agent, checkpoint=cp.fork(at_step=1))
    assert replayed.result == cp.result and len(calls) == 1


async def test_a_response_without_usage_is_charged_an_offline_estimate() -> None:
    async def silent(request: dict[str, Any]) -> dict[str, Any]:
        return {"text": "no usage here"}

    async def agent_() -> Any:
        return await model_call({"messages": [{"role": "user", "content": "x"}]}, model="m", invoke=silent)

    cp = await Castor(budgets={"tokens": 10_000}).run(agent_)
    usage = cp.result["usage"]
    assert usage["estimated"] is True and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert cp.capabilities["tokens"].current_usage == usage["input_tokens"] + usage["output_tokens"]


async def test_a_call_the_budget_cannot_cover_is_refused_before_the_model_is_contacted() -> None:
    model = Scripted(["never"])

    async def agent_() -> str:
        try:
            await complete(prompt="hello", max_tokens=500)
        except ModelRefusedError as refused:
            return f"refused:{refused.resource}"
        return "ran"

    cp = await Castor(llm=model, budgets={"output_tokens": 100}).run(agent_)
    assert cp.result == "refused:output_tokens" and model.calls == []
    assert cp.syscall_log[0].response["status"] == "INSUFFICIENT_CAPABILITY"
    assert cp.capabilities["output_tokens"].current_usage == 0


async def test_a_failed_model_call_is_refunded_and_journaled_as_a_failure() -> None:
    model = Scripted([RuntimeError("provider down")])
    kernel = Castor(llm=model, budgets={"tokens": 10_000}, scopes=["team"])
    await kernel.backend.budgets.set_scope("team", {"tokens": 5_000})

    async def agent_() -> str:
        return (await complete(prompt="hello")).text

    with pytest.raises(RuntimeError, match="provider down"):
        await kernel.run(agent_, pid="down")
    cp = await kernel.aload("down")
    assert cp.status == "FAILED" and cp.syscall_log == []
    assert [f.error_type for f in cp.failures] == ["RuntimeError"]
    assert await kernel.backend.budgets.read_scope("team") == {"tokens": (5_000, 0)}


async def test_bad_input_is_a_clear_error() -> None:
    async def slow(request: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(10)
        return {}

    async def unknown_model() -> Any:
        return await complete(prompt="x", model="gpt-9")

    async def no_provider() -> Any:
        return await complete(prompt="x")

    async def timeout() -> Any:
        return await model_call({"messages": []}, model="m", invoke=slow, timeout=0.05)

    async def unpriced() -> Any:
        return await complete(prompt="x")

    async def named_without_provider() -> Any:
        return await complete(prompt="x", model="gpt-4o-mini")

    cases = [
        (Castor(llm=Scripted(["a"])), unknown_model, ModelCallError, "unknown model 'gpt-9'"),
        (Castor(), no_provider, ModelCallError, "no model given"),
        (Castor(), named_without_provider, ModelCallError,
         r"'gpt-4o-mini' has no model: .* \(on the command line: --config FILE whose \[llm\] section names a "
         r"provider\)"),
        (Castor(), timeout, ModelTimeoutError, "did not answer within 0.05s"),
        (Castor(llm=Scripted(["a"]), budgets={"usd": 1}), unpriced, ModelCallError, "no price for model 'scripted'"),
    ]
    for kernel, agent_, error, message in cases:
        with pytest.raises(error, match=message):
            await kernel.run(agent_)
    with pytest.raises(ModelCallError, match="not JSON data"):
        canonical_request({"x": object()})


async def test_interceptors_see_model_calls_and_a_priced_model_is_charged_dollars() -> None:
    seen: list[str] = []

    def spy(call: Any, inner: Any) -> Any:
        seen.append(call.tool_name)
        return inner(call)

    kernel = Castor(
        llm=Scripted(["ok"]), interceptors=[spy], budgets={"usd": 1.0},
        llm_prices={"scripted": {"input": 2.0, "output": 10.0}},
    )

    async def agent_() -> str:
        return await chat("hi", system="be brief")

    cp = await kernel.run(agent_)
    assert cp.result == "ok" and seen == ["model:scripted"]
    usage = cp.syscall_log[0].response["usage"]
    assert cp.syscall_log[0].charged["usd"] == pytest.approx(
        (usage["input_tokens"] * 2.0 + usage["output_tokens"] * 10.0) / 1_000_000
    )


async def test_chat_with_a_plain_function_still_calls_the_llm_inference_tool() -> None:
    async def llm(prompt: str, system: str = "") -> str:
        return f"echo {prompt}"

    async def agent_() -> str:
        return await chat("hello")

    cp = await Castor(llm=llm, budgets={"api": 5}).run(agent_)
    assert cp.result == "echo hello" and cp.syscall_log[0].tool_name == "llm_inference"
    assert cp.capabilities["api"].current_usage == 1


def test_castor_toml_prices_model_calls(tmp_path: Any) -> None:
    from castor.settings import load_settings

    config = tmp_path / "castor.toml"
    config.write_text('[llm]\ntimeout = 30\n[llm.prices."gpt-x"]\ninput = 2.5\noutput = 10\n')
    settings = load_settings(config)
    kernel = Castor(llm_prices=settings.llm.prices, llm_timeout=settings.llm.timeout)
    assert kernel.services.models.prices["gpt-x"].usd(1_000_000, 100_000) == 3.5
    assert kernel.services.models.timeout == 30
    config.write_text('[llm.prices."gpt-x"]\ninput = -1\n')
    with pytest.raises(Exception, match=r"\[llm.prices.gpt-x\] input must be dollars per million tokens"):
        load_settings(config)


async def test_a_run_resumed_by_another_kernel_on_sqlite_replays_its_model_steps(tmp_path: Any) -> None:
    async def delete_file(path: str) -> str:
        return f"deleted {path}"

    async def agent_() -> str:
        reply = await complete(prompt="clean up", tools=[{"name": "delete_file", "parameters": {}}])
        for call in reply.tool_calls:
            await tool(call.name, **call.arguments)
        return (await complete(prompt="report")).text

    store = f"sqlite:///{tmp_path / 'castor.db'}"
    first = Scripted([{"tool_calls": [{"name": "delete_file", "arguments": {"path": "/tmp/x"}}]}])
    kernel = Castor(tools=[delete_file], destructive=["delete_file"], llm=first, store=store, budgets={"tokens": 9_000})
    cp = await kernel.run(agent_, pid="resumable")
    assert cp.status == "SUSPENDED_FOR_HITL" and len(first.calls) == 1
    await kernel.approve(cp)
    await kernel.close()
    second = Scripted(["done"])  # a new process: a new kernel and model; the first answer is journaled
    other = Castor(tools=[delete_file], destructive=["delete_file"], llm=second, store=store)
    resumed = await other.run(agent_, checkpoint=await other.aload("resumable"))
    assert resumed.result == "done" and len(second.calls) == 1
    assert second.calls[0]["messages"] == [{"role": "user", "content": "report"}]
    assert resumed.capabilities["tokens"].current_usage == sum(r.charged.get("tokens", 0) for r in resumed.syscall_log)
    await other.close()


async def test_concurrent_model_calls_of_one_run_are_numbered_in_call_order() -> None:
    async def echo(request: dict[str, Any]) -> dict[str, Any]:
        n = int(request["n"])
        await asyncio.sleep(0.001 * (5 - n))  # the first call finishes last
        return {"n": n, "usage": {"input_tokens": 1, "output_tokens": 1}}

    async def agent_() -> list[int]:
        replies = await asyncio.gather(*(model_call({"n": n}, model="m", invoke=echo) for n in range(5)))
        return [r["n"] for r in replies]

    kernel = Castor()
    cp = await kernel.run(agent_)
    assert cp.result == [0, 1, 2, 3, 4]
    assert [r.request["arguments"]["request"]["n"] for r in cp.syscall_log] == [0, 1, 2, 3, 4]
    again = await kernel.run(agent_, checkpoint=cp.fork(at_step=5))
    assert again.result == [0, 1, 2, 3, 4]


async def test_tool_schemas_tell_the_model_what_the_run_s_tools_take() -> None:
    from castor.lib import tool_schemas

    async def delete_file(path: str, force: bool = False) -> str:
        """Delete a file.

        More text."""
        return path

    async def agent_() -> Any:
        return tool_schemas("delete_file"), [s["name"] for s in tool_schemas()]

    cp = await Castor(tools=[search, delete_file]).run(agent_)
    (schema,), names = cp.result
    assert names == ["search", "delete_file"]
    assert schema == {
        "name": "delete_file", "description": "Delete a file.",
        "parameters": {
            "type": "object", "required": ["path"], "additionalProperties": False,
            "properties": {"path": {"type": "string"}, "force": {"type": "boolean", "default": False}},
        },
    }
    assert len(cp.syscall_log) == 0  # reading them is no syscall


def test_options_that_do_not_apply_to_a_provider_are_refused() -> None:
    from castor import ConfigError

    with pytest.raises(ConfigError, match=r"llm_cost= and llm_resource= price 0\.5\.1.s model function"):
        Castor(llm=Scripted([]), llm_cost=3)
    with pytest.raises(ConfigError, match=r"llm must be a castor\.llm provider or an async function"):
        Castor(llm=42)


async def test_a_canonical_request_is_journaled_as_given_and_still_replayed_and_compared() -> None:
    # A framework guard builds each message once and shares it with every later step's request.
    shared = [{"role": "user", "content": "hey"}]
    responses: list[dict[str, Any]] = []

    async def framework_model(request: dict[str, Any]) -> dict[str, Any]:
        responses.append({"text": f"answer {len(responses)}"})
        return responses[-1]

    async def framework_agent() -> Any:
        first = await model_call({"messages": shared}, model="m", invoke=framework_model, canonical=True)
        second = await model_call({"messages": [*shared, {"role": "ai", "content": first["text"]}]},
                                  model="m", invoke=framework_model, canonical=True)
        return first, second

    kernel = Castor(budgets={"tokens": 10_000})
    cp = await kernel.run(framework_agent)
    first_record = cp.syscall_log[0]
    assert first_record.request["arguments"]["request"]["messages"] is shared  # not copied
    assert cp.result[0] is responses[0]  # the invoked model's dict, journaled as it is
    assert first_record.response["usage"]["estimated"] is True  # still charged the offline estimate
    replayed = await kernel.run(framework_agent, checkpoint=cp.fork(at_step=2))
    assert replayed.result == cp.result and len(responses) == 2
    shared = [{"role": "user", "content": "something else"}]  # new parts (journaled ones are never changed)
    with pytest.raises(ReplayDivergenceError, match="step 0"):
        await kernel.run(framework_agent, checkpoint=cp.fork(at_step=1))


def test_a_journaled_prompt_is_estimated_as_estimate_prompt_does_each_message_sized_once() -> None:
    from castor.llm import cost, estimate_prompt

    messages = [{"role": "user", "content": "héllo"}, {"role": "ai", "content": "", "tool_calls": [{"n": 1.5}]}]
    requests = [
        {}, {"messages": []}, {"messages": messages, "tools": [{"name": "search"}], "max_tokens": 5, "stop": ["x"]},
        {"messages": [*messages, {"role": "tool", "content": None, "status": True}], "options": {"t": 0.2}},
    ]
    for request in requests * 2:  # the second time, the messages' sizes come from the cache
        assert cost._journaled_prompt(request) == estimate_prompt(request), request
    assert cost._SIZES[id(messages[0])][0] is messages[0]
