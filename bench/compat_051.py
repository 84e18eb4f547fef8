"""Run castor-kernel 0.5.1's own test suite against this checkout and print what passes and fails.

    python bench/compat_051.py              # download the sdist, run its tests/, print the totals by file
    python bench/compat_051.py --failures   # also one line per failing test: its id and first error line
    python bench/compat_051.py --sdist F    # use a downloaded castor_kernel-0.5.1.tar.gz instead

It measures how much code written for 0.5.1 runs here unchanged. Everything happens in a temporary
directory: the sdist is fetched with ``pip download --no-deps --no-binary :all: castor-kernel==0.5.1``, its
``tests/`` and ``examples/`` (code written for 0.5.1, imported by its tests) are unpacked there and run by
this interpreter with this checkout first on ``sys.path``; 0.5.1's own ``src/`` is never importable. Not a
test: nothing here fails a build, and none of 0.5.1's tests enter the repository. ``docs/compatibility.md``
explains each failure: the 0.5.1 defect or internal it pins, or the gap still open.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = "castor-kernel==0.5.1"
INI = "[pytest]\nasyncio_mode = auto\naddopts = -p no:cacheprovider\n"


def fetch(into: Path) -> Path:
    """The sdist of castor-kernel 0.5.1, downloaded into ``into``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", SPEC, "-d", str(into)],
        check=True,
    )
    return next(into.glob("castor_kernel-0.5.1.tar.gz"))


def unpack(sdist: Path, into: Path) -> Path:
    """Its ``tests/`` and ``examples/`` in a fresh directory (nothing of its ``src/``)."""
    work = into / "suite"
    work.mkdir()
    with tarfile.open(sdist) as tar:
        members = [
            m for m in tar.getmembers()
            if m.name.split("/")[1:2] in (["tests"], ["examples"]) and not m.issym() and not m.islnk()
        ]
        tar.extractall(into / "sdist", members=members, filter="data")
    top = next((into / "sdist").iterdir())
    for part in ("tests", "examples"):
        if (top / part).exists():
            shutil.copytree(top / part, work / part)
    (work / "pytest.ini").write_text(INI)
    return work


def run(work: Path, timeout: float) -> Path:
    """Run the suite; the JUnit XML report it wrote."""
    report = work / "report.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(work)])}
    subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "--continue-on-collection-errors", "--timeout", str(timeout),
            f"--junitxml={report}", "tests",
        ],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return report


def outcomes(report: Path) -> list[tuple[str, str, str]]:
    """``(test id, outcome, first line of the error)`` per test; collection errors count as one test each."""
    rows = []
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = first_error(found.text or "", found.get("message") or "")
                break
        rows.append((name, outcome, message))
    return rows


def first_error(text: str, message: str) -> str:
    """The line that says what went wrong: pytest's first ``E`` line, else the report's message."""
    for line in text.splitlines():
        if line.startswith("E "):
            return line[1:].strip()[:160]
    return message.strip().splitlines()[0][:160] if message.strip() else ""


def main(argv: list[str] | None = None) -> int:
    """Download, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="a castor_kernel-0.5.1.tar.gz already downloaded")
    parser.add_argument("--failures", action="store_true", help="print each failing test and its error")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per test (default 30)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="castor-compat-") as tmp:
        sdist = args.sdist or fetch(Path(tmp))
        rows = outcomes(run(unpack(sdist, Path(tmp)), args.timeout))
    totals = Counter(outcome for _, outcome, _ in rows)
    by_file: dict[str, Counter[str]] = {}
    for name, outcome, _ in rows:
        module = ".".join(p for p in name.split("::")[0].split(".") if not p.startswith("Test"))
        by_file.setdefault(module, Counter())[outcome] += 1
    for module, counts in sorted(by_file.items()):
        print(f"{module:55} " + "  ".join(f"{k} {counts[k]}" for k in ("passed", "failed", "error", "skipped")))
    if args.failures:
        print()
        for name, outcome, message in rows:
            if outcome in ("failed", "error"):
                print(f"{outcome.upper():6} {name}: {message}")
    print(
        f"\ncastor-kernel 0.5.1's tests against this checkout: passed {totals['passed']}, failed {totals['failed']}, "
        f"errors {totals['error']}, skipped {totals['skipped']} (of {len(rows)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
