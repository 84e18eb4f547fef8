"""``[console]``: who may use ``castor console`` and where it announces new pending calls.

    [console]
    base_url = "https://castor.example.com"    # the links a webhook message carries
    [[console.users]]
    name = "alice"                             # what the journal records as ``decided_by``
    token = "..."                              # her sign-in and API bearer token
    role = "approver"                          # viewer, approver or admin
    tools = ["send_email"]                     # an approver limited to these tools (empty: every tool)
    [console.webhook]
    url = "https://chat.example.com/hooks/..."
    secret = "..."                             # HMAC-SHA256 key of the X-Castor-Signature header
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from castor.errors import ConfigError

Role = Literal["viewer", "approver", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "approver", "admin")  # each may do what the ones before it may


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsoleUser(_Part):
    """One person (or program) allowed in: a name, a secret token and a role."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    token: Annotated[str, Field(min_length=16, repr=False)]  # short tokens are guessable: refused
    role: Role = "viewer"
    tools: frozenset[str] = frozenset()  # an approver decides only these tools (empty: all)

    def may(self, role: Role) -> bool:
        """Whether this user has ``role`` or a higher one."""
        return at_least(self.role, role)

    def may_decide(self, tool: str) -> bool:
        """Whether this user may approve, reject or modify a call to ``tool``."""
        return decides(self.role, self.tools, tool)


def at_least(role: Role, needed: Role) -> bool:
    """Whether ``role`` is ``needed`` or a higher one."""
    return ROLES.index(role) >= ROLES.index(needed)


def decides(role: Role, tools: frozenset[str], tool: str) -> bool:
    """Whether a user of ``role``, limited to ``tools`` (empty: all), may decide a call to ``tool``; an
    admin decides every tool."""
    return at_least(role, "approver") and (role == "admin" or not tools or tool in tools)


class WebhookSection(_Part):
    """Where every new pending call is announced, and the key its body is signed with."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    secret: Annotated[str | None, Field(repr=False)] = None
    retries: Annotated[int, Field(strict=True, ge=0, le=20)] = 4
    backoff: Annotated[float, Field(strict=True, gt=0, le=600)] = 1.0  # seconds, doubled on every retry


class ConsoleSection(_Part):
    """``[console]``: users and roles, the public address, the webhook."""

    users: tuple[ConsoleUser, ...] = ()
    base_url: str = ""  # default: the address the console listens on
    webhook: WebhookSection | None = None
    poll_interval: Annotated[float, Field(strict=True, gt=0, le=60)] = 1.0  # how often live views look again
    resume: Annotated[bool, Field(strict=True)] = True  # after a decision, resume a CLI run of a SQLite store

    @model_validator(mode="after")
    def _distinct(self) -> ConsoleSection:
        names = [u.name for u in self.users]
        tokens = [u.token for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError("two [[console.users]] have the same name")
        if len(set(tokens)) != len(tokens):
            raise ValueError("two [[console.users]] have the same token")
        return self


def console_error(error: Any, source: str) -> ConfigError:
    """A validation error of ``[console]`` (pydantic's ``ErrorDetails``) as one line that names the key and
    never shows the value (a token or a secret)."""
    loc = [str(part) for part in error["loc"][1:]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if loc[:1] == ["users"] and len(loc) > 1 and loc[1].isdigit():
        where = f"[[console.users]] #{int(loc[1]) + 1}"
        if error["type"] == "extra_forbidden" and len(loc) == 3:  # worded as the other sections' unknown keys
            known = ", ".join(ConsoleUser.model_fields)
            return ConfigError(f"{source}: unknown key {loc[2]!r} in {where}; known keys: {known}")
        where += f" {'.'.join(loc[2:])}" if len(loc) > 2 else ""
    else:
        where = f"[console{'.' + '.'.join(loc[:-1]) if len(loc) > 1 else ''}]" + (f" {loc[-1]}" if loc else "")
    return ConfigError(f"{source}: {where}: {message}")
