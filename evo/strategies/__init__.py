"""Search strategies, one module each behind the protocol in `base`; `make_strategy` builds the one
`[search] strategy` names from its table."""
from __future__ import annotations

from evo.config import SearchSettings
from evo.strategies.aging import Aging
from evo.strategies.base import Ask, Member, Strategy
from evo.strategies.islands import Islands
from evo.strategies.map_elites import MapElites
from evo.strategies.mu_lambda import MuLambda
from evo.strategies.nsga2 import NSGA2
from evo.strategies.random_search import RandomSearch

__all__ = ["Ask", "Member", "Strategy", "make_strategy"]


def make_strategy(search: SearchSettings, novelty_weight: float) -> Strategy:
    """The strategy of `search.strategy`, configured by its table."""
    if search.strategy == "islands":
        t = search.islands
        return Islands(t.islands, t.migrants, t.every, lambda: _make(t.strategy, t.table(t.strategy), novelty_weight),
                       novelty_weight)
    return _make(search.strategy, search.table(search.strategy), novelty_weight)


def _make(name: str, t, w: float) -> Strategy:
    if name in ("mu_plus_lambda", "mu_comma_lambda"):
        return MuLambda(t.population, t.elitism, t.selection.operator, t.selection.args,
                        comma=name == "mu_comma_lambda", crossover_prob=t.crossover_prob, novelty_weight=w)
    if name == "aging":
        return Aging(t.population, t.sample, w)
    if name == "random":
        return RandomSearch()
    if name == "nsga2":
        return NSGA2(t.population, [(o.name, o.direction) for o in t.objectives], t.crossover_prob)
    if name == "map_elites":
        return MapElites([(d.name, d.low, d.high, d.bins) for d in t.descriptors], t.crossover_prob, w)
    raise ValueError(f"unknown strategy {name!r}")
