"""Every Redis key name Castor uses, built here and nowhere else.

All keys of one run share the hash tag ``{<run>}`` (``castor:{<run>}:journal``, ``castor:{<run>}:budget``
...), so a script that touches only one run's keys stays valid on Redis Cluster; a scope's keys share
``{<scope>}``. Fleet-wide indexes (run status indexes, the pending-approval index, the reservation
index, the decision stream) are single keys without a tag.

The scripts that keep those indexes right in the same step as the run's own keys touch keys of more
than one tag: every charge (the reservation index, and the scopes it draws from), a run save (the
status indexes), an approval request and a decision (the pending index, the decision stream). They
are atomic on one Redis server, not across Cluster slots: on Redis Cluster the stores refuse with a
``ConfigError`` that says so (``_client``), never a half-applied write.
"""

from __future__ import annotations

import re

# --- one run --------------------------------------------------------------------------------------


def journal(prefix: str, run_id: str) -> str:
    """Sorted set: each step's ``SyscallRecord`` JSON (led by ``"_s": <step>``), scored by the step; write-once."""
    return f"{prefix}:{{{run_id}}}:journal"


def journal_meta(prefix: str, run_id: str) -> str:
    """Hash: ``parent``/``at`` of a fork (its shared prefix) and ``len``, the contiguous length."""
    return f"{prefix}:{{{run_id}}}:jmeta"


def failures(prefix: str, run_id: str) -> str:
    """List of the run's ``StepFailure`` JSON, oldest first."""
    return f"{prefix}:{{{run_id}}}:failures"


def ledger(prefix: str, run_id: str) -> str:
    """Hash: ``L:<resource>`` limit and ``U:<resource>`` used of the run's own budget, ``I`` the claim end the
    run is in the reservation index under."""
    return f"{prefix}:{{{run_id}}}:budget"


def charges(prefix: str, run_id: str) -> str:
    """Hash: step -> its unsettled charge: by whom, until when (the reservation), where and how much.

    The charge and journal scripts name this key from the run's ``ledger`` / ``journal`` key (same hash
    tag, last part swapped), so the three must keep the ``<prefix>:{<run>}:<part>`` shape.
    """
    return f"{prefix}:{{{run_id}}}:charges"


def replicated(prefix: str) -> str:
    """Counter: written to ask how many replicas have every earlier write (``castor.backends.redis.replicas``)."""
    return f"{prefix}:replicated"


def claims(prefix: str, run_id: str) -> str:
    """Hash: step -> ``<attempt>|<lease end>|<holder>``, who executes a step that must run at most once."""
    return f"{prefix}:{{{run_id}}}:claims"


def approvals(prefix: str, run_id: str) -> str:
    """Hash: ``p:<step>`` pending JSON, ``e:<step>`` its expiry, ``d:<step>`` the decision JSON."""
    return f"{prefix}:{{{run_id}}}:approvals"


def run_header(prefix: str, run_id: str) -> str:
    """Hash: the run's checkpoint header JSON and the fields ``castor ps`` lists."""
    return f"{prefix}:{{{run_id}}}:run"


def run_keys(prefix: str, run_id: str) -> list[str]:
    """Every key that holds the run's state; retention expires them together."""
    return [
        run_header(prefix, run_id),
        journal(prefix, run_id),
        journal_meta(prefix, run_id),
        failures(prefix, run_id),
        approvals(prefix, run_id),
        ledger(prefix, run_id),
        charges(prefix, run_id),
        claims(prefix, run_id),
    ]


# --- budget scopes --------------------------------------------------------------------------------


def scope(prefix: str, name: str) -> str:
    """Hash: ``L:<resource>`` / ``U:<resource>`` of a shared scope."""
    return f"{prefix}:scope:{{{name}}}"


def scope_names(prefix: str) -> str:
    """Set of every scope name ever set, for ``castor budget show`` without a name."""
    return f"{prefix}:scopes"


def reservations(prefix: str) -> str:
    """Sorted set of the runs with charges not settled yet, each scored no later than its earliest claim end."""
    return f"{prefix}:reservations"


def step_member(run_id: str, step: int) -> str:
    """A run's step as a member of a fleet-wide index: ``<step>:<run>`` (the step first: run ids hold colons)."""
    return f"{step}:{run_id}"


# --- run and approval indexes ---------------------------------------------------------------------


