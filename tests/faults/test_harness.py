"""The fault harness in quick mode (``python bench/faults.py --quick``): a fleet of real processes on its
own Redis, every fault injected a few times, and every row of its table must hold. Select it alone with
``pytest -m faults``; leave it out with ``-m 'not faults'``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.faults
@pytest.mark.timeout(400)  # the harness's own budget is 3 minutes on a 2-core machine; margin for a loaded one
def test_every_row_of_the_quick_fault_table_holds() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "faults.py"), "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=380)
    assert done.stdout.strip(), f"the harness printed nothing (exit {done.returncode}): {done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    failing = {row["fault"]: row["problems"] for row in report["rows"] if not row["holds"]}
    assert not failing, json.dumps(failing, indent=2)
    assert report["rows"] and done.returncode == 0, done.stderr[-3000:]
