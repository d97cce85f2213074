"""Who makes a child: the LLM researcher, the classic AST edits, or a mix of both.

`Variation.propose(specs, rng)` returns one Proposal per spec, in order: with kind "llm" every
spec goes to the researcher (one batched LLM call), with "classic" to `operators.classic`, with
"mix" each spec is classic with probability `classic_share` (drawn from `rng`). Failed children
are repaired by the LLM (kind "llm" or "mix"); the classic kind never loads a model. The
operator that made each child is in its Proposal (`llm_*` or `classic_<edit>`).
"""
from __future__ import annotations

import random
from typing import Sequence

from operators import classic
from operators.backends import Backend
from operators.researcher import Proposal, RepairItem, Researcher, Spec
from operators.settings import LLMSettings


class Variation:
    """The configured operator. `backend` may be None for kind "classic"."""

    def __init__(self, kind: str, classic_share: float | None, backend: Backend | None, llm: LLMSettings):
        if kind != "classic" and backend is None:
            raise ValueError(f"operator kind {kind!r} needs an LLM backend")
        self.kind, self.share, self.backend, self.llm = kind, classic_share, backend, llm

    @property
    def repairs(self) -> bool:
        """Whether failed children go back to the LLM."""
        return self.kind != "classic" and self.llm.repair_attempts > 0

    def propose(self, specs: Sequence[Spec], rng: random.Random) -> list[Proposal]:
        """One proposal per spec, in order; the LLM ones from one batched call."""
        by_classic = [self.kind == "classic" or (self.kind == "mix" and rng.random() < self.share) for _ in specs]
        llm_specs = [s for s, c in zip(specs, by_classic) if not c]
        made = iter(Researcher(self.backend, self.llm, rng).propose(llm_specs) if llm_specs else [])
        return [classic_proposal(s, rng) if c else next(made) for s, c in zip(specs, by_classic)]

    def repair(self, items: Sequence[RepairItem], rng: random.Random) -> list[Proposal]:
        """The LLM's repairs of failed children (see RepairItem)."""
        return Researcher(self.backend, self.llm, rng).repair(items) if items else []


def classic_proposal(spec: Spec, rng: random.Random) -> Proposal:
    """A classic edit of the spec's parent, or the classic crossover of its two parents."""
    parents = tuple(p.genome.id for p in spec.parents)
    try:
        if len(spec.parents) == 2:
            code, edit = classic.crossover(spec.parents[0].genome.code, spec.parents[1].genome.code, rng), "crossover"
        else:
            code, edit = classic.mutate(spec.parents[0].genome.code, rng)
    except classic.ClassicError as e:
        return Proposal(None, "", "classic", parents, "classic", None, None, str(e), edit_format="classic")
    return Proposal(code, f"classic edit: {edit}", f"classic_{edit}", parents, edit, None, None,
                    edit_format="classic")