STATUSES = ("RUNNING", "SUSPENDED_FOR_HITL", "PREEMPTED", "COMPLETED", "FAILED")


def runs_all(prefix: str) -> str:
    """Sorted set of every run's pid, scored by creation time."""
    return f"{prefix}:runs:all"


def runs_by_status(prefix: str, status: str) -> str:
    """Sorted set of the pids of one status, scored by creation time."""
    return f"{prefix}:runs:status:{status}"


def runs_expiring(prefix: str) -> str:
    """Sorted set of finished runs scored by when retention drops them (to prune the indexes)."""
    return f"{prefix}:runs:expiring"


def approvals_pending(prefix: str) -> str:
    """Sorted set ``<step>:<run>`` of calls waiting for a decision, scored by creation time."""
    return f"{prefix}:approvals:pending"


def approvals_expiring(prefix: str) -> str:
    """Sorted set ``<step>:<run>`` of pending calls that expire, scored by expiry time."""
    return f"{prefix}:approvals:expiring"


# === fleet keys ===================================================================================
# Keys of the fleet machinery (coordinators, reply streams, run queue, leases). Later work adds its
# key functions here, below this line, so every key name stays in this module.


def decision_stream(prefix: str) -> str:
    """Stream announcing every decision (``run``, ``step``, ``outcome``, ``by``): waiters wake on it."""
    return f"{prefix}:decisions"


def reply_stream(prefix: str, consumer: str) -> str:
    """Stream a coordinator reads its tool results from (one per coordinator)."""
    return f"{prefix}:replies:{{{consumer}}}"


def lease(prefix: str, run_id: str) -> str:
    """String: the fencing token of the coordinator that holds the run (in the run's slot)."""
    return f"{prefix}:{{{run_id}}}:lease"



def reply_stream_prefix(prefix: str) -> str:
    """What every reply stream name starts with."""
    return f"{prefix}:replies:{{"


# A coordinator's name in its reply stream: host names, pids and hex ids, nothing Redis or a terminal
# would read as structure (no braces, colons, spaces or control characters).
CONSUMER_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


def is_reply_stream(prefix: str, name: str) -> bool:
    """Whether ``name`` is exactly ``reply_stream(prefix, <consumer>)`` for a consumer name of the safe
    set (``CONSUMER_NAME``): a worker replies to nothing else."""
    start = reply_stream_prefix(prefix)
    return name.startswith(start) and name.endswith("}") and bool(CONSUMER_NAME.fullmatch(name[len(start):-1]))


def secret_proof(prefix: str) -> str:
    """Hash: ``proof`` (``castor.fleet.sealing.secret_proof`` of the secret a coordinator signs tasks with),
    ``by`` and ``at``; the last coordinator to start writes it, a worker compares its own at start."""
    return f"{prefix}:fleet:secret-proof"


def dead_letters(prefix: str, pool: str) -> str:
    """List: the messages a pool's workers refused before they could tell which run sent them, or could
    not authenticate (newest first, capped): why, how big, a digest, what the headers said; never a body."""
    return f"{prefix}:deadletters:{pool}"


def dead_letters_pattern(prefix: str) -> str:
    """``SCAN`` pattern of every pool's dead-letter list."""
    return f"{prefix}:deadletters:*"


def started_marker(prefix: str, run_id: str, step: int) -> str:
    """String: the approval round (attempt) a worker started executing the step in. A lost worker leaves
    it behind, which is how a redelivered task knows the step is in doubt; a journaled step drops it."""
    return f"{prefix}:{{{run_id}}}:started:{step}"


def heartbeat(prefix: str, run_id: str, step: int) -> str:
    """String: the id of the worker running the step, with a TTL of ``[workers] heartbeat`` seconds that
    worker renews while the tool runs. A started step whose heartbeat expired lost its worker (in doubt);
    one whose heartbeat is there still runs, and a second delivery waits for its result."""
    return f"{prefix}:{{{run_id}}}:alive:{step}"


def abandoned(prefix: str, run_id: str, step: int) -> str:
    """Set: the ids of tasks for the step whose coordinator gave up before any worker took them (their
    publish failed, and may have landed); a worker that takes one later drops it."""
    return f"{prefix}:{{{run_id}}}:abandoned:{step}"


