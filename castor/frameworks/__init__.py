"""Guard a framework's agent: its tool calls and its model calls become syscalls of the Castor run.

    from castor.frameworks.langchain import guard, tools_of      # pip install 'castor-kernel[langchain]'
    from castor.frameworks.pydantic_ai import guard, tools_of    # pip install 'castor-kernel[pydantic-ai]'
    from castor.frameworks.openai_agents import guard, tools_of  # pip install 'castor-kernel[openai-agents]'
    from castor.frameworks.smolagents import run, tools_of       # pip install 'castor-kernel[smolagents]'
    from castor.frameworks.crewai import kickoff, tools_of       # pip install 'castor-kernel[crewai]' (akickoff too)

``guard(x)`` takes the framework's agent, its tool(s) or its model and returns the same kind of object
whose every tool call goes through ``castor.lib.tool`` (validated, charged, gated, executed by the run's
executor, journaled) and whose every model call goes through ``castor.lib.model_call`` (one journaled
step, charged in tokens). A resumed or forked run replays the framework's loop from the journal: the
model is not called for the steps before the suspension or the fork point. A LangGraph ReAct agent, a
plain pydantic-ai agent and a plain Agents SDK agent do not even run their loop over those steps:
``ainvoke`` starts the graph, ``run`` the agent and ``Runner.run`` the SDK's loop at the loop's last
journaled model step (``castor.frameworks._langchain_resume``, ``castor.frameworks._pydantic_ai_resume``,
``castor.frameworks._openai_agents_resume``, from the ``RunState`` the loop had there).

Where the model is called: a framework's own model object is called in the process that runs the agent (in
the fleet, the coordinator's, which then needs its key). Each module also has a model of the framework's
kind answered by Castor's provider (``langchain.CastorChatModel``, ``pydantic_ai.CastorModel``,
``openai_agents.CastorModel``, ``smolagents.CastorModel``, ``crewai.CastorLLM``;
``castor.frameworks._castor_models``): in the
fleet its calls run on the ``llm`` pool, whose workers hold the key. ``guard()`` leaves those models as
they are (each call is one model step already).

The operator registers the framework's tool functions like any tool, ``Castor(tools=tools_of(agent),
destructive=[...])``; the agent function builds (or receives) the guarded agent and runs it under
``kernel.run``. A tool whose argument schema Castor cannot check (arguments the framework injects, names
that are not Python identifiers, JSON schema constructs with no Python type) is refused by ``guard()``
with one line naming it.

Each framework module imports its framework; ``castor.frameworks`` itself and ``import castor`` import
none. The shared machinery (tools as syscalls, model steps, suspensions through a framework's error
handling) is ``castor.frameworks._common``.

Adding a framework
------------------
1. Tools: for each framework tool, ``tool_entry`` returns ``(name, function)`` for ``Castor(tools=...)``:
   the tool's own Python function after ``check_function`` (refusing arguments the framework injects),
   else ``schema_function`` over its JSON schema, running the unguarded tool. The guarded tool's body is
   ``await call_tool(name, arguments)``.
2. Model: wrap the framework's model class (or its request hook) so that a request becomes
   ``await model_step(canonical_request, model_id, invoke)``: the canonical request is the messages by
   role and content, the tool definitions and settings, without what the framework makes anew each run
   (ids, timestamps; convert each message once through an ``IdentityCache``); ``invoke`` calls the
   framework's model and returns Castor's response keys (``text``, ``tool_calls``, ``usage``, ``model``,
   ``finish_reason``) plus the framework's own serialised response, from which the object is rebuilt
   (live and replayed alike).
3. Suspensions: check whether the framework catches ``BaseException`` around tools (none of LangChain,
   LangGraph or pydantic-ai does) or runs them in task groups; run its agent inside ``suspensions_pass()``
   if a suspension can come back wrapped. ``call_tool`` raises an error that ends the run carried in a
   ``RunEnding`` (a ``BaseException`` too), which the runner unwraps. A test must show a suspended run
   whose model was not asked again with the tool's error.
4. Streaming: a framework model's streaming entry point becomes one ``StreamStep``
   (``castor.frameworks._streaming``): it streams the framework's model inside the model syscall, hands
   each chunk to the framework as it arrives, journals the response the chunks add up to (the record the
   non-streamed call makes) and, for a step served from the journal, lets the guard re-chunk the
   journaled response in the framework's chunk types.
5. A synchronous framework (smolagents, CrewAI): give an async entry point that runs its loop under
   ``in_thread``; the guarded model and tools then reach Castor through ``_loop_calls.call_on_loop`` (one
   hop to the run's loop and one back, a run-ending error carried past the framework's ``except
   Exception``), and a live model step hands the wrapped model back to the framework's waiting thread.
6. Replay (optional): where the framework's loop state can be rebuilt from the journal and handed to the
   framework, a replay can start at the loop's last journaled model step instead of running the loop over
   the journal: ``_fast_forward.landing`` finds that step (``conversation``: the request's key that holds
   the conversation); the guard rebuilds the state, checks the request it makes against the step's and
   falls back to the whole loop if the step is asked otherwise. Its result must be the whole loop's. LangGraph
   (``_langchain_resume``): the state is the conversation, and ``ainvoke`` returns only the final state.
   The Agents SDK (``_openai_agents_resume``): the state is a ``RunState`` (items, responses, usage, turn,
   tools used), from which the SDK makes the ``RunResult`` the whole loop makes; whatever a late start
   would skip (hooks, guardrails, handoffs, sessions, tool errors fed back, per-tool options) replays
   the whole loop.
   pydantic-ai (``_pydantic_ai_resume``): the state is the conversation, but the result also counts what
   the loop did from its first step (usage, new messages, step count): the guard counts the skipped steps
   as the loop counts them (usage limits checked at each) and makes the result say what the whole loop's
   says; anything of the agent's own that runs at a step and that the journal does not hold
   (``_pydantic_ai_plain``: capabilities, instruction and system prompt functions, output validators,
   tools with ``prepare``, retries in the skipped steps) replays the whole loop.
7. Tests: the promises above are one contract suite (``tests/frameworks/test_contract.py``); a framework
   joins it with an adapter (``tests/frameworks/contract.py``'s ``FrameworkCase``) and a line in its
   ``FRAMEWORKS``. Its own file holds what is particular to it (streaming, its error handling, its JSON).
"""
