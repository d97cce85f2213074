"""What a run has spent, step by step, and whether its budget is used up.

Every step records its LLM calls (and how many were answered from the cache), prompt and
completion tokens (cached answers count: a resumed run is charged what the uninterrupted one
was), the wall seconds its LLM calls took, sandboxed evaluations by stage (neither results copied from an identical genome nor
rejections before the sandbox count; one with a learning-rate sweep counts once per rate), evaluation
seconds and wall seconds. The checkpoint of step s stores that step's spending and the run's
totals, so runs compare at equal budget on any axis and a resumed run keeps counting.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from evo.config import BudgetSettings
from operators.researcher import Proposal
from records import Evaluation


@dataclasses.dataclass
class Spent:
    """Costs of one step, or the sum over steps."""

    steps: int = 0
    llm_calls: int = 0
    llm_cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    evaluations_stage1: int = 0
    evaluations_stage2: int = 0
    evaluation_s: float = 0.0
    wall_s: float = 0.0
    llm_s: float = 0.0  # wall seconds of the step's LLM calls, cached ones included (steady state: with waits for the main thread)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def evaluations(self) -> int:
        return self.evaluations_stage1 + self.evaluations_stage2

    def __add__(self, other: "Spent") -> "Spent":
        return Spent(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Spent":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if d and f.name in d})


def step_spent(proposals: Iterable[Proposal], evaluations: Iterable[Evaluation], wall_s: float,
               llm_s: float = 0.0) -> Spent:
    """One step's costs from its LLM proposals (whose calls took llm_s wall seconds) and the evaluations of
    the genomes it made."""
    spent = Spent(steps=1, wall_s=wall_s, llm_s=llm_s)
    for p in proposals:
        if p.completion is not None:
            spent.llm_calls += 1
            spent.llm_cached += p.completion.cached
            spent.prompt_tokens += p.completion.prompt_tokens
            spent.completion_tokens += p.completion.completion_tokens
    for ev in evaluations:
        if "launch" in ev.metrics and "reused_from" not in ev.metrics:  # ran in the sandbox for this genome
            spent.evaluation_s += ev.wall_s
            if ev.stage == 1:
                spent.evaluations_stage1 += trainings(ev)
            else:
                spent.evaluations_stage2 += trainings(ev)
    return spent


def trainings(ev: Evaluation) -> int:
    """What one evaluation counts in the budget: 1, or the rates of its stage's learning-rate sweep."""
    trials = [v for k, v in ev.metrics.items() if k.endswith("lr_trials") and isinstance(v, int)]
    return max(trials, default=1)


def exhausted(budget: BudgetSettings, total: Spent, best: float | None) -> str | None:
    """Why the run must stop now (the first limit reached), or None to go on."""
    checks = [("max_steps", budget.max_steps, total.steps), ("max_evaluations", budget.max_evaluations,
              total.evaluations), ("max_llm_tokens", budget.max_llm_tokens, total.tokens),
              ("max_wall_s", budget.max_wall_s, total.wall_s)]
    for name, limit, used in checks:
        if limit is not None and used >= limit:
            return f"{name} = {limit} reached ({used:g} spent)"
    if budget.target_score is not None and best is not None and best >= budget.target_score:
        return f"target_score = {budget.target_score:g} reached (best {best:.4f})"
    return None
