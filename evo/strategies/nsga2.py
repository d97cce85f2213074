"""NSGA-II on several objectives (DEAP selNSGA2): e.g. score up, parameters down, cost exponent
down, novelty up. Parents by binary tournament on dominance then crowding (selTournamentDCD
where its size rules allow, else uniform); survivors by non-dominated sorting and crowding.
The Pareto front of every genome scored so far is kept and checkpointed. Needs whole generations.
"""
from __future__ import annotations

import math
import random

from deap import tools

from evo.strategies.base import Ask, Member, deap_random, individual, with_mates


class NSGA2:
    """mu survivors on the objectives [(name, "max" | "min"), ...]."""

    generational = True

    def __init__(self, population: int, objectives: list[tuple[str, str]], crossover_prob: float):
        self.mu, self.objectives, self.crossover_prob = population, objectives, crossover_prob
        self.weights = tuple(1.0 if d == "max" else -1.0 for _, d in objectives)
        self.pop: list[Member] = []
        self.front: list[Member] = []

    def values(self, m: Member) -> tuple[float, ...]:
        """The member's objective values (a missing one counts as the worst possible)."""
        return tuple(m.objectives.get(name, -math.inf if d == "max" else math.inf) if name != "score" else m.score
                     for name, d in self.objectives)

    def _individuals(self, members: list[Member]) -> list:
        return [individual(m, self.values(m), self.weights) for m in members]

    def _update_front(self, new: list[Member]) -> None:
        pool = {m.id: m for m in self.front + new}
        first = tools.sortNondominated(self._individuals(list(pool.values())), len(pool), first_front_only=True)[0]
        self.front = sorted((ind.member for ind in first), key=lambda m: m.id)

    def seed(self, members: list[Member]) -> None:
        scored = [m for m in members if m.score is not None]
        self.pop = [ind.member for ind in tools.selNSGA2(self._individuals(scored), min(self.mu, len(scored)))]
        self._update_front(scored)

    def ask(self, n: int, rng: random.Random) -> list[Ask]:
        inds = tools.selNSGA2(self._individuals(self.pop), len(self.pop))  # assigns crowding distances
        with deap_random(rng):
            if n < len(inds) or (n == len(inds) and n % 4 == 0):
                parents = [ind.member for ind in tools.selTournamentDCD(inds, n)]
            else:
                parents = [rng.choice(self.pop) for _ in range(n)]
        return with_mates(parents, self.pop, self.crossover_prob, rng)

    def tell(self, children: list[Member], rng: random.Random) -> None:
        known = {m.genome.code_hash for m in self.pop}
        scored = [c for c in children if c.score is not None and c.genome.code_hash not in known]
        pool = self.pop + scored
        self.pop = [ind.member for ind in tools.selNSGA2(self._individuals(pool), min(self.mu, len(pool)))]
        self._update_front(scored)

    def population(self) -> list[Member]:
        return list(self.pop)

    def set_population(self, members: list[Member]) -> None:
        self.pop = list(members)

    def members(self) -> list[Member]:
        return self.pop + self.front

    def state(self) -> dict:
        return {"population": [m.id for m in self.pop], "pareto": [m.id for m in self.front]}

    def restore(self, state: dict, members: dict[str, Member]) -> None:
        self.pop = [members[i] for i in state["population"]]
        self.front = [members[i] for i in state["pareto"]]
