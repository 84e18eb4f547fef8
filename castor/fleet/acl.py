"""Redis users for a fleet whose broker is its Redis: one for Castor's processes, one that reaches the
broker's keys and nothing else.

On a Redis broker, whoever holds the broker's URL holds the fleet's state too: the runs, the journal,
the budgets and the approvals a human decides. A process that only watches the broker (Flower, a
monitoring probe) then needs a user confined to what kombu keeps there, so that its credentials, leaked
or stolen, let nobody decide for a human, rewrite a journal or name the code a coordinator imports.

``broker_user(settings, ...)`` is that user's rules: the keys kombu's Redis transport makes under the
fleet's key prefix (queues, bindings, the unacked index, event and reply queues), its fan-out channels
(task events, remote control), and the commands kombu and Flower send, without the ones that reach
beyond a key (``FUNCTION``, ``SCRIPT FLUSH``, ``SCAN``, ``KEYS``, ``SORT``, ``CONFIG``, any
``@dangerous``). A Lua script it runs is held to the same keys by Redis itself. ``fleet_user`` has every
key and command. ``reached_state_keys`` names the state keys a broker user's patterns would match (none
with the shipped prefixes; a prefix that nests one in the other can); ``acl_file`` refuses then.

``castor redis-acl`` prints ``acl_file`` for a config; ``docker-compose.yml`` gives its Redis the same
two users (``tests/fleet/test_compose.py`` holds the two to each other).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from castor.backends.redis import keys as state_keys
from castor.errors import ConfigError
from castor.settings import Settings

FLEET_USER, BROKER_USER = "castor", "flower"
FLEET_PASSWORD_ENV, BROKER_PASSWORD_ENV = "CASTOR_REDIS_PASSWORD", "CASTOR_FLOWER_REDIS_PASSWORD"
GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
MIN_PASSWORD = 16

# What kombu's Redis transport and Flower send (lists, sets, the unacked hash and index, the mutex, pub/sub,
# MULTI, kombu's binding scripts), read off Redis's ACL log with Flower and a publisher under a user that
# had nothing else; then every command that reaches beyond the keys a user is given is taken away again.
BROKER_COMMANDS = (
    "+@connection", "+@list", "+@set", "+@sortedset", "+@hash", "+@string", "+@pubsub", "+@transaction",
    "+@scripting", "+select", "+del", "+exists", "+expire", "+pexpire", "+ttl", "+pttl", "+type", "+time",
    "-@dangerous", "-function", "-script|flush", "-script|kill", "-script|debug",
)
# kombu names a pidbox reply queue after a UUID: "<uuid>.reply.celery.pidbox"
UUID = "????????-????-????-????-????????????"


@dataclass(frozen=True)
class AclUser:
    """One Redis user: its name, its password's SHA-256, the key and channel patterns and commands it gets."""

    name: str
    password_sha256: str
    keys: tuple[str, ...]
    channels: tuple[str, ...]
    commands: tuple[str, ...]

    def line(self) -> str:
        """The user as a line of an ACL file (or a ``user`` directive of redis.conf)."""
        rules = [f"#{self.password_sha256}", *(f"~{k}" for k in self.keys), *(f"&{c}" for c in self.channels)]
        return " ".join(["user", self.name, "on", "resetchannels", *rules, "-@all", *self.commands])


def broker_keys(settings: Settings) -> tuple[str, ...]:
    """The key patterns of what kombu keeps on the fleet's Redis broker, under its key prefix."""
    queues, at = settings.broker.queue_prefix, f"{settings.broker.queue_prefix}:"
    return (
        f"{at}{queues}.*",  # the pools' queues (a priority's list adds a suffix)
        f"{at}_kombu.*",  # exchange bindings and their deadlines
        f"{at}unacked*",  # delivered, not yet acknowledged: the hash, its index and mutex
        f"{at}celeryev.*",  # an event receiver's queue (Flower's)
        f"{at}{UUID}.reply.celery.pidbox*",  # remote-control answers (ping, stats, active_queues)
    )


