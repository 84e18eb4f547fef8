"""``[console]`` in castor.toml: users, roles and the webhook, and one-line errors that never show a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from castor.console.auth import Gate
from castor.errors import ConfigError
from castor.settings import load_settings
from castor.settings._console import ConsoleSection

GOOD = """
[[console.users]]
name = "alice"
token = "alice-token-0123456789"
role = "approver"
tools = ["purge_logs"]

[console]
base_url = "https://castor.example.com"

[console.webhook]
url = "https://chat.example.com/hooks/1"
secret = "webhook-secret"
"""


def test_users_roles_and_webhook_come_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "castor.toml"
    path.write_text(GOOD)
    console = load_settings(path, env={}).console
    [alice] = console.users
    assert (alice.name, alice.role, alice.tools) == ("alice", "approver", frozenset({"purge_logs"}))
    assert alice.may_decide("purge_logs") and not alice.may_decide("notify") and not alice.may("admin")
    assert console.webhook is not None and console.webhook.url == "https://chat.example.com/hooks/1"
    assert "alice-token" not in repr(console) and "webhook-secret" not in repr(console)
    who = Gate(console).by_token("alice-token-0123456789")
    assert who is not None and who.name == "alice" and Gate(console).by_token("alice-token-012345678") is None


@pytest.mark.parametrize(("text", "expected"), [
    ('[[console.users]]\nname = "a"\ntoken = "short"\n', "[[console.users]] #1 token: String should have at least 16"),
    ('[[console.users]]\nname = "a"\ntoken = "0123456789abcdef"\nrole = "boss"\n', "#1 role: Input should be"),
    ('[[console.users]]\nname = "a"\ntoken = "0123456789abcdef"\n[[console.users]]\nname = "a"\n'
     'token = "0123456789abcdeg"\n', "two [[console.users]] have the same name"),
    ('[console.webhook]\nurl = "ftp://x"\n', "[console.webhook] url"),
    ("[console]\nusers = 3\n", "[console] users"),
    ('[[console.users]]\nname = "a"\ntoken = "0123456789abcdef"\ntool = ["x"]\n',  # as [workers]' unknown keys
     "unknown key 'tool' in [[console.users]] #1; known keys: name, token, role, tools"),
])
def test_a_bad_console_section_is_one_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "castor.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    message = str(caught.value)
    assert expected in message and "\n" not in message and "0123456789abcde" not in message
    assert message.startswith(str(path))


def test_the_environments_token_adds_one_admin_and_never_shows_the_token(tmp_path: Path) -> None:
    from castor.console.command import check_binding, console_settings

    path = tmp_path / "castor.toml"
    path.write_text(GOOD)
    configured = load_settings(path, env={}).console
    assert console_settings(configured, env={}) == configured
    token = "env-admin-token-0123456789"
    settings = console_settings(configured, env={"CASTOR_CONSOLE_TOKEN": token, "CASTOR_CONSOLE_USER": "ops"})
    assert [(u.name, u.role) for u in settings.users] == [("alice", "approver"), ("ops", "admin")]
    assert settings.webhook == configured.webhook  # the rest of [console] is kept
    assert Gate(settings).identify(f"Bearer {token}", None).name == "ops"  # type: ignore[union-attr]
    assert console_settings(configured, env={"CASTOR_CONSOLE_TOKEN": token}).users[-1].name == "admin"
    check_binding("0.0.0.0", len(console_settings(ConsoleSection(), env={"CASTOR_CONSOLE_TOKEN": token}).users))
    with pytest.raises(ConfigError, match=r"beyond this machine.*CASTOR_CONSOLE_TOKEN"):
        check_binding("0.0.0.0", len(console_settings(ConsoleSection(), env={}).users))
    for env, problem in (
        ({"CASTOR_CONSOLE_TOKEN": "short-one"}, "at least 16 characters"),
        ({"CASTOR_CONSOLE_TOKEN": "alice-token-0123456789"}, "same token"),
        ({"CASTOR_CONSOLE_TOKEN": token, "CASTOR_CONSOLE_USER": "alice"}, "same name"),
    ):
        with pytest.raises(ConfigError, match=f"^CASTOR_CONSOLE_TOKEN / CASTOR_CONSOLE_USER: .*{problem}") as err:
            console_settings(configured, env=env)
        assert env["CASTOR_CONSOLE_TOKEN"] not in str(err.value) and "\n" not in str(err.value)
