"""Model calls as syscalls: providers, typed responses, token costs.

    from castor import Castor
    from castor.llm import Scripted, OpenAICompatible, Anthropic

    kernel = Castor(llm=OpenAICompatible(model="gpt-4o-mini", api_key=...), budgets={"tokens": 50_000})

Agents call ``castor.lib.complete`` / ``chat`` / ``stream`` (or ``model_call`` for a model of their
own); every call is one journaled step of the run, charged in ``input_tokens``, ``output_tokens``,
``tokens`` and ``usd``. The HTTP providers need ``httpx`` (``pip install 'castor-kernel[openai]'``) and
are imported on first use, so ``import castor`` stays light. Fleet-wide rate limits of model calls are
``castor.llm.ratelimit`` (with ``castor.llm.redis_limits`` and ``castor.llm.memory_limits``).
castor-kernel 0.5.1's ``LLMSyscall`` and ``StreamingLLMSyscall`` are ``castor.llm.wrapper``.
"""

from __future__ import annotations

from typing import Any

from castor.llm.cost import TOKEN_RESOURCES, Price, estimate_prompt, estimate_tokens
from castor.llm.scripted import Provider, Scripted
from castor.llm.types import (
    ModelCallError,
    ModelRefusedError,
    ModelResponse,
    ModelTimeoutError,
    ToolCall,
    Usage,
    canonical_request,
)

__all__ = [
    "TOKEN_RESOURCES",
    "Anthropic",
    "LLMSyscall",
    "ModelCallError",
    "ModelRefusedError",
    "ModelResponse",
    "ModelTimeoutError",
    "OpenAICompatible",
    "Price",
    "Provider",
    "Scripted",
    "StreamingLLMSyscall",
    "ToolCall",
    "Usage",
    "canonical_request",
    "estimate_prompt",
    "estimate_tokens",
]

_LAZY = {
    "OpenAICompatible": "castor.llm.openai",
    "Anthropic": "castor.llm.anthropic",
    # castor-kernel 0.5.1's wrappers (``from castor.llm import LLMSyscall``): adapters over model calls
    "LLMSyscall": "castor.llm.wrapper",
    "StreamingLLMSyscall": "castor.llm.wrapper",
}


def __getattr__(name: str) -> Any:
    # The HTTP providers import httpx, the wrappers castor.registry: loaded when first named, not with castor.llm.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'castor.llm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