def broker_channels(settings: Settings) -> tuple[str, ...]:
    """The pub/sub channels of the broker's fan-out exchanges (task events, remote control), and the one
    pattern Flower subscribes to: Redis admits a PSUBSCRIBE only for a pattern it was given as written."""
    fanout = f"{settings.broker.queue_prefix}:/{_db(settings.broker_url)}."
    return (f"{fanout}*", f"{fanout}celeryev/*")


def broker_user(settings: Settings, password: str, name: str = BROKER_USER) -> AclUser:
    """The user that reaches the broker's keys and channels of ``settings``, and nothing of the state."""
    return AclUser(name, _sha256(password), broker_keys(settings), broker_channels(settings), BROKER_COMMANDS)


def fleet_user(password: str, name: str = FLEET_USER) -> AclUser:
    """The user of Castor's own processes (coordinators, workers, the console, the CLI): everything."""
    return AclUser(name, _sha256(password), ("*",), ("*",), ("+@all",))


def reached_state_keys(settings: Settings) -> list[str]:
    """Castor's state keys (one of each kind, named to collide where a name can) that the broker user's
    key patterns would match: none, or the prefixes nest one in the other."""
    patterns = broker_keys(settings)
    return [key for key in _state_key_samples(settings.redis.prefix) if any(fnmatchcase(key, p) for p in patterns)]


def acl_file(settings: Settings, fleet_password: str, broker_password: str, *,
             fleet_name: str = FLEET_USER, broker_name: str = BROKER_USER) -> str:
    """An ACL file for the fleet's Redis: the default user off, the fleet's user and the broker user.

    ``ConfigError`` when the broker is not Redis, a password is short, or the prefixes would let the
    broker user reach state keys."""
    if settings.broker_transport != "redis":
        raise ConfigError(f"the broker is {settings.broker_transport}, not Redis: its users are the broker's own "
                          "(a RabbitMQ vhost keeps them apart from Castor's Redis); no Redis broker user to make")
    for env, password in ((FLEET_PASSWORD_ENV, fleet_password), (BROKER_PASSWORD_ENV, broker_password)):
        if len(password) < MIN_PASSWORD:
            raise ConfigError(f"{env} must be at least {MIN_PASSWORD} characters; generate one with {GENERATE}")
    if fleet_password == broker_password:
        raise ConfigError(f"{FLEET_PASSWORD_ENV} and {BROKER_PASSWORD_ENV} must differ")
    reached = reached_state_keys(settings)
    if reached:
        raise ConfigError(
            f"[redis] prefix {settings.redis.prefix!r} nests in [broker] queue_prefix "
            f"{settings.broker.queue_prefix!r}: the broker user would reach state keys such as {reached[0]!r}; "
            "give the two prefixes that do not start one with the other"
        )
    lines = [  # no comment line: Redis refuses an ACL file that has one
        "user default off resetchannels -@all",
        fleet_user(fleet_password, fleet_name).line(),
        broker_user(settings, broker_password, broker_name).line(),
    ]
    return "\n".join(lines) + "\n"


def _state_key_samples(prefix: str) -> Iterator[str]:
    # Every key function of castor.backends.redis.keys whose first argument is the prefix, called with
    # names shaped like the broker's own keys, so that a pattern that could take a state key does.
    names = ("castor.default", "_kombu.binding.x", "unacked", "celeryev.x",
             "00000000-0000-0000-0000-000000000000.reply.celery.pidbox")
    for _, func in inspect.getmembers(state_keys, inspect.isfunction):
        params = list(inspect.signature(func).parameters)
        if func.__module__ != state_keys.__name__ or not params or params[0] != "prefix":
            continue
        for name in names:
            key = func(prefix, *([name] * (len(params) - 1)))
            if isinstance(key, str):
                yield key
    yield f"{prefix}:mmu:{{castor.default}}"  # the memory manager's pages (castor.mmu.drivers.redis)


def _db(url: str) -> str:
    """The database number a broker URL names (a Sentinel URL's follows its service's name)."""
    from castor.backends.redis.sentinel import is_sentinel, parse

    if is_sentinel(url):
        return str(parse(url).db)
    return urlsplit(url).path.strip("/") or "0"


def _sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()
