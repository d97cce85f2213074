"""Value types shared by every package: a genome and the result of evaluating it.

`operators`, `fitness` and `archive` import only this module from `evo`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class Genome:
    """One candidate sequence-mixing layer: the source of a module defining `Mixer`."""

    id: str
    code: str
    code_hash: str  # sha256 of the normalised code (archive.normalise)
    parents: tuple[str, ...] = ()
    operator: str = "seed"  # seed | llm_mutate | llm_crossover | llm_repair | classic_*
    generation: int = 0
    island: int = 0
    motivation: str = ""  # the LLM's stated reason, or the seed's name
    created_at: float = dataclasses.field(default_factory=time.time)


def genome_id(code_hash: str, parents: tuple[str, ...], operator: str, generation: int, slot: int) -> str:
    """Deterministic id: the same child of the same generation slot gets the same id on resume."""
    key = "|".join([code_hash, ",".join(parents), operator, str(generation), str(slot)])
    return hashlib.sha1(key.encode()).hexdigest()[:12]


@dataclasses.dataclass
class Evaluation:
    """The outcome of evaluating one genome at one stage with one training seed.

    status: ok | rejected (policy or structural check) | failed (crashed) | timeout | killed
    score: higher is better (stage task score, e.g. MQAR accuracy); None unless status == ok.
    """

    genome_id: str
    stage: int
    seed: int
    status: str
    score: float | None = None
    reason: str = ""
    params: int | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"
