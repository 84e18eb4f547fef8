"""The fault harness: a localhost fleet of real processes, faults injected N times each, one table.

    python bench/faults.py [--quick] [--trials N] [--faults worker,coordinator,...] [--json]

It starts its own ``redis-server`` (AOF, ``appendfsync always``) on a free port, used as broker and
store, two worker pools and two coordinators (short lease), all with the public ``castor`` CLI and a
private config in a temporary directory, and plays their supervisor: a process that exits is restarted,
as systemd or compose would. It drives runs with ``castor submit`` / ``approve`` / ``resume`` and reads
them with ``castor ps`` / ``approvals`` / ``inspect --json``; their tools record each start and finish
to a file. Faults: a worker or a coordinator SIGKILLed mid-tool, Redis restarted mid-tool (clean and
SIGKILL), ``approve`` and ``resume`` at once, a cancel while a run's call waits on its pool's queue (its
coordinator alive, or SIGKILLed first), a run whose agent kills its coordinator, forged and
malformed broker messages (each must be listed by ``castor deadletters``, then purged), and in full mode
Redis down for longer than a call's deadline. Independent trials run at once (``docs/reliability.md``).

A row holds when: a non-idempotent tool ran at most once per step; an idempotent step completed exactly
once; every run ended (COMPLETED, FAILED with a reason, or waiting for a human on a call in doubt, and
only one that may really be lost); no journaled step was lost; no worker died (exit 0: a supervisor
would not restart it). Plus each fault's own promise (a forged message changes nothing; a cancelled run's
queued call never runs). The exit code
is 1 when a row fails. ``docs/reliability.md`` explains the table.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concurrent.futures import Future, ThreadPoolExecutor

from bench._faults_cancel import cancel_rows
from bench._faults_crash import crash_rows, poison_rows, race_rows
from bench._faults_fleet import FaultFleet, Timing
from bench._faults_forge import clean_queues, deadletter_rows, forge_rows
from bench._faults_lost import outage_rows, worker_rows
from bench._faults_observe import Plan, Row, table

FAULTS = ("approve", "worker", "coordinator", "redis", "cancel", "poison", "forged", "outage")
SLOW = ("outage",)  # left out of quick mode unless --faults names them
QUICK = Timing(short=0.3, long=4.0, lease=1.5, outage=2.5)
FULL = Timing(short=0.5, long=10.0, lease=3.0, outage=4.0)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="short tools, up to 2 trials per fault, none repeating another (CI: under 2 minutes)")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials per fault, repeats included (default: 5 full; quick: up to 2, none repeating)")
    parser.add_argument("--faults", default=None,
                        help=f"comma-separated fault families to inject: {', '.join(FAULTS)} (default: all; "
                             f"quick mode leaves out {', '.join(SLOW)})")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="stop injecting after this long; the faults left fail (default: 360 quick, 3600 full)")
    args = parser.parse_args(argv)
    default = [f for f in FAULTS if not (args.quick and f in SLOW)]
    args.families = [f.strip() for f in args.faults.split(",") if f.strip()] if args.faults else default
    unknown = sorted(set(args.families) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {', '.join(unknown)}: choose among {', '.join(FAULTS)}")
    if args.trials is not None and args.trials < 1:
        parser.error("--trials must be at least 1")
    return args


def run(args: argparse.Namespace, rows: list[Row]) -> None:
    """Start the fleet, inject every chosen fault (adding its row to ``rows`` when done), stop the fleet."""
    budget = args.budget if args.budget is not None else (360.0 if args.quick else 3600.0)
    # Quick mode's default drops the trials that repeat an earlier one of their row (every kind still runs).
    plan = Plan(args.trials or (2 if args.quick else 5), fail_fast=args.quick, deadline=time.monotonic() + budget,
                distinct=args.quick and args.trials is None)

    def chosen(family: str) -> bool:
        return family in args.families

    with tempfile.TemporaryDirectory(prefix="castor-faults-") as tmp:
        fleet = FaultFleet(Path(tmp), QUICK if args.quick else FULL)
        try:
            fleet.start()
            # While the worker-loss trials wait out their lost calls' deadlines, the faults that kill no
            # process of the fleet (races of CLI runs, forgeries) run next to them.
            sent: list[str] = []
            with ThreadPoolExecutor(2) as side:
                started: list[Future[list[Row]]] = []
                worker = worker_rows(fleet, plan, chosen, lambda: started.extend(
                    [side.submit(race_rows, fleet, plan, chosen), side.submit(forge_rows, fleet, plan, chosen, sent)]))
                races, forged = (f.result() for f in started)
            rows += races + worker
            clean_queues(fleet)  # what a poison pill left (if a worker failed to refuse it)
            rows += crash_rows(fleet, plan, chosen)
            rows += cancel_rows(fleet, plan, chosen)
            rows += poison_rows(fleet, plan, chosen)
            rows += outage_rows(fleet, plan, chosen)
            rows += forged + deadletter_rows(fleet, chosen, sent)
        finally:
            fleet.close()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM (a CI timeout, a test's) unwinds like Ctrl-C, so the fleet is stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    rows: list[Row] = []
    try:
        run(args, rows)
    except (KeyboardInterrupt, SystemExit):  # the rows done so far are still worth printing
        rows.append(Row("(interrupted)", problems=["the harness was stopped before its last fault"]))
    took = time.monotonic() - started
    if args.json:
        print(json.dumps({"rows": [r.as_dict() for r in rows], "seconds": round(took, 1),
                          "holds": all(r.holds for r in rows)}, indent=2))
    else:
        print(table(rows))
        print(LEGEND)
        print(f"\n{len(rows)} faults, {sum(r.trials for r in rows)} trials in {took:.0f} s: "
              f"{sum(not r.holds for r in rows)} rows fail")
    return 0 if rows and all(r.holds for r in rows) else 1


LEGEND = """
Columns: non-idem max, the most times a non-idempotent tool ran for one step (1 holds); idem effects, the
journaled effects of an idempotent tool per step (1 holds); done/doubt/quar/cancel/failed, how the runs ended:
completed, in doubt (sent to a human: what a worker killed mid-call must give), quarantined, cancelled, failed;
lost, finished effects missing from the journal; workers dead, pools a forged message stopped. A row
holds when each is what its fault promises; docs/reliability.md says what each row checks."""


if __name__ == "__main__":
    sys.exit(main())
