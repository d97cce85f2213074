"""What every strategy shares: the members it selects among, what it asks for, and the protocol.

A strategy decides who breeds and who survives; everything else (proposing children, screening,
training, promotion, checkpointing) is the engine's. The engine calls, in order:
`seed(members)` once with the seed genomes, then per step `ask(n, rng)` for the parents of n
children and `tell(children, rng)` with that step's children (in the order they were asked for;
a child that failed has score None), and `state()` to checkpoint; `members()` lists every member
the state names. `restore(state, members)` rebuilds the strategy from a checkpoint exactly. All
randomness comes from the `rng` the engine passes (derived from the run seed and the step), so a
run replays. `set_population` is how islands exchange migrants.

A `Member` carries what a strategy may select on: its score (`evo.score.selection_score`: the
mean stage-1 score over its training seeds, or, once it has stage-2 results, the stage-1 seed
baseline plus its stage-2 gain) and the objectives "params" (Mixer parameters), "complexity" (the measured cost
exponent) and "novelty" (mean cosine distance to its k nearest neighbours among the code
embeddings of earlier steps); `value(w)` is the single-objective selection value
score + w * novelty, ties broken by the lower held-out test loss (`rank`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
from typing import Protocol

from deap import base, creator

from records import Genome


@dataclasses.dataclass
class Member:
    """A genome as strategies see it."""

    genome: Genome
    score: float | None
    objectives: dict[str, float] = dataclasses.field(default_factory=dict)
    island: int = 0
    loss: float = 0.0  # mean held-out test loss: breaks ties of the score

    @property
    def id(self) -> str:
        return self.genome.id

    def value(self, novelty_weight: float = 0.0) -> float:
        """The single-objective selection value: score + novelty_weight * novelty."""
        return self.score + novelty_weight * self.objectives.get("novelty", 0.0)

    def rank(self, novelty_weight: float = 0.0) -> tuple[float, float]:
        """What single-objective selection compares: the value, then the lower test loss."""
        return self.value(novelty_weight), -self.loss


@dataclasses.dataclass(frozen=True)
class Ask:
    """Parents of one child (one: a mutation; two: a crossover), and the island it belongs to."""

    parents: tuple[Member, ...]
    island: int = 0


class Strategy(Protocol):
    """The protocol every strategy module implements."""

    generational: bool  # needs whole generations told at once (refuses the steady-state mode)

    def seed(self, members: list[Member]) -> None: ...

    def ask(self, n: int, rng: random.Random) -> list[Ask]: ...

    def tell(self, children: list[Member], rng: random.Random) -> None: ...

    def population(self) -> list[Member]: ...

    def set_population(self, members: list[Member]) -> None: ...

    def members(self) -> list[Member]: ...

    def state(self) -> dict: ...

    def restore(self, state: dict, members: dict[str, Member]) -> None: ...


def individual(member: Member, values: tuple[float, ...], weights: tuple[float, ...]):
    """A DEAP individual wrapping `member` with fitness `values` under `weights` (the creator
    class for these weights is made once)."""
    name = "Fitness_" + "_".join(f"{w:g}".replace("-", "m").replace(".", "p") for w in weights)
    if not hasattr(creator, name):
        creator.create(name, base.Fitness, weights=weights)
        creator.create("Individual_" + name, _Holder, fitness=getattr(creator, name))
    ind = getattr(creator, "Individual_" + name)(member)
    ind.fitness.values = values
    return ind


class _Holder:
    def __init__(self, member: Member):
        self.member = member


@contextlib.contextmanager
def deap_random(rng: random.Random):
    """DEAP draws from the global `random`: seed it from `rng` for the call, then restore it."""
    saved = random.getstate()
    random.seed(rng.getrandbits(64))
    try:
        yield
    finally:
        random.setstate(saved)


def with_mates(parents: list[Member], pool: list[Member], crossover_prob: float, rng: random.Random,
               island: int = 0) -> list[Ask]:
    """One ask per parent: a crossover with a uniformly drawn other member of `pool` with
    probability crossover_prob (if there is one with other code), else a mutation."""
    asks = []
    for parent in parents:
        others = [m for m in pool if m.genome.code_hash != parent.genome.code_hash]
        if others and rng.random() < crossover_prob:
            asks.append(Ask((parent, rng.choice(others)), island))
        else:
            asks.append(Ask((parent,), island))
    return asks
