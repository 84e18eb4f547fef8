"""``CastorLLM``: a CrewAI LLM whose calls Castor's model provider answers (in CrewAI's text mode)."""

from __future__ import annotations

from typing import Any

from crewai.llms.base_llm import BaseLLM

from castor.errors import UnsupportedError
from castor.frameworks._castor_models._ask import ask, text_of
from castor.frameworks._common import blocking

_RUNNER = "castor.frameworks.crewai.kickoff(crew)"
CONTEXT_WINDOW = 128_000  # what CrewAI assumes of the model when it trims a conversation


class CastorLLM(BaseLLM):
    """A CrewAI LLM answered by Castor's model provider: every call is one model syscall of the run.

    ``Agent(..., llm=CastorLLM(model="gpt-4o-mini"))`` (``model=""``: the kernel's default model); run the
    crew with ``castor.frameworks.crewai.kickoff(crew)``. Embedded, the provider is ``Castor(llm=...)``'s; in
    the fleet a worker of the ``llm`` pool calls it, with the API key only it holds. The agent runs in
    CrewAI's text (ReAct) mode, as under a guarded LLM: the model answers with text and CrewAI calls the
    (guarded) tools. ``guard()`` leaves it as it is. Structured output (``response_model``) is not served.
    """

    model: str = ""
    max_tokens: int | None = None
    context_window: int = CONTEXT_WINDOW

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
             from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> str:
        """Ask the kernel's provider (from the journal on replay), from the crew's thread."""
        if response_model is not None or available_functions:
            raise UnsupportedError("CastorLLM answers in text: structured output and native tool calls are not served")
        listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else [
            {"role": str(m.get("role") or "user"), "content": text_of(m.get("content"))} for m in messages]
        # CrewAI sets the stop words of a call on the LLM (stop_sequences: per call in recent versions)
        stop = getattr(self, "stop_sequences", None) or self.stop
        options = {"stop": list(stop) if stop else None}
        response = blocking("CrewAI", lambda: ask(listed, model=self.model or None, max_tokens=self.max_tokens,
                                                  options=options), _RUNNER)
        cut = getattr(self, "_apply_stop_words", None)  # a provider that ignores stop words: cut as CrewAI does
        return str(cut(response.text)) if cut is not None else response.text

    def supports_function_calling(self) -> bool:
        """No: CrewAI then runs the agent in text mode and calls the tools itself."""
        return False

    def supports_stop_words(self) -> bool:
        """Yes: the stop words go to the provider with the request."""
        return True

    def get_context_window_size(self) -> int:
        """``context_window`` (the provider's model is not known here)."""
        return self.context_window
