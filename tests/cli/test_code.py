"""The code a run is stamped with: one implementation (``castor._code``) for ``castor run`` and the
fleet, covering the local modules an agent or tool file imports, so a changed helper is named."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from castor import _code
from castor.checkpoint import RunSpec
from tests.cli.conftest import Cli
from tests.cli.test_options import spec_of

FILES = {
    "agent.py": """
        import json
        import helpers
        from pkg import sub
        from castor.lib import tool

        async def agent():
            from lazy import later  # imported only when it runs: still the agent's code
            return json.dumps([helpers.VALUE, sub.VALUE, later(), await tool("ping")])
    """,
    "helpers.py": "from deeper import BASE\nVALUE = BASE + 1\n",
    "deeper.py": "BASE = 41\n",
    "lazy.py": "def later():\n    return 'later'\n",
    "unused.py": "UNUSED = True\n",
    "pkg/__init__.py": "",
    "pkg/sub.py": "from . import sibling\nfrom .sibling import OTHER\nVALUE = sibling.OTHER + OTHER\n",
    "pkg/sibling.py": "OTHER = 2\n",
    "tools.py": "from pkg.sibling import OTHER\n\ndef ping() -> int:\n    return OTHER\n",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def paths(root: Path, *names: str) -> list[str]:
    return sorted(str(root / name) for name in names)


def test_the_hashed_files_are_the_spec_and_the_local_modules_it_imports(project: Path) -> None:
    local = ("agent.py", "helpers.py", "deeper.py", "lazy.py", "pkg/__init__.py", "pkg/sub.py", "pkg/sibling.py")
    assert _code.local_sources(f"{project}/agent.py:agent") == paths(project, *local)  # not unused.py, json, castor
    assert _code.local_sources(f"{project}/tools.py:ping") == paths(
        project, "tools.py", "pkg/__init__.py", "pkg/sibling.py"
    )
    spec = _code.run_spec(f"{project}/agent.py:agent", [f"{project}/tools.py:ping"])
    assert sorted(spec.sources) == paths(project, *local, "tools.py")
    assert _code.changed_files(spec) == []
    (project / "deeper.py").write_text("BASE = 1\n")  # a helper of a helper
    (project / "unused.py").write_text("UNUSED = False\n")  # not the run's code
    assert _code.changed_files(spec) == paths(project, "deeper.py")
    (project / "pkg" / "sibling.py").unlink()
    assert _code.changed_files(spec) == paths(project, "deeper.py", "pkg/sibling.py")
    assert _code.restamp(spec).source_hash != spec.source_hash


def test_a_module_spec_hashes_its_package_and_what_it_imports_from_it(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(project))
    assert _code.local_sources("pkg.sub:VALUE") == paths(project, "pkg/__init__.py", "pkg/sub.py", "pkg/sibling.py")


def test_castor_run_stamps_a_run_as_the_coordinators_check_it(cli: Cli, workdir: Path) -> None:
    (workdir / "fmt.py").write_text("def shout(text):\n    return text.upper()\n")
    with (workdir / "tools.py").open("a") as f:
        f.write("\nfrom fmt import shout  # a helper next to the tools\n")
    done = cli("run", "agents.py:cleanup", "--tool", "tools.py:search", "--tool", "tools.py:delete_file",
               "--hitl", "approve-all")
    assert done.code == 0, done.err
    recorded = RunSpec.model_validate(spec_of(cli, done.pid))
    fleet = _code.run_spec(recorded.agent, recorded.tools, recorded.destructive)
    assert recorded.sources == fleet.sources and recorded.source_hash == fleet.source_hash
    assert sorted(recorded.sources) == paths(workdir.resolve(), "agents.py", "tools.py", "fmt.py")


def test_a_changed_helper_is_named_on_resume(cli: Cli, workdir: Path) -> None:
    (workdir / "fmt.py").write_text("def shout(text):\n    return text.upper()\n")
    with (workdir / "tools.py").open("a") as f:
        f.write("\nfrom fmt import shout\n")
    pid = cli("run", "agents.py:cleanup", "--tool", "tools.py:search", "--tool", "tools.py:delete_file",
              "--destructive").pid
    with (workdir / "fmt.py").open("a") as f:
        f.write("\n# edited while the run waited\n")
    result = cli("resume", pid)
    assert result.code == 0
    assert f"castor: warning: the source of run '{pid}' changed" in result.err
    assert os.path.join(str(workdir.resolve()), "fmt.py") in result.err
    assert "tools.py" not in result.err.split("changed since it started", 1)[1].split(")")[0]
