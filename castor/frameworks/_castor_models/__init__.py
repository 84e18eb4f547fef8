"""Framework model objects backed by Castor's model provider (``Castor(llm=...)``, or the fleet's ``llm`` pool).

A framework's own model object (``ChatOpenAI``, pydantic-ai's ``OpenAIChatModel``, ...) is called where the
agent runs: embedded, in the agent's process; in the fleet, in the coordinator's (which then needs the API
key). The classes here are models of each framework that call no provider themselves: each converts the
framework's request to Castor's canonical request (OpenAI-style messages and tool specs,
``castor.llm.types``), asks ``castor.lib.complete`` (the kernel's provider: in the fleet a worker of the
``llm`` pool, which holds the key and the rate limits) and converts the typed answer (text, tool calls,
usage) back to the framework's message, so the framework's loop and its tool calls run unchanged.

- ``castor.frameworks.langchain.CastorChatModel`` (a LangChain ``BaseChatModel``)
- ``castor.frameworks.pydantic_ai.CastorModel`` (a pydantic-ai ``Model``)
- ``castor.frameworks.openai_agents.CastorModel`` (an Agents SDK ``Model``)
- ``castor.frameworks.smolagents.CastorModel`` (a smolagents ``Model``)
- ``castor.frameworks.crewai.CastorLLM`` (a CrewAI ``BaseLLM``, in CrewAI's text mode)

Each call is one model syscall (journaled, replayed, forked, charged in tokens) by itself: ``guard()``
recognises these objects and does not wrap them into a second step.
"""
