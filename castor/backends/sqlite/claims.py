"""Step claims in SQLite: who executes a step that must run at most once (see ``Journal.claim``).

A claim is taken in one ``BEGIN IMMEDIATE`` transaction with a look at the journal, so of several
processes on one file exactly one gets it. Leases are judged by the local clock: an embedded store is
one machine, and every process on it reads the same clock.
"""

from __future__ import annotations

import time

from castor.backends.sqlite._db import SqliteDatabase
from castor.seams import StepClaim

CLAIMED = StepClaim("claimed")
JOURNALED = StepClaim("journaled")


class SqliteClaims:
    """Claims in the ``step_claims`` table of the journal's database."""

    db: SqliteDatabase

    async def claim(
        self, run_id: str, step: int, attempt: int, holder: str, lease: float, *, replace: str = "",
        lapsed_only: bool = False,
    ) -> StepClaim:
        """Claim the step unless it is journaled or another holder has it (see ``Journal.claim``)."""
        with self.db.transaction() as conn:
            key = (run_id, step)
            if conn.execute("SELECT 1 FROM journal WHERE run_id = ? AND step = ?", key).fetchone():
                return JOURNALED
            held = conn.execute(
                "SELECT attempt, holder, lease_end FROM step_claims WHERE run_id = ? AND step = ?", key
            ).fetchone()
            now = time.time()
            taken_over = held is not None and held[1] == replace and not (lapsed_only and held[2] > now)
            if held is not None and held[1] != holder and not taken_over and held[0] >= attempt:
                return StepClaim("held", held[1], held[0], held[2] <= now)
            conn.execute(
                "INSERT OR REPLACE INTO step_claims VALUES (?, ?, ?, ?, ?)", (*key, attempt, holder, now + lease)
            )
        return CLAIMED

    async def renew_claim(self, run_id: str, step: int, holder: str, lease: float) -> bool:
        """Extend the holder's lease."""
        cursor = self.db.execute(
            "UPDATE step_claims SET lease_end = ? WHERE run_id = ? AND step = ? AND holder = ?",
            (time.time() + lease, run_id, step, holder),
        )
        return cursor.rowcount > 0

    async def release_claim(self, run_id: str, step: int, holder: str) -> None:
        """Drop the holder's claim."""
        self.db.execute("DELETE FROM step_claims WHERE run_id = ? AND step = ? AND holder = ?", (run_id, step, holder))
