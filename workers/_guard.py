"""What a worker checks before it runs anything: the payload's shape and size, the tool, the authority.

Every check fails with ``Refusal``; the runtime journals and reports it and never calls the tool. The
worker trusts its own registry and config, never what the message claims about the tool.
"""

from __future__ import annotations

from typing import Any

from castor.backends.redis.keys import is_reply_stream
from castor.fleet.records import canonical, function_name, redact
from castor.fleet.sealing import DataKey, SealError, opened
from castor.fleet.wire import Job, Malformed, age, decode, task_name, verify
from castor.llm.fleet import MODEL_PREFIX
from castor.registry import ToolRegistry, ToolSpec
from castor.seams import ApprovalStore, PendingApproval
from castor.settings import Settings, ToolPolicy


class Refusal(Exception):
    """A task the worker will not run; ``job`` is what could be read of it (None if nothing)."""

    journaled = True  # a refusal of a signed task is journaled against its run and replied

    def __init__(self, reason: str, job: Job | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job = job


class Expired(Refusal):
    """A signed task older than ``[security] task_max_age``: its run's records (and the run) may be gone, so
    the refusal is a dead letter only; journaling it would write its run's keys again, with no expiry."""

    journaled = False


class Spent(Refusal):
    """A copy of a signed task whose call ran and failed for good: a failure is not cached (its run sends the
    step again, signed anew), so without this a copy read off the broker would run the tool once more. A dead
    letter only: the failure is journaled already."""

    journaled = False


class Unearned(Refusal):
    """A task message numbered as a retry its call never had (its ``retries`` header above the count its
    workers keep in Redis): a broker writer's copy of a signed task (the token signs the kwargs, not the
    headers). Run, it would take the number of the call's real retry, which then ran as its copy (dropped);
    refused, the call keeps its retries. A dead letter only: the call is live, a reply would fail it."""

    journaled = False


def check_age(job: Job, settings: Settings) -> None:
    """``Expired`` if the job was signed longer ago than ``[security] task_max_age`` (a copy read off the
    broker and sent again after its run's retention: nothing would answer it from the journal)."""
    old = age(job)
    if old > settings.security.task_max_age:
        raise Expired(f"task signed {old / 86400:.1f} days ago, past [security] task_max_age "
                      f"({settings.security.task_max_age / 86400:g} days): refused unrun", job)


def parse_job(kwargs: Any, settings: Settings) -> Job:
    """The task's keyword arguments as a ``Job`` (``castor.fleet.wire.decode``); ``Refusal`` if they
    are malformed or oversized, or name a reply stream that is not a Castor one."""
    try:
        job = decode(kwargs)
    except Malformed as exc:
        raise Refusal(exc.reason, exc.job) from None
    limit = settings.security.max_argument_bytes
    if job.tool_name.startswith(MODEL_PREFIX):  # a model call's request: a whole conversation
        limit = max(limit, settings.llm.max_request_bytes)
    size = max(len(canonical(job.arguments).encode()), len(canonical(job.checked).encode()))
    if size > limit:
        raise Refusal(f"arguments are {size} bytes, above the limit of {limit}", job)
    if job.reply_to and not is_reply_stream(settings.redis.prefix, job.reply_to):
        raise Refusal(f"reply stream {job.reply_to[:200]!r} is not a Castor reply stream", job)
    return job


_NAMES: dict[str, tuple[ToolSpec, str]] = {}


def _function_name(spec: ToolSpec) -> str:
    """``function_name`` of the worker's own tool, worked out once per spec."""
    known = _NAMES.get(spec.name)
    if known is None or known[0] is not spec:
        known = _NAMES[spec.name] = (spec, function_name(spec.func))
    return known[1]


def check_tool(
    job: Job, registry: ToolRegistry, name: str, key: DataKey | None = None
) -> tuple[ToolSpec, dict[str, Any]]:
    """The worker's own spec of the job's tool and the checked arguments to call it with, its sensitive
    values decrypted with ``key`` (the fleet's); ``Refusal`` for a tool it does not serve, a value it
    cannot decrypt or arguments its schema rejects, or a call its coordinator checked against another
    function of the same name (``job.code``). ``job.checked`` stay as sent (the token signs them)."""
    if name != task_name(job.tool_name):
        raise Refusal(f"task {name!r} carries a call of {job.tool_name!r}", job)
    spec = registry.find(job.tool_name)
    if spec is None:
        served = ", ".join(registry.names()) or "nothing"
        raise Refusal(f"unknown tool {job.tool_name!r}: this pool serves {served}", job)
    own = _function_name(spec)
    if job.code and own and job.code != own:
        raise Refusal(
            f"{job.tool_name!r} is not the run's tool here: the run's is {job.code[:200]!r}, this pool's is "
            f"{own!r} (another function of the same name); start the pool with the run's tool, or run it "
            "with the pool's", job)
    checked, error = spec.schema.check(_clear(job.checked or {}, spec, key, job))
    if error is not None:
        raise Refusal(f"malformed arguments for {job.tool_name!r}: {error}", job)
    return spec, checked


async def authorize(
    job: Job, spec: ToolSpec, policy: ToolPolicy, settings: Settings, approvals: ApprovalStore | None
) -> None:
    """With a secret (every fleet but an insecure development one), a task runs only with the token its
    coordinator signed for exactly this call, whatever the tool. A worker without a secret refuses every
    task, unless the fleet is an insecure development one (``[security] insecure_dev``): there a plain
    tool runs unsigned and a gated one needs a human's approval of exactly this step and round, given for
    this tool with these arguments, in the shared approval store."""
    if verify(settings.security.secret, job):
        return
    where = f"for {job.tool_name!r} (run {job.run_id}, step {job.step})"
    if settings.security.secret:
        raise Refusal(f"{'invalid' if job.token else 'no'} authorization token {where}", job)
    if not settings.security.insecure_dev:
        raise Refusal(f"this worker has no secret to verify a task with and runs none: refused {where}", job)
    if not policy.gated:
        return
    decision = await approvals.decision(job.run_id, job.step) if approvals is not None else None
    if approvals is None or decision is None or decision.outcome != "approve" or decision.attempt != job.attempt:
        raise Refusal(
            f"destructive tool {job.tool_name!r} has no approval for run {job.run_id} step {job.step} "
            f"(round {job.attempt}) and no valid token",
            job,
        )
    approved = await approvals.decided_request(job.run_id, job.step)
    check_approved_call(job, spec, policy, approved, DataKey.for_fleet(settings.security.secret))


def check_approved_call(
    job: Job, spec: ToolSpec, policy: ToolPolicy, approved: PendingApproval | None, key: DataKey | None = None
) -> None:
    """``Refusal`` unless ``approved`` (the request the human approved) is this job's tool with its
    arguments, in its round: an approval of a step never lends its authority to another call. Both keep
    their sensitive values encrypted: they are compared decrypted with ``key``."""
    where = f"approval for run {job.run_id} step {job.step}"
    if approved is None or approved.attempt != job.attempt:
        raise Refusal(f"{where} (round {job.attempt}) does not say which call was approved", job)
    # The request shows the arguments as the human saw them, which may hold sensitive values.
    shown = f"{approved.tool_name}({redact(approved.arguments, policy.sensitive)})"
    if approved.tool_name != job.tool_name:
        raise Refusal(f"{where} was given for {shown}, not {job.tool_name!r}", job)
    if not _same_arguments(_clear(approved.arguments, spec, key, job), _clear(job.checked or {}, spec, key, job), spec):
        raise Refusal(f"{where} was given for {shown}, not these arguments", job)


def _same_arguments(approved: dict[str, Any], arguments: dict[str, Any], spec: ToolSpec) -> bool:
    """Equal as canonical JSON, or once both are checked by the tool's schema: the request holds the
    agent's raw arguments, the task the coordinator's checked ones (``"3"`` coerced to ``3``)."""
    if canonical(approved) == canonical(arguments):
        return True
    (mine, mine_error), (theirs, their_error) = spec.schema.check(approved), spec.schema.check(arguments)
    if mine_error is not None or their_error is not None:
        return False
    try:
        return canonical(mine) == canonical(theirs)
    except (TypeError, ValueError):  # coerced into values JSON cannot show: compare them as Python values
        return bool(mine == theirs)


def _clear(arguments: dict[str, Any], spec: ToolSpec, key: DataKey | None, job: Job) -> dict[str, Any]:
    """``arguments`` with their encrypted sensitive values decrypted; ``Refusal`` if one cannot be."""
    if key is None or not spec.sensitive:
        return arguments
    try:
        return opened(arguments, spec.sensitive, key)
    except SealError as exc:
        where = f"{job.tool_name!r} (run {job.run_id}, step {job.step})"
        raise Refusal(f"sensitive arguments of {where}: {exc}", job) from exc
