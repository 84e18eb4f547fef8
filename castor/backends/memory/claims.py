"""Step claims in memory: who executes a step that must run at most once (see ``Journal.claim``)."""

from __future__ import annotations

import threading
import time
from typing import Any

from castor.seams import StepClaim

CLAIMED = StepClaim("claimed")
JOURNALED = StepClaim("journaled")


class MemoryClaims:
    """``(run, step) -> (attempt, holder, lease end)`` under a lock; leases by this process's clock."""

    _claims_lock = threading.Lock()

    def _claims(self) -> dict[tuple[str, int], tuple[int, str, float]]:
        table: dict[tuple[str, int], tuple[int, str, float]] = self.__dict__.setdefault("_claim_table", {})
        return table

    async def get(self, run_id: str, step: int) -> Any:  # the journal's own, first in the MRO
        raise NotImplementedError

    async def claim(
        self, run_id: str, step: int, attempt: int, holder: str, lease: float, *, replace: str = "",
        lapsed_only: bool = False,
    ) -> StepClaim:
        """Claim the step unless it is journaled or another holder has it (see ``Journal.claim``)."""
        if await self.get(run_id, step) is not None:
            return JOURNALED
        with self._claims_lock:
            table, now = self._claims(), time.time()
            held = table.get((run_id, step))
            taken_over = held is not None and held[1] == replace and not (lapsed_only and held[2] > now)
            if held is not None and held[1] != holder and not taken_over and held[0] >= attempt:
                return StepClaim("held", held[1], held[0], held[2] <= now)
            table[(run_id, step)] = (attempt, holder, now + lease)
            return CLAIMED

    async def renew_claim(self, run_id: str, step: int, holder: str, lease: float) -> bool:
        """Extend the holder's lease."""
        with self._claims_lock:
            table = self._claims()
            held = table.get((run_id, step))
            if held is None or held[1] != holder:
                return False
            table[(run_id, step)] = (held[0], holder, time.time() + lease)
            return True

    async def release_claim(self, run_id: str, step: int, holder: str) -> None:
        """Drop the holder's claim."""
        with self._claims_lock:
            table = self._claims()
            held = table.get((run_id, step))
            if held is not None and held[1] == holder:
                del table[(run_id, step)]

    def forget_claims(self, run_id: str) -> None:
        """Drop every claim of the run (the run is deleted)."""
        with self._claims_lock:
            table = self._claims()
            for key in [k for k in table if k[0] == run_id]:
                del table[key]
