"""``CeleryExecutor``: every live syscall becomes a task on its tool's worker pool.

The coordinator sends ``castor.tool.<tool>`` to the queue ``<queue_prefix>.<pool>`` without Celery's
result backend (and, on a Redis broker, without ``send_task``: ``_publish`` writes the same message in
one round trip), then awaits the worker's reply on this process's one reply stream. The worker
journals the step (write-once) before it replies, so the kernel only appends the record in memory
(``writes_journal``). A coordinator that gives up at its deadline looks in the journal once more before
it reports a ``ToolTimeoutError``, and withdraws the task no worker took (``castor.executors._late``): a
result that made it to the journal is the step's result. It gives up sooner on a call whose worker is gone,
once the step's heartbeat expired (``castor.executors._loss``).

Arguments a tool declares sensitive cross the broker encrypted under the fleet's key (derived from its
secret, ``castor._sealing``): the message body, Flower and any worker's log hold only ciphertext, and the
token signs the encrypted form. The worker decrypts them just before it checks and calls the tool.

Celery and redis are imported here only, so ``import castor`` loads neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from castor import tracing
from castor._code import function_name
from castor._ids import unique_ids
from castor._imports import source_of
from castor._sealing import DataKey, encrypted
from castor._secret import require_secret
from castor.backends.redis import RedisConnection, keys
from castor.backends.redis.keys import reply_stream
from castor.errors import (
    RUNS_ON,
    BackendUnavailable,
    CastorError,
    ConfigError,
    InDoubtError,
    OutcomeUnknownError,
    RemoteToolError,
    TaskRefusedError,
    ToolTimeoutError,
)
from castor.executors._late import DEADLINE, LOST, LateCalls
from castor.executors._loss import LossWatch, WorkerLost
from castor.executors._publish import (
    FAST_SCHEMES,
    PUBLISH_TIMEOUT,
    RedisPublisher,
    SendTaskPublisher,
    Task,
    UnsurePublish,
)
from castor.executors._replies import READ_TIMEOUT, ReplyReader
from castor.fleet.celery_config import celery_config
from castor.fleet.wire import ERROR, IN_DOUBT, OK, REFUSED, TIMEOUT, Reply, encode, kwargs_repr, task_name
from castor.llm.fleet import MODEL_PREFIX, model_provider, model_timeout
from castor.registry import ToolRegistry
from castor.seams import Journal, ToolCall
from castor.settings import REPLY_GRACE, Settings, call_deadline, tool_policy

log = logging.getLogger("castor.executor")
SENDER = "a process sending tasks to the fleet (coordinator, --executor celery, fleet_options)"
FOLLOW_GRACE = 5.0  # seconds a streamed step's last chunks may take to be read once its reply came
_ERRORS: dict[str, type[CastorError]] = {REFUSED: TaskRefusedError, IN_DOUBT: InDoubtError, TIMEOUT: ToolTimeoutError}




@dataclass(frozen=True, slots=True)
class _Route:
    """Where a tool's calls go and how long the coordinator waits (worked out once per tool)."""

    task: str
    pool: str
    queue: str
    deadline: float
    sensitive: frozenset[str]
    idempotent: bool
    code: str = ""  # which function the call was checked against (castor._code.function_name)


