"""Who makes each child: the classic edits, the LLM (one batched call), or a seeded mix of both."""
import random

from evo.config import parse_config
from evo.seeds import load_seeds
from operators.backends import FunctionBackend
from operators.researcher import Scored, Spec
from operators.variation import Variation
from records import Genome

SEEDS = dict(load_seeds())
LLM = parse_config({}).llm


def specs(n: int) -> list[Spec]:
    a = Genome("a", SEEDS["linear_attention"], "ha")
    b = Genome("b", SEEDS["short_conv"], "hb")
    return [Spec((Scored(a, 0.5),) if i % 2 else (Scored(a, 0.5), Scored(b, 0.1))) for i in range(n)]


def reply(request) -> str:
    return "```python\n" + SEEDS["delta_rule"] + "```\nMotivation: test reply"


def test_classic_makes_every_child_without_a_model():
    made = Variation("classic", None, None, LLM).propose(specs(6), random.Random(0))
    assert all(p.code and p.operator.startswith("classic_") and p.completion is None for p in made)
    assert {p.edit_format for p in made} == {"classic"}
    assert [p.operator == "classic_crossover" for p in made] == [True, False] * 3
    assert made[1].parents == ("a",) and made[0].parents == ("a", "b")
    assert not Variation("classic", None, None, LLM).repairs


def test_mix_shares_children_by_probability_in_one_llm_call():
    backend = FunctionBackend(reply)
    made = Variation("mix", 0.5, backend, LLM).propose(specs(40), random.Random(1))
    classic = sum(p.operator.startswith("classic_") for p in made)
    assert 10 < classic < 30 and len(backend.calls) == 1 and len(backend.calls[0]) == 40 - classic
    again = Variation("mix", 0.5, FunctionBackend(reply), LLM).propose(specs(40), random.Random(1))
    assert [p.operator for p in again] == [p.operator for p in made]  # seeded
    assert all(p.operator.startswith("classic_") for p in Variation("mix", 1.0, backend, LLM).propose(
        specs(4), random.Random(0)))
