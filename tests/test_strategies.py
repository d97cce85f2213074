"""Strategies on their own (DEAP underneath, members with made-up scores): who breeds, who survives,
and that a checkpointed state restores to the same future."""
import json
import random

import pytest

from evo.config import SearchSettings, parse_config
from evo.strategies import Member, make_strategy
from evo.strategies.aging import Aging
from evo.strategies.islands import Islands
from evo.strategies.map_elites import MapElites
from evo.strategies.mu_lambda import MuLambda
from evo.strategies.nsga2 import NSGA2
from evo.strategies.random_search import RandomSearch
from records import Genome


def member(i: int, score: float | None, **objectives) -> Member:
    return Member(Genome(f"g{i:03d}", f"code {i}", f"h{i:03d}"), score, dict(objectives))


def seeds(n=5):
    return [member(i, i / 10, params=1000.0 * (i + 1), novelty=0.3 * (n - i)) for i in range(n)]


def test_mu_plus_lambda_keeps_mu_with_the_elite():
    s = MuLambda(4, elitism=1, selection="selTournament", args={"tournsize": 2}, comma=False, crossover_prob=0.0,
                 novelty_weight=0.0)
    s.seed(seeds())
    asks = s.ask(6, random.Random(0))
    assert len(asks) == 6 and all(len(a.parents) == 1 for a in asks)
    s.tell([member(10, 0.05), member(11, None), member(12, 0.9)], random.Random(1))
    ids = [m.id for m in s.population()]
    assert len(ids) == 4 and "g012" in ids and "g011" not in ids  # the elite (0.9) survives; a failed child never


def test_mu_comma_lambda_survivors_are_children():
    s = MuLambda(2, elitism=0, selection="selBest", args={}, comma=True, crossover_prob=0.0, novelty_weight=0.0)
    s.seed(seeds())
    s.tell([member(10, 0.01), member(11, 0.02), member(12, 0.03)], random.Random(0))
    assert sorted(m.id for m in s.population()) == ["g011", "g012"]  # the parents (up to 0.4) are gone


def test_crossover_prob_pairs_parents_with_another_member():
    s = MuLambda(5, elitism=0, selection="selRandom", args={}, comma=False, crossover_prob=1.0, novelty_weight=0.0)
    s.seed(seeds())
    asks = s.ask(20, random.Random(0))
    assert all(len(a.parents) == 2 and a.parents[0].id != a.parents[1].id for a in asks)


def test_novelty_weight_changes_who_is_selected():
    plain = MuLambda(2, 1, "selBest", {}, False, 0.0, novelty_weight=0.0)
    novel = MuLambda(2, 1, "selBest", {}, False, 0.0, novelty_weight=1.0)
    for s in (plain, novel):
        s.seed(seeds())
        s.tell([], random.Random(0))
    assert [m.id for m in plain.population()] == ["g004", "g003"]  # by score
    assert [m.id for m in novel.population()] == ["g000", "g001"]  # score + novelty: 1.5 and 1.3 beat 0.4 + 0.3


def test_aging_replaces_the_oldest_and_tournaments_on_a_sample():
    s = Aging(population=3, sample=3, novelty_weight=0.0)
    s.seed(seeds(3))
    assert [a.parents[0].id for a in s.ask(4, random.Random(0))] == ["g002"] * 4  # S = P: always the best
    s.tell([member(10, 0.05), member(11, None)], random.Random(0))
    assert [m.id for m in s.population()] == ["g001", "g002", "g010"]  # g000, the oldest, left; failures ignored


def test_aging_fills_the_population_with_mutants_first():
    s = Aging(population=10, sample=2, novelty_weight=0.0)
    s.seed(seeds(3))
    draws = [a.parents[0].id for a in s.ask(7, random.Random(0))]
    assert len(set(draws)) > 1  # uniform over members while filling, not a tournament winner


def test_random_search_only_varies_seeds():
    s = RandomSearch()
    s.seed(seeds())
    s.tell([member(10, 0.99)], random.Random(0))
    parents = {a.parents[0].id for a in s.ask(50, random.Random(0))}
    assert parents <= {f"g{i:03d}" for i in range(5)} and len(parents) == 5


def test_nsga2_keeps_the_front_and_survivors_by_rank():
    s = NSGA2(3, [("score", "max"), ("params", "min")], crossover_prob=0.0)
    s.seed(seeds())  # score rises with params: every seed is on the front
    assert len(s.front) == 5 and len(s.population()) == 3
    s.tell([member(10, 0.9, params=500.0)], random.Random(0))  # dominates every seed
    assert [m.id for m in s.front] == ["g010"]
    assert "g010" in [m.id for m in s.population()]
    assert len(s.ask(4, random.Random(0))) == 4 and len(s.ask(7, random.Random(0))) == 7


def test_map_elites_keeps_one_elite_per_cell():
    s = MapElites([("log_params", 3.0, 5.0, 2), ("novelty", 0.0, 1.0, 2)], crossover_prob=0.0, novelty_weight=0.0)
    s.seed([member(0, 0.1, params=2000.0, novelty=0.2), member(1, 0.3, params=3000.0, novelty=0.3),
            member(2, 0.5, params=50000.0, novelty=0.9), member(3, None)])
    assert sorted(s.cells) == [(0, 0), (1, 1)] and s.cells[(0, 0)].id == "g001"
    s.tell([member(4, 0.2, params=2500.0, novelty=0.1)], random.Random(0))  # worse than g001's cell
    assert s.cells[(0, 0)].id == "g001"
    assert {a.parents[0].id for a in s.ask(30, random.Random(0))} == {"g001", "g002"}


def test_islands_migrate_the_best_in_a_ring():
    s = Islands(2, migrants=1, every=1, make_inner=lambda: Aging(3, 2, 0.0), novelty_weight=0.0)
    s.seed(seeds(3))
    asks = s.ask(4, random.Random(0))
    assert [a.island for a in asks] == [0, 0, 1, 1]
    best0 = member(10, 0.95)
    best0.island = 0
    s.tell([best0], random.Random(0))  # one step: migrate
    assert "g010" in [m.id for m in s.islands[1].population()]
    assert all(m.island == 1 for m in s.islands[1].population())


CONFIGS = {
    "mu_plus_lambda": {}, "mu_comma_lambda": {}, "aging": {}, "random": {}, "nsga2": {},
    "map_elites": {"map_elites": {"descriptors": [{"name": "log_params", "low": 3, "high": 5, "bins": 3},
                                                  {"name": "novelty", "low": 0, "high": 1, "bins": 3}]}},
    "islands": {"islands": {"strategy": "mu_plus_lambda", "every": 2}},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_restored_state_has_the_same_future(name):
    search = parse_config({"search": {"strategy": name, **CONFIGS[name]}}).search
    assert isinstance(search, SearchSettings)
    first = make_strategy(search, 0.0)
    first.seed(seeds())
    for step in range(3):
        children = [member(100 + 10 * step + i, random.Random(step * 7 + i).random(), params=1000.0 * (i + 1),
                           novelty=0.1 * i) for i in range(4)]
        for child, ask in zip(children, first.ask(4, random.Random(step))):
            child.island = ask.island
        first.tell(children, random.Random(step))
    state = json.loads(json.dumps(first.state()))
    members = {m.id: m for m in first.members()}
    second = make_strategy(search, 0.0)
    second.restore(state, members)
    assert [m.id for m in second.population()] == [m.id for m in first.population()]
    ask = lambda s: [([p.id for p in a.parents], a.island) for a in s.ask(6, random.Random(99))]  # noqa: E731
    assert ask(second) == ask(first)
