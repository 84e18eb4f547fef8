"""What ``pip install`` puts in site-packages: ``castor`` and nothing else, the fleet's roles under it.

The repository keeps the fleet's two roles in top-level folders (``workers/``, ``scheduler/``); the build
installs them as ``castor.fleet.workers`` and ``castor.fleet.scheduler`` (``[tool.setuptools]
package-dir``), so no generic name such as ``workers`` lands in site-packages. The package list is
explicit: the first test fails when a package of ``castor/`` is missing from it, the second builds the
wheel and reads its file list.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROLES = {"castor.fleet.workers": "workers", "castor.fleet.scheduler": "scheduler"}


def setuptools_table() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def castor_packages() -> set[str]:
    """The packages of ``castor/`` on disk, by dotted name."""
    return {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "castor").rglob("__init__.py")}


def test_every_package_is_listed_and_the_roles_install_under_castor() -> None:
    table = setuptools_table()
    assert set(table["packages"]) == castor_packages() | set(ROLES)
    assert {name: folder for name, folder in table["package-dir"].items() if name} == ROLES
    assert {name.split(".")[0] for name in table["packages"]} == {"castor"}
    for name, folder in ROLES.items():
        assert table["package-data"][name] == ["lua/*.lua"]
        assert list((REPO / folder / "lua").glob("*.lua")), f"{folder}/lua has no scripts"


@pytest.mark.fleet
def test_the_wheel_holds_castor_only_with_the_roles_and_their_scripts(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("castor", "workers", "scheduler"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = out.glob("castor_kernel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"castor"}
    [top_level] = [name for name in names if name.endswith(".dist-info/top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["castor"]
    for name, folder in ROLES.items():
        installed = name.replace(".", "/")
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".lua"):
                assert f"{installed}/{path.relative_to(REPO / folder).as_posix()}" in names
    for package in castor_packages():
        assert f"{package.replace('.', '/')}/__init__.py" in names
    expected_data = {p.relative_to(REPO).as_posix() for p in (REPO / "castor").rglob("*.lua")}
    assert expected_data <= names and "castor/py.typed" in names