class CeleryExecutor:
    """Sends each call to its pool's queue and awaits the reply; one reply reader per process."""

    writes_journal = True

    def __init__(
        self,
        tools: ToolRegistry,
        settings: Settings,
        *,
        journal: Journal | None = None,
        reply_grace: float = REPLY_GRACE,
        consumer: str | None = None,
        fast_publish: bool = True,
    ) -> None:
        from celery import Celery

        self._tools = tools
        self._settings = settings
        self._grace = reply_grace
        self._routes: dict[str, _Route] = {}
        self._key = DataKey.for_fleet(settings.security.secret)  # a task's sensitive values cross the broker encrypted
        self._control: RedisConnection | None = None  # made for the rare abandon of a task
        self._app = Celery("castor-coordinator", set_as_current=False)
        self._app.conf.update(celery_config(settings, publisher=True))
        self._broker: Any = None
        self._publisher: RedisPublisher | SendTaskPublisher
        if settings.broker_url.startswith(FAST_SCHEMES) and fast_publish:
            # a half-open broker connection must fail the publish (which is then made once more), not hang it
            self._broker = _connection(settings.broker_url, reply_timeout=PUBLISH_TIMEOUT)
            self._publisher = RedisPublisher(self._app, self._broker)
        else:
            self._publisher = SendTaskPublisher(self._app)
        self._ids = unique_ids(compact=True)  # a task id of its own for every publish of an effect's attempt
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if not keys.CONSUMER_NAME.fullmatch(self.consumer):
            raise ConfigError(f"consumer name {self.consumer!r} must be 1-200 of A-Z a-z 0-9 . _ -")
        stream = reply_stream(settings.redis.prefix, self.consumer)
        connection = _connection(settings.redis.url, reply_timeout=READ_TIMEOUT)
        self._replies = ReplyReader(connection, stream, settings.security.secret or None)
        # A call whose worker died is settled once its step's heartbeat expired, not at its deadline.
        self._loss = LossWatch(self._control_conn, settings.redis.prefix, settings.workers.heartbeat)
        self._lateness = LateCalls(settings, self._control_conn, journal)
        # The kernel's model calls go to the [llm] pool: its stand-in provider (no key) for Castor(llm=None).
        self.model_provider = model_provider(settings)
        self.model_in_doubt = settings.llm.in_doubt  # a model call whose process was lost (castor.kernel.model_doubt)

    @classmethod
    def factory(cls, settings: Settings, **options: Any) -> Any:
        """``Castor(executor=CeleryExecutor.factory(settings))``: built with the kernel's tools and journal.
        ``InvalidValueError`` without a proper secret (``castor._secret.require_secret``)."""
        require_secret(settings, SENDER)
        return cls._builder(settings, **options)

    @classmethod
    def _builder(cls, settings: Settings, **options: Any) -> Any:
        def build(tools: ToolRegistry) -> CeleryExecutor:
            return cls(tools, settings, **options)

        return build

    def bind_journal(self, journal: Journal) -> None:
        """The journal to consult when a reply is late (the kernel's backend's)."""
        self._lateness.journal = journal

    async def execute(self, call: ToolCall) -> Any:
        """Send the call to its pool and return the tool's result, or raise what became of it. The worker
        journals the step's record; ``call.finished_at`` is set to that record's."""
        route = self._routes.get(call.tool_name) or self._route(call.tool_name)
        checked = call.arguments if call.checked is None else call.checked
        sealed = encrypted(checked, route.sensitive, self._key) if route.sensitive else checked
        kwargs = encode(call, self._replies.stream, self._settings.security.secret or None, sealed, route.code)
        reply = await self._dispatch(call, kwargs, route)
        if not isinstance(reply, Reply) and route.idempotent and await self._lateness.started(call):
            # Its worker died mid-call (a killed threads-pool worker's task comes back only after the
            # broker's visibility timeout): the same effect runs again, once, on a live worker.
            log.warning("%s (run %s, step %d) started and never finished: sending it again (idempotent)",
                        call.tool_name, call.run_id, call.step)
            reply = await self._dispatch(call, kwargs, route)
        if not isinstance(reply, Reply):
            return await self._late(call, route, reply, kwargs)
        return _answered(call, reply)

    async def execute_stream(self, call: ToolCall, chunk: Callable[[str], None]) -> Any:
        """``execute`` for a model step the worker streams (its checked arguments say ``stream``): each signed
        chunk of text the worker forwards goes to ``chunk`` as it comes (``castor.llm.chunks``), and the
        reply's response, journaled whole, is returned as ``execute`` returns it. Model steps only: a tool
        call never pays for this."""
        from castor.llm.chunks import ChunkFollower

        route = self._routes.get(call.tool_name) or self._route(call.tool_name)
        kwargs = encode(call, self._replies.stream, self._settings.security.secret or None, call.checked, route.code)
        task_id = f"{call.effect_id}#{call.attempt}-{self._ids()}"
        key = keys.chunks(self._settings.redis.prefix, call.run_id, call.step, call.attempt)
        conn = self._control_conn()
        follower = ChunkFollower(conn.run, key, self._settings.security.secret or None, task_id, chunk)
        following = asyncio.get_running_loop().create_task(follower.follow())
        try:
            reply = await self._dispatch(call, kwargs, route, task_id)
        finally:
            follower.finish()  # every chunk was written before the reply: one more read takes the rest
            try:
                await asyncio.wait_for(asyncio.shield(following), FOLLOW_GRACE)
            except TimeoutError:
                following.cancel()
            with contextlib.suppress(Exception):
                await conn.command("delete", key)
        if not isinstance(reply, Reply):
            return await self._late(call, route, reply, kwargs)
        return _answered(call, reply)

    async def _dispatch(
        self, call: ToolCall, kwargs: dict[str, Any], route: _Route, task_id: str = ""
    ) -> Reply | str:
        """Publish the call's task (``kwargs``) as a new task (id ``task_id``, else a new one) and await its
        reply; else why none came: ``DEADLINE`` (none by the deadline) or ``LOST`` (its worker is gone,
        ``castor.executors._loss``)."""
        effect_id = call.effect_id
        task_id = task_id or f"{effect_id}#{call.attempt}-{self._ids()}"
        headers: dict[str, Any] = {"castor_run": call.run_id, "castor_step": call.step}
        if tracing.ACTIVE:  # the syscall's span context, signed for this task (castor.tracing)
            headers.update(tracing.outgoing(kwargs.get("token")))
        future = self._replies.expect(effect_id, call.attempt, route.deadline, task_id)
        self._loss.add(effect_id, call, future)
        try:
            try:
                await self._publisher.publish(Task(
                    route.task, task_id, kwargs, route.queue, route.deadline, headers,
                    kwargs_repr(call, route.sensitive),
                ))
            except UnsurePublish as exc:
                await self._lateness.abandon_or_wait(call, task_id, exc)
            return await future
        except TimeoutError:  # the reader's deadline (a worker's timeout is a reply, not this)
            await self._lateness.give_up(call, task_id)
            return DEADLINE
        except WorkerLost:
            return LOST
        except asyncio.CancelledError as stopped:
            # The drive stops (an operator cancelled the run, the coordinator drains) while the task may
            # still wait on its queue: nobody awaits its reply now, and a worker that took it later would
            # run a call of a run said cancelled. Abandoned unless a worker took it already (that one runs
            # it and journals the result); a later drive of the run sends the step again. Shielded: a
            # second cancel must not leave the task half given up.
            if await asyncio.shield(self._lateness.give_up(call, task_id)):
                setattr(stopped, RUNS_ON, True)  # a worker runs it: its charge stands
            raise
        finally:
            self._loss.discard(effect_id)
            self._replies.forget(effect_id)

    def _route(self, tool: str) -> _Route:
        if tool.startswith(MODEL_PREFIX):  # a model step: never retried, nothing sensitive, its own deadline
            pool = self._settings.pool_of(tool)
            deadline = self._deadline(model_timeout(self._settings, tool), False)
            route = _Route(task_name(tool), pool, self._settings.queue_of(pool), deadline, frozenset(), False)
            self._routes[tool] = route
            return route
        spec = self._tools.get(tool)
        policy = tool_policy(self._settings, spec)
        pool = self._settings.pool_of(tool, source_of(spec.func) if spec is not None else None)
        route = _Route(task_name(tool), pool, self._settings.queue_of(pool),
                       self._deadline(policy.timeout, policy.retryable), policy.sensitive, policy.idempotent,
                       function_name(spec.func) if spec is not None else "")
        self._routes[tool] = route
        return route

    def _deadline(self, timeout: float, retryable: bool) -> float:
        # the workers' broker visibility timeout is computed from the same function: keep them one
        return call_deadline(self._settings, timeout, retryable, self._grace)

    async def _late(self, call: ToolCall, route: _Route, why: str, kwargs: dict[str, Any]) -> Any:
        """What became of a call that got no reply (``LateCalls.settle``); ``OutcomeUnknownError`` if the store
        cannot be read to tell (its task may have run)."""
        try:
            return await self._lateness.settle(call, route.pool, route.deadline, why, kwargs)
        except OutcomeUnknownError:
            raise
        except BackendUnavailable as exc:
            raise OutcomeUnknownError(
                f"{call.tool_name!r} (run {call.run_id}, step {call.step}) gave no reply, and the store cannot be "
                f"read to tell what became of it: {exc}"
            ) from exc

    def _control_conn(self) -> RedisConnection:
        """The connection for the rare calls outside the hot path (an abandon, a look at a late step)."""
        if self._control is None:
            self._control = RedisConnection(self._settings.redis.url)
        return self._control

    async def close(self) -> None:
        """Stop the reply reader and the loss watch, and release the broker connection."""
        await self._loss.close()
        await self._replies.close()
        if self._control is not None:
            await self._control.close()
        if isinstance(self._publisher, SendTaskPublisher):
            self._publisher.close()
        if self._broker is not None:
            await self._broker.close()
        self._app.close()


