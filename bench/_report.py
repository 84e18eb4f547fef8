"""Turn the figures of ``bench/kernel.py`` into rows, a console table and a section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Embedded kernel"
ICOUNT_HEADING = "### Instruction counts"  # its last subsection, which write_section keeps


@dataclass
class Row:
    """One figure: what it is, its target (None: none), ours and the reference's wall-clock and CPU samples."""

    label: str
    unit: str
    target: float | None
    ours: list[float] | None
    reference: list[float] | None
    note: str = ""
    ours_cpu: list[float] | None = None
    reference_cpu: list[float] | None = None

    def med(self, samples: list[float] | None) -> float | None:
        return statistics.median(samples) if samples else None

    @property
    def verdict(self) -> str:
        ours = self.med(self.ours)
        if self.target is None or ours is None:
            return ""
        return "ok" if ours <= self.target else "MISS"


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if value >= 100:
        text = f"{value:,.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def spread(samples: list[float] | None) -> str:
    if not samples:
        return "—"
    return f"{fmt(min(samples))}–{fmt(max(samples))}"


def difference(a: list[float] | None, b: list[float] | None) -> list[float] | None:
    """Pairwise ``a - b`` (both measured in the same process, same repetition)."""
    if not a or not b:
        return None
    return [x - y for x, y in zip(a, b, strict=True)]


def _pair(figures: dict[str, Any] | None, key: str) -> tuple[list[float] | None, list[float] | None]:
    """The wall-clock and CPU samples of one figure (None, None when it was not measured)."""
    entry = (figures or {}).get(key)
    if not entry:
        return None, None
    return entry["wall"], entry.get("cpu")


