"""``castor budget`` and ``castor run --scope``: shared scopes in the embedded store."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import RUN, Cli, calls


def test_scope_lifecycle(cli: Cli) -> None:
    made = cli("budget", "set", "team-a", "api=2", "gpu=5")
    assert made.code == 0 and "api: 0 used / 2 limit, 2 left" in made.out
    shown = cli("budget", "show", "team-a", "--json")
    assert json.loads(shown.out) == {
        "scope": "team-a",
        "resources": {"api": {"limit": 2.0, "used": 0.0, "left": 2.0}, "gpu": {"limit": 5.0, "used": 0.0, "left": 5.0}},
    }
    topped = cli("budget", "top-up", "team-a", "api=3")
    assert "api: 0 used / 5 limit, 5 left" in topped.out


def test_runs_draw_from_their_scope_all_or_nothing(cli: Cli, workdir: Path) -> None:
    cli("budget", "set", "team-a", "api=2")
    run = cli(*RUN, "--speculative", "--scope", "team-a", "--budget", "api=100")
    assert run.code == 0, run.err
    assert "INSUFFICIENT_CAPABILITY" in run.out  # the third call found the scope empty
    assert calls(workdir) == ["search", "delete_file"]
    shown = cli("budget", "show", "team-a", "--json")
    assert json.loads(shown.out)["resources"]["api"]["used"] == 2.0
    assert cli("budget", "reset", "team-a").code == 0
    assert json.loads(cli("budget", "show", "team-a", "--json").out)["resources"]["api"]["used"] == 0.0


def test_budget_errors(cli: Cli) -> None:
    missing = cli("budget", "show", "ghost")
    assert missing.code == 1 and "'ghost' does not exist" in missing.err
    assert cli("budget", "top-up", "ghost", "api=1").code == 1
    bad = cli("budget", "set", "team", "api")
    assert bad.code == 1 and "key=value" in bad.err
    empty = cli("budget", "set", "team")
    assert empty.code == 1 and "api=1000" in empty.err
    unknown_scope = cli(*RUN, "--scope", "nope")
    assert unknown_scope.code == 1 and "castor budget set nope" in unknown_scope.err
    assert cli("budget").code == 2


def test_global_options_after_the_action(cli: Cli, workdir: Path) -> None:
    assert cli("budget", "set", "s", "api=1", "--db", "other.db").code == 0
    assert (workdir / "other.db").exists()
    assert cli("budget", "show", "s", "--db", "other.db").code == 0
    assert cli("budget", "show", "s").code == 1  # not in ./castor.db
