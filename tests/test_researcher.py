"""operators.researcher with a scripted backend: batching, determinism, parsing, repair."""
import random

from records import Genome
from operators.backends import CachedBackend, DictCache, FunctionBackend
from operators.researcher import Researcher, Scored, Spec
from operators.settings import FREE_FORM_DIRECTIVE, LLMSettings

GOOD = "MOTIVATION: softplus\n```python\nimport torch\nfrom torch import nn\n\nclass Mixer(nn.Module):\n    pass\n```"


def g(i: str, code: str = "class Mixer: pass") -> Genome:
    return Genome(id=i, code=code, code_hash=i, motivation=f"seed {i}")


def specs():
    a, b = Scored(g("a"), 0.5), Scored(g("b"), 0.7)
    return [Spec((a,), examples=(b,)), Spec((b,), avoid=(a,)), Spec((a, b), examples=(b,)), Spec((a,))]


def test_propose_one_batched_call_and_proposals_in_order():
    backend = FunctionBackend(lambda r: GOOD if "Mixer B" not in r.messages[1][1] else "no code here")
    props = Researcher(backend, LLMSettings(), random.Random(0)).propose(specs())
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 4
    assert [p.operator for p in props] == ["llm_mutate", "llm_mutate", "llm_crossover", "llm_mutate"]
    assert [p.parents for p in props] == [("a",), ("b",), ("a", "b"), ("a",)]
    assert props[0].ok and props[0].motivation == "softplus" and "class Mixer" in props[0].code
    assert not props[2].ok and props[2].error.startswith("parse:")
    assert [r.sample for r in backend.calls[0]] == [0, 1, 2, 3]
    assert props[0].directive in LLMSettings().directives + [FREE_FORM_DIRECTIVE]
    assert props[0].directive in backend.calls[0][0].messages[1][1]


def test_deterministic_given_rng_seed():
    def run(seed):
        backend = FunctionBackend(lambda r: GOOD)
        props = Researcher(backend, LLMSettings(), random.Random(seed)).propose(specs())
        return [(p.directive, p.request) for p in props]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_directive_draw_respects_settings():
    s = LLMSettings(directives=["only this"], free_form_prob=0.0)
    r = Researcher(FunctionBackend(lambda r: GOOD), s, random.Random(0))
    assert {r.directive() for _ in range(20)} == {"only this"}
    s = LLMSettings(free_form_prob=1.0)
    assert Researcher(FunctionBackend(lambda r: GOOD), s, random.Random(0)).directive() == FREE_FORM_DIRECTIVE
    forced = Spec((Scored(g("a")),), directive="forced edit")
    req, d = Researcher(FunctionBackend(lambda r: GOOD), s, random.Random(0)).build(forced, 0)
    assert d == "forced edit" and "forced edit" in req.messages[1][1]


def test_examples_and_avoid_are_capped_by_settings():
    many = tuple(Scored(g(f"e{i}", f"class Mixer: e{i}"), i / 10) for i in range(5))
    s = LLMSettings(examples_k=2, avoid_k=0)
    req, _ = Researcher(FunctionBackend(lambda r: GOOD), s, random.Random(0)).build(
        Spec((Scored(g("p")),), examples=many, avoid=many), 0)
    user = req.messages[1][1]
    assert "class Mixer: e0" in user and "class Mixer: e1" in user and "class Mixer: e2" not in user
    assert "move away" not in user


def test_repair_batched_and_replayed_from_cache():
    backend = FunctionBackend(lambda r: GOOD)
    cached = CachedBackend(backend, DictCache())
    items = [("class Mixer: broken", "TypeError: x", ("p1",)), ("class Mixer: b2", "shape", ("p2", "p3"))]
    first = Researcher(cached, LLMSettings(), random.Random(3)).repair(items)
    assert len(backend.calls) == 1 and [p.operator for p in first] == ["llm_repair"] * 2
    assert [p.parents for p in first] == [("p1",), ("p2", "p3")] and all(p.ok for p in first)
    assert "TypeError: x" in backend.calls[0][0].messages[1][1]
    again = Researcher(cached, LLMSettings(), random.Random(3)).repair(items)
    assert len(backend.calls) == 1 and [p.code for p in again] == [p.code for p in first]
    assert all(p.completion.cached for p in again)


def test_backend_failure_becomes_proposal_error():
    class Dead(FunctionBackend):
        def generate(self, requests):
            out = super().generate(requests)
            for c in out:
                c.text, c.finish_reason, c.error = "", "deadline", "aborted"
            return out

    p = Researcher(Dead(lambda r: ""), LLMSettings(), random.Random(0)).propose(specs()[:1])[0]
    assert not p.ok and p.error.startswith("deadline")
