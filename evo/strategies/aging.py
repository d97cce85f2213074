"""Regularised (aging) evolution (Real et al. 2019): tournament of S from a population of P, the
child replaces the oldest member. Defaults P = 10, S = 3, as NAS-Bench-201's scripts.

Beyond the seed genomes the population is first filled with mutants of uniformly drawn members
(they count in the budget like every child). Mutation only. Runs generational or steady-state.
"""
from __future__ import annotations

import random

from evo.strategies.base import Ask, Member


class Aging:
    """A queue of members, oldest first."""

    generational = False

    def __init__(self, population: int, sample: int, novelty_weight: float):
        self.size, self.sample, self.w = population, sample, novelty_weight
        self.queue: list[Member] = []

    def seed(self, members: list[Member]) -> None:
        self.queue = [m for m in members if m.score is not None][-self.size:]

    def ask(self, n: int, rng: random.Random) -> list[Ask]:
        asks = []
        for i in range(n):
            if len(self.queue) + i < self.size:  # still filling: a mutant of any member
                parent = rng.choice(self.queue)
            else:
                contenders = rng.sample(self.queue, min(self.sample, len(self.queue)))
                parent = max(contenders, key=lambda m: m.rank(self.w))
            asks.append(Ask((parent,)))
        return asks

    def tell(self, children: list[Member], rng: random.Random) -> None:
        for child in children:
            if child.score is None:
                continue
            self.queue.append(child)
            if len(self.queue) > self.size:
                self.queue.pop(0)

    def population(self) -> list[Member]:
        return list(self.queue)

    def set_population(self, members: list[Member]) -> None:
        self.queue = list(members)

    def members(self) -> list[Member]:
        return list(self.queue)

    def state(self) -> dict:
        return {"queue": [m.id for m in self.queue]}

    def restore(self, state: dict, members: dict[str, Member]) -> None:
        self.queue = [members[i] for i in state["queue"]]