def _connection(url: str, reply_timeout: float) -> Any:
    """A connection of the executor's own: the lean one where hiredis can parse, else redis-py's. A reply
    that takes over ``reply_timeout`` seconds fails its command as a lost connection."""
    from castor.backends.redis.resp import RespConnection, available

    if available(url):
        return RespConnection(url, reply_timeout=reply_timeout)
    return RedisConnection(url, socket_timeout=reply_timeout)


def _answered(call: ToolCall, reply: Reply) -> Any:
    """The tool's result the reply carries (or what it raises); the call's finish time is the journaled record's."""
    if reply.finished_at is not None:
        call.finished_at = reply.finished_at
    return _outcome(reply, call.tool_name)


def _outcome(reply: Reply, tool: str) -> Any:
    """The tool's result, or the error the reply describes."""
    if reply.status == OK:
        return reply.result
    kind = _ERRORS.get(reply.status)
    if kind is not None:
        error: CastorError = kind(reply.message)
    elif reply.status == ERROR:
        error = RemoteToolError(reply.error_type or "Exception", reply.message, tool_name=tool)
    else:
        error = RemoteToolError("UnknownReply", f"reply status {reply.status!r}", tool_name=tool)
    if reply.journaled:
        error.failure_journaled = True
    raise error


def fleet_options(
    settings: Settings, *, backend_options: dict[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for ``Castor(...)`` in the fleet: the config's tools, destructive list and
    budgets, the shared Redis store (``backend_options`` go to ``redis_backend``) and this executor
    (which consults the store's journal when a reply is late)."""
    from castor._imports import load_tools
    from castor.backends.redis import redis_backend

    require_secret(settings, SENDER)  # before anything connects
    backend = redis_backend(
        settings.redis.url, prefix=settings.redis.prefix, data_key=DataKey.for_fleet(settings.security.secret),
        **{**settings.redis.store_options(), **(backend_options or {})},
    )
    options: dict[str, Any] = {
        "tools": load_tools(settings.tools.imports),
        "destructive": sorted(settings.tools.destructive),
        "budgets": dict(settings.budgets),
        "store": backend,
        "executor": CeleryExecutor._builder(settings, journal=backend.journal),  # the secret is checked
    }
    options.update(overrides)
    return options
