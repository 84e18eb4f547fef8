"""``castor inspect`` shows a run's memory map: resident and paged-out messages with their token counts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from castor import Castor
from castor.lib import memory
from castor.llm import Scripted
from castor.mmu import MMU
from tests.cli.conftest import Cli


async def chat() -> str:
    mem = memory()
    mem.add("system", "be brief", pinned=True)
    for topic in ("alpha", "bravo", "charlie"):
        mem.add("user", f"about {topic} " + " ".join(["detail"] * 20))
        await mem.complete()
    hits = await mem.search("alpha")
    await mem.page_in([hits[0]["id"]])
    return "done"


def test_inspect_shows_the_memory_map(cli: Cli, workdir: Path) -> None:
    kernel = Castor(llm=Scripted(["ok one", "ok two", "ok three"]), mmu=MMU(budget=90),
                    store=f"sqlite:///{workdir / 'castor.db'}")
    cp = asyncio.run(kernel.run(chat, pid="mmu-run"))
    assert cp.status == "COMPLETED", cp.error
    lines = cli("inspect", "mmu-run").out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Memory: "))
    resident_tokens = sum(MMU().tokens(m) for m in cp.context_history)
    assert lines[head] == (
        f"Memory: {len(cp.context_history)} resident messages ({resident_tokens} tokens), 3 paged out (104 tokens)"
    )
    assert lines[head + 1:head + 3] == ["  resident:", '    system: "be brief" (3 tokens pinned)']
    paged = lines[lines.index("  paged out:") + 1:]
    alpha = '"about alpha detail detail detail detail detail ..."'
    assert paged[0] == f"    1.0  user: {alpha} (51 tokens, paged in at step 6)"
    assert paged[1].startswith('    3.0  assistant: "ok one" (2 tokens)')
    out_step = next(line for line in lines if line.startswith("  [1]"))
    assert out_step == f"  [1] page out 1 message (51 tokens): user: {alpha}"
    third = next(line for line in lines if line.startswith("  [3]"))
    assert third.startswith('  [3] page out 2 messages (53 tokens): assistant: "ok one", user: "about bravo')
    assert '  [5] search_memory "alpha" -> 1 hits' in lines and "  [6] page in 1.0" in lines