def rows(ours: dict[str, Any], ref: dict[str, Any] | None, calls: int) -> list[Row]:
    """The table of ``bench/kernel.py``, in the order the issue states its targets."""
    half, full = str(calls // 2), str(calls)
    direct, plain, charged, replay = (
        (_pair(ours, key), _pair(ref, key)) for key in ("direct_us", "plain_us", "charged_us", "replay_us")
    )

    def overhead(side: int, kind: int) -> list[float] | None:
        return difference(charged[side][kind], direct[side][kind])

    def fork(figures: dict[str, Any] | None, at: str) -> list[float] | None:
        return ((figures or {}).get("fork_ms") or {}).get(at)

    out = [
        Row("direct call (await of the tool function)", "µs", None, direct[0][0], direct[1][0], "",
            direct[0][1], direct[1][1]),
        Row("syscall, no budget", "µs", None, plain[0][0], plain[1][0], "", plain[0][1], plain[1][1]),
        Row("syscall, budget charged", "µs", None, charged[0][0], charged[1][0],
            "ours: budgets={'api': 1e9}; 0.5.1: same, tool declared cost_per_use=1", charged[0][1], charged[1][1]),
        Row("  charged syscall − direct call", "µs", 10.0, overhead(0, 0), overhead(1, 0), "",
            overhead(0, 1), overhead(1, 1)),
        Row("replayed step (resume a completed run)", "µs", 3.0, replay[0][0], replay[1][0],
            "whole run(agent, checkpoint=cp) / steps", replay[0][1], replay[1][1]),
        Row(f"fork() of a {calls:,}-step run at step {int(half):,}", "ms", 1.0, fork(ours, half), fork(ref, half)),
        Row(f"fork() of a {calls:,}-step run at step {int(full):,}", "ms", 1.0, fork(ours, full), fork(ref, full)),
    ]
    if "sqlite_us" in ours:
        wall, cpu = _pair(ours, "sqlite_us")
        out.append(Row("SQLite store: persisted syscall, charged", "µs", 60.0, wall, None,
                       "sqlite:///file.db, WAL, synchronous=NORMAL", cpu))
        once, once_cpu = _pair(ours, "sqlite_once_us")
        if once:
            out.append(Row("  the same on ?at_most_once=1", "µs", None, once, None,
                           "every plain call claimed before it runs, released after", once_cpu))
        out.append(Row("  baseline: one committed sqlite3 insert", "µs", None, ours["sqlite_insert_us"], None,
                       "plain sqlite3, a journal-sized row, our store's pragmas: "
                       + ", ".join(f"{k}={v}" for k, v in ours.get("sqlite_pragmas", {}).items())))
    return out


def console_table(table: list[Row], calls: int, repeat: int) -> str:
    """The table printed on stdout."""
    head = ("figure", "target", "ours", "ours min–max", "ours CPU", "ref 0.5.1", "ref CPU", "verdict")
    body = [
        (
            row.label + (f" ({row.unit})" if row.unit == "ms" else ""),
            "—" if row.target is None else f"≤ {row.target:g}",
            fmt(row.med(row.ours)),
            spread(row.ours),
            fmt(row.med(row.ours_cpu)),
            fmt(row.med(row.reference)),
            fmt(row.med(row.reference_cpu)),
            row.verdict,
        )
        for row in table
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = [
        f"{calls:,} calls of a no-op async tool, median of {repeat} runs; µs per call unless marked (ms); "
        "wall-clock time, and the process's CPU time over the same loop"
    ]
    for line in [head, *body]:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "commit": commit or "?",
        "load": load,
    }


def fork_note(ours: dict[str, Any], ref: dict[str, Any] | None, calls: int) -> str:
    """What a fork at the middle step was charged with: the steps it keeps (ours) or all of them (0.5.1)."""
    key = f"{calls // 2}_usage"
    mine = ours["fork_ms"].get(key, [None])[0]
    theirs = (ref or {}).get("fork_ms", {}).get(key, [None])[0]
    return (
        f"A fork at step {calls // 2:,} starts with an `api` usage of {fmt(mine)} here (what its {calls // 2:,} "
        f"kept steps were charged) and {fmt(theirs)} in 0.5.1 (the parent's whole usage: its defect 6)."
    )


def markdown(
    table: list[Row], calls: int, repeat: int, command: str, info: dict[str, str], load_end: str,
    notes: tuple[str, ...] | list[str] = (),
) -> str:
    """The "Embedded kernel" section of docs/benchmarks.md."""
    lines = [
        HEADING,
        "",
        f"Measured {info['date']} on {info['nproc']} cores ({info['cpu']}), Python {info['python']}, "
        f"commit `{info['commit']}`; load average {info['load']} at the start, {load_end} at the end.",
        "",
        "Command (from the repository root, in the project's venv):",
        "",
        "```",
        command,
        "```",
        "",
        f"{calls:,} calls of a no-op async tool in one process, median of {repeat} runs. Our kernel and the "
        "published castor-kernel 0.5.1 (in `bench/.refvenv`) are measured in the same invocation, one "
        "process per implementation and repetition, alternating, each beside its own direct-call baseline. "
        "µs per call unless marked ms. The verdict reads the wall-clock median; the CPU-time columns (the "
        "process's own CPU time over the same loop) show what a busy machine inflates least. "
        "`bench/README.md` says what each figure covers.",
        "",
        "| figure | target | ours (median) | ours (min–max) | ours, CPU time | castor-kernel 0.5.1 | 0.5.1, CPU time "
        "| verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in table:
        target = "—" if row.target is None else f"≤ {row.target:g} {row.unit}"
        label = row.label.strip() if not row.label.startswith("  ") else f"↳ {row.label.strip()}"
        note = f" <br><sub>{row.note}</sub>" if row.note else ""
        lines.append(
            f"| {label}{note} | {target} | {fmt(row.med(row.ours), row.unit)} | {spread(row.ours)} | "
            f"{fmt(row.med(row.ours_cpu), row.unit)} | {fmt(row.med(row.reference), row.unit)} | "
            f"{fmt(row.med(row.reference_cpu), row.unit)} | {row.verdict or ''} |"
        )
    for note in notes:
        lines += ["", note]
    lines += [
        "",
        "Figures the castor-kernel 0.5.1 documentation gives for its own 2-core machine: 28 µs per syscall "
        "(37 µs with a budget charge), 16–17 µs per replayed step, 244 ms for fork() of a 10,000-step run. "
        "The column above is 0.5.1 measured here, in the same invocation as ours.",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the ``## Embedded kernel`` section of ``path`` (up to the next ``## ``), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nFigures measured by the scripts in `bench/`.\n\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.M | re.S)
    first = re.search(r"^## ", text, re.M)
    found = pattern.search(text)
    if found:
        # The instruction counts (bench/_icount.py, written by hand) close the section: kept as they are.
        kept = found.group(0).partition(ICOUNT_HEADING)
        tail = (kept[1] + kept[2]).rstrip("\n") + "\n\n" if kept[1] else ""
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n" + tail, text, count=1)
    elif first:  # the embedded kernel comes first: every other shape builds on it
        text = text[: first.start()] + section.rstrip("\n") + "\n\n" + text[first.start() :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
