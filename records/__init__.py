"""The records every package shares: a genome, the outcome of evaluating it, and its status.

A leaf module: `evo`, `operators`, `fitness` and `archive` import it, it imports none of them
(and `fitness`, `operators` and `archive` import nothing from `evo`; tests/test_layout.py checks).
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import time
from typing import Any


class Status(str, enum.Enum):
    """How an evaluation ended."""

    OK = "ok"
    REJECTED = "rejected"  # the policy, a structural check, the budget, causality or complexity
    FAILED = "failed"  # crashed, diverged, broke the protocol, invalid output
    TIMEOUT = "timeout"
    KILLED = "killed"  # memory, CPU, cancelled

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Genome:
    """One candidate sequence-mixing layer: the source of a module defining `Mixer`."""

    id: str
    code: str
    code_hash: str  # sha256 of the normalised code (archive.normalise)
    parents: tuple[str, ...] = ()
    operator: str = "seed"  # seed | llm_mutate | llm_crossover | llm_repair | classic_<edit>
    generation: int = 0  # the step that made it
    island: int = 0
    motivation: str = ""  # the LLM's stated reason, the classic edit, or the seed's name
    created_at: float = dataclasses.field(default_factory=time.time)


def genome_id(code_hash: str, parents: tuple[str, ...], operator: str, generation: int, slot: int) -> str:
    """Deterministic id: the same child of the same step and slot gets the same id on resume."""
    key = "|".join([code_hash, ",".join(parents), operator, str(generation), str(slot)])
    return hashlib.sha1(key.encode()).hexdigest()[:12]


@dataclasses.dataclass
class Evaluation:
    """The outcome of evaluating one genome at one stage with one training seed.

    status: a Status value; score: higher is better (the stage's task score, e.g. MQAR
    accuracy), None unless status is ok.
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
        return self.status == Status.OK