def chunks(prefix: str, run_id: str, step: int, attempt: int) -> str:
    """Stream: the chunks of text a worker of the ``llm`` pool forwards while it streams a model step's answer
    (round ``attempt``), each signed; bounded in length and time (``castor.llm.chunks``)."""
    return f"{prefix}:{{{run_id}}}:chunks:{step}:{attempt}"


def spent_tokens(prefix: str, run_id: str, step: int) -> str:
    """Set: the tokens of the step's tasks whose tool ran and failed for good (a failure is not cached: the
    step may be sent again, signed anew). A copy of one of them read off the broker runs nothing."""
    return f"{prefix}:{{{run_id}}}:spent:{step}"


def retries(prefix: str, run_id: str, step: int) -> str:
    """Hash: how many times each of the step's tasks (by token; an unsigned one by task id) was retried after
    its tool raised, as its workers counted (``workers/lua/retry.lua``), and each count's answer by receipt;
    a message's own ``retries`` header is not trusted."""
    return f"{prefix}:{{{run_id}}}:retried:{step}"


def deliveries(prefix: str, run_id: str, step: int) -> str:
    """Set: the task messages (``<task id>/<retries>``) workers took for the step while it is unjournaled. A
    second copy of one (a publish retried after its first try landed) is dropped; a redelivery is no copy."""
    return f"{prefix}:{{{run_id}}}:delivered:{step}"


# --- the coordinators: run queue, leases, parked runs, registry --------------------------------------


def run_queue(prefix: str) -> str:
    """List of pids ready to be driven: submitted, decided, drained or taken over. Taken from the right."""
    return f"{prefix}:fleet:queue"


def taking(prefix: str, coordinator: str) -> str:
    """List: pids a coordinator moved off the queue and has not leased yet (reliable take)."""
    return f"{prefix}:fleet:taking:{coordinator}"


def leased(prefix: str) -> str:
    """Sorted set: pids under a lease, scored by when the lease runs out (ms); the takeover sweep reads it."""
    return f"{prefix}:fleet:leased"


def parked(prefix: str) -> str:
    """Hash: pid -> the step it waits on, for runs that wait for a human and hold no coordinator."""
    return f"{prefix}:fleet:parked"


def refused(prefix: str) -> str:
    """Hash: pid -> why a coordinator refused to resume it (its code changed)."""
    return f"{prefix}:fleet:refused"


def cancelled(prefix: str) -> str:
    """Set: pids an operator cancelled; whoever holds or takes one stops it."""
    return f"{prefix}:fleet:cancelled"


def lapsed(prefix: str) -> str:
    """Set: pids queued because their lease ran out without a release; their next lease is a takeover."""
    return f"{prefix}:fleet:lapsed"


def takeovers(prefix: str) -> str:
    """Hash: pid -> takeovers in a row (leases on it that ran out unreleased); a release clears it."""
    return f"{prefix}:fleet:takeovers"


def control_stream(prefix: str) -> str:
    """Stream of operator commands to coordinators (``cancel`` a run)."""
    return f"{prefix}:fleet:control"


def coordinators(prefix: str) -> str:
    """Sorted set: live coordinator names, scored by when their registration runs out (ms)."""
    return f"{prefix}:fleet:coordinators"


def coordinator(prefix: str, name: str) -> str:
    """Hash: one coordinator's host, pid, concurrency, load and state, expiring with its registration."""
    return f"{prefix}:fleet:coordinator:{name}"


def pool_workers(prefix: str, pool: str) -> str:
    """Sorted set: the worker processes of a pool (node name) scored by when each last said it is alive
    (unix time, renewed every few seconds): ``ps`` / ``inspect`` tell a call waiting on a pool nobody
    consumes."""
    return f"{prefix}:fleet:workers:{pool}"


def submitted(prefix: str) -> str:
    """Set: pids submitted to the fleet (a fork of one is submitted to the fleet too)."""
    return f"{prefix}:fleet:submitted"


# --- model rate limits ----------------------------------------------------------------------------


def llm_limit(prefix: str, name: str) -> list[str]:
    """One model key's rate limit (``name``: ``provider/model/key id``), under the tag ``{<name>}``: the
    window (sorted set: reservation -> ms taken), the amounts (hash: reservation -> tokens, ``=sum``), the pause,
    the first caller in line (``<since ms>:<reservation>``)."""
    base = f"{prefix}:llm:limit:{{{name}}}"
    return [f"{base}:window", f"{base}:tokens", f"{base}:pause", f"{base}:line"]
