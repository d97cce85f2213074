"""Random search: each child is the operator applied to a uniformly drawn seed genome; nothing is
selected (with the LLM operator: independent LLM samples). The baseline every comparison needs.
"""
from __future__ import annotations

import random

from evo.strategies.base import Ask, Member


class RandomSearch:
    """Parents are always seeds; the population reported is the seeds and the best children."""

    generational = False

    def __init__(self):
        self.seeds: list[Member] = []
        self.best: list[Member] = []

    def seed(self, members: list[Member]) -> None:
        self.seeds = [m for m in members if m.score is not None]

    def ask(self, n: int, rng: random.Random) -> list[Ask]:
        return [Ask((rng.choice(self.seeds),)) for _ in range(n)]

    def tell(self, children: list[Member], rng: random.Random) -> None:
        scored = self.best + [c for c in children if c.score is not None]
        self.best = sorted(scored, key=lambda m: m.rank(), reverse=True)[: len(self.seeds)]

    def population(self) -> list[Member]:
        return self.seeds + self.best

    def set_population(self, members: list[Member]) -> None:
        self.best = [m for m in members if m.id not in {s.id for s in self.seeds}]

    def members(self) -> list[Member]:
        return self.seeds + self.best

    def state(self) -> dict:
        return {"seeds": [m.id for m in self.seeds], "best": [m.id for m in self.best]}

    def restore(self, state: dict, members: dict[str, Member]) -> None:
        self.seeds = [members[i] for i in state["seeds"]]
        self.best = [members[i] for i in state["best"]]
