"""(mu + lambda) and (mu, lambda): any `deap.tools.sel*` picks the parents and the survivors.

mu_plus_lambda: survivors are chosen among the population and its children; mu_comma_lambda:
among the children only (topped up with the best parents when fewer than mu children scored).
Both keep the `elitism` best of everything they choose from (DEAP's selBest), then select the
rest among the others (with DEAP's own semantics: a tournament may pick one member twice). Selection is on score + novelty.weight * novelty. mu_comma_lambda needs whole
generations; mu_plus_lambda also runs steady-state (survivors chosen after every batch).
"""
from __future__ import annotations

import random
from typing import Any

from deap import tools

from evo.strategies.base import Ask, Member, deap_random, individual, with_mates


class MuLambda:
    """Population of mu; lambda children per generation; DEAP selection for parents and survivors."""

    def __init__(self, population: int, elitism: int, selection: str, args: dict[str, Any], comma: bool,
                 crossover_prob: float, novelty_weight: float):
        self.mu, self.elitism, self.comma = population, elitism, comma
        self.generational = comma
        self.select = getattr(tools, selection)
        self.args, self.crossover_prob, self.w = args, crossover_prob, novelty_weight
        self.pop: list[Member] = []

    def _individuals(self, members: list[Member]) -> list:
        return [individual(m, m.rank(self.w), (1.0, 1.0)) for m in members]

    def seed(self, members: list[Member]) -> None:
        self.pop = [m for m in members if m.score is not None]

    def ask(self, n: int, rng: random.Random) -> list[Ask]:
        with deap_random(rng):
            parents = [ind.member for ind in self.select(self._individuals(self.pop), n, **self.args)]
        return with_mates(parents, self.pop, self.crossover_prob, rng)

    def tell(self, children: list[Member], rng: random.Random) -> None:
        known = {m.genome.code_hash for m in self.pop}
        scored = [c for c in children if c.score is not None and c.genome.code_hash not in known]
        if self.comma:
            pool = scored
            if len(pool) < self.mu:
                pool = pool + sorted(self.pop, key=lambda m: m.rank(self.w), reverse=True)[: self.mu - len(pool)]
        else:
            pool = self.pop + scored
        if not pool:
            return
        inds = self._individuals(pool)
        with deap_random(rng):
            elite = tools.selBest(inds, min(self.elitism, len(inds)))
            others = [ind for ind in inds if ind not in elite] or inds
            rest = self.select(others, self.mu - len(elite), **self.args) if self.mu > len(elite) else []
        self.pop = [ind.member for ind in elite + rest]

    def population(self) -> list[Member]:
        return list(self.pop)

    def set_population(self, members: list[Member]) -> None:
        self.pop = list(members)

    def members(self) -> list[Member]:
        return list(self.pop)

    def state(self) -> dict:
        return {"population": [m.id for m in self.pop]}

    def restore(self, state: dict, members: dict[str, Member]) -> None:
        self.pop = [members[i] for i in state["population"]]
