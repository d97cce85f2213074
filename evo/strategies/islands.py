"""Islands: N copies of one inner strategy, each with its own population, and a ring migration
of the k best of each island to the next every M steps (DEAP migRing). The island of every
genome is stored with it and in every checkpoint.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable

from deap import tools

from evo.strategies.base import Ask, Member, individual


class Islands:
    """N inner strategies; children are asked for round-robin and told to the island that asked."""

    def __init__(self, n: int, migrants: int, every: int, make_inner: Callable[[], object], novelty_weight: float):
        self.islands = [make_inner() for _ in range(n)]
        self.migrants, self.every, self.w = migrants, every, novelty_weight
        self.generational = self.islands[0].generational
        self.told = 0

    def seed(self, members: list[Member]) -> None:
        for i, island in enumerate(self.islands):
            island.seed([dataclasses.replace(m, island=i) for m in members])

    def ask(self, n: int, rng: random.Random) -> list[Ask]:
        counts = [n // len(self.islands) + (i < n % len(self.islands)) for i in range(len(self.islands))]
        asks = []
        for i, (island, k) in enumerate(zip(self.islands, counts)):
            asks += [Ask(a.parents, i) for a in island.ask(k, rng)] if k else []
        return asks

    def tell(self, children: list[Member], rng: random.Random) -> None:
        for i, island in enumerate(self.islands):
            island.tell([c for c in children if c.island == i], rng)
        self.told += 1
        if self.told % self.every == 0 and len(self.islands) > 1:
            self.migrate()

    def migrate(self) -> None:
        """The k best of each island replace the k best of the next one, in a ring (DEAP migRing)."""
        demes = [[individual(m, m.rank(self.w), (1.0, 1.0)) for m in island.population()] for island in self.islands]
        tools.migRing(demes, min(self.migrants, *(len(d) for d in demes)), tools.selBest)
        for i, (island, deme) in enumerate(zip(self.islands, demes)):
            island.set_population([dataclasses.replace(ind.member, island=i) for ind in deme])

    def population(self) -> list[Member]:
        return [m for island in self.islands for m in island.population()]

    def set_population(self, members: list[Member]) -> None:
        for i, island in enumerate(self.islands):
            island.set_population([m for m in members if m.island == i])

    def members(self) -> list[Member]:
        return [m for island in self.islands for m in island.members()]

    def state(self) -> dict:
        return {"islands": [island.state() for island in self.islands], "told": self.told}

    def restore(self, state: dict, members: dict[str, Member]) -> None:
        for i, (island, s) in enumerate(zip(self.islands, state["islands"])):
            island.restore(s, {k: dataclasses.replace(m, island=i) for k, m in members.items()})
        self.told = state["told"]
