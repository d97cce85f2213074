"""MAP-Elites: a grid over two descriptors of a genome (e.g. log10 parameters x cost exponent),
one elite per cell (the best score + novelty.weight * novelty found there); parents are drawn
uniformly over the filled cells. Runs generational or steady-state.
"""
from __future__ import annotations

import math
import random

from evo.strategies.base import Ask, Member, with_mates


def descriptor(member: Member, name: str) -> float | None:
    """A descriptor value: "log_params" (log10 of the parameter count) or any objective by name."""
    if name == "log_params":
        params = member.objectives.get("params")
        return math.log10(params) if params else None
    if name == "score":
        return member.score
    return member.objectives.get(name)


class MapElites:
    """cells: (i, j) -> elite."""

    generational = False

    def __init__(self, descriptors: list[tuple[str, float, float, int]], crossover_prob: float, novelty_weight: float):
        self.descriptors, self.crossover_prob, self.w = descriptors, crossover_prob, novelty_weight
        self.cells: dict[tuple[int, ...], Member] = {}

    def cell(self, member: Member) -> tuple[int, ...] | None:
        """The member's cell, or None when a descriptor is unknown; values outside a range clamp."""
        out = []
        for name, low, high, bins in self.descriptors:
            v = descriptor(member, name)
            if v is None or not math.isfinite(v):
                return None
            out.append(min(bins - 1, max(0, int((v - low) / (high - low) * bins))))
        return tuple(out)

    def _insert(self, members: list[Member]) -> None:
        for m in members:
            key = self.cell(m) if m.score is not None else None
            if key is not None and (key not in self.cells or m.rank(self.w) > self.cells[key].rank(self.w)):
                self.cells[key] = m

    def seed(self, members: list[Member]) -> None:
        self._insert(members)

    def ask(self, n: int, rng: random.Random) -> list[Ask]:
        elites = self.population()
        return with_mates([rng.choice(elites) for _ in range(n)], elites, self.crossover_prob, rng)

    def tell(self, children: list[Member], rng: random.Random) -> None:
        self._insert(children)

    def population(self) -> list[Member]:
        return [self.cells[k] for k in sorted(self.cells)]

    def set_population(self, members: list[Member]) -> None:
        self._insert(members)

    def members(self) -> list[Member]:
        return self.population()

    def state(self) -> dict:
        return {"cells": {",".join(map(str, k)): m.id for k, m in sorted(self.cells.items())}}

    def restore(self, state: dict, members: dict[str, Member]) -> None:
        self.cells = {tuple(int(i) for i in k.split(",")): members[v] for k, v in state["cells"].items()}
