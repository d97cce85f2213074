"""operators.researcher with a scripted backend: batching, determinism, parsing, repair, and children
asked as SEARCH/REPLACE edits (diff_share) of the real seed genomes."""
import random

from evo.seeds import load_seeds
from operators import prompts
from operators.backends import CachedBackend, DictCache, FunctionBackend
from operators.researcher import RepairItem, Researcher, Scored, Spec
from operators.settings import FREE_FORM_DIRECTIVE, LLMSettings
from records import Genome

SEEDS = dict(load_seeds())
Q_LINE = "        q = F.elu(q.view(b, t, h, e).transpose(1, 2)) + 1"
Q_SOFTPLUS = "        q = F.softplus(q.view(b, t, h, e).transpose(1, 2))"
EDIT = f"MOTIVATION: softplus queries\n```\n<<<<<<< SEARCH\n{Q_LINE}\n=======\n{Q_SOFTPLUS}\n>>>>>>> REPLACE\n```"

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
    req, d, fmt = Researcher(FunctionBackend(lambda r: GOOD), s, random.Random(0)).build(forced, 0)
    assert d == "forced edit" and "forced edit" in req.messages[1][1] and fmt == "full"


def test_examples_and_avoid_are_capped_by_settings():
    many = tuple(Scored(g(f"e{i}", f"class Mixer: e{i}"), i / 10) for i in range(5))
    s = LLMSettings(examples_k=2, avoid_k=0)
    req, _, _ = Researcher(FunctionBackend(lambda r: GOOD), s, random.Random(0)).build(
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


def seed_specs(n: int) -> list[Spec]:
    """Mutations of linear attention and crossovers of it (A) with the short convolution (B)."""
    a = Scored(Genome("lin", SEEDS["linear_attention"], "h1"), 0.5)
    b = Scored(Genome("conv", SEEDS["short_conv"], "h2"), 0.4)
    return [Spec((a,)) if i % 2 else Spec((a, b)) for i in range(n)]


def by_format(request) -> str:
    """A diff reply to a diff prompt, a whole module to a full one."""
    return EDIT if request.messages[0][1] == prompts.DIFF_SYSTEM else GOOD


def test_diff_children_are_the_first_parents_code_with_the_edits_applied():
    backend = FunctionBackend(by_format)
    props = Researcher(backend, LLMSettings(diff_share=1.0), random.Random(0)).propose(seed_specs(4))
    expected = SEEDS["linear_attention"].replace(Q_LINE, Q_SOFTPLUS)
    assert [p.edit_format for p in props] == ["diff"] * 4 and all(p.ok for p in props)
    assert [p.code for p in props] == [expected] * 4 and props[0].motivation == "softplus queries"
    assert [p.operator for p in props] == ["llm_crossover", "llm_mutate"] * 2
    assert all(p.base == SEEDS["linear_attention"] for p in props)  # parent A of the crossovers too
    assert all(r.messages[0][1] == prompts.DIFF_SYSTEM for r in backend.calls[0])


def test_diff_share_zero_never_asks_for_edits_and_draws_nothing_for_the_format():
    def run(share):
        backend = FunctionBackend(by_format)
        props = Researcher(backend, LLMSettings(diff_share=share), random.Random(5)).propose(seed_specs(12))
        return props, backend.calls[0]

    full, full_reqs = run(0.0)
    diff, diff_reqs = run(1.0)
    assert {p.edit_format for p in full} == {"full"} and {r.messages[0][1] for r in full_reqs} == {prompts.SYSTEM}
    assert all(p.code == GOOD.split("```python\n")[1].split("```")[0] for p in full)
    # neither 0 nor 1 draws the format: the same directives and sampling seeds either way
    assert [(p.directive, r.seed) for p, r in zip(full, full_reqs)] == \
        [(p.directive, r.seed) for p, r in zip(diff, diff_reqs)]


def test_a_seeded_rng_replays_the_same_formats():
    def formats(seed):
        backend = FunctionBackend(by_format)
        props = Researcher(backend, LLMSettings(diff_share=0.5), random.Random(seed)).propose(seed_specs(40))
        assert all((p.edit_format == "diff") == (r.messages[0][1] == prompts.DIFF_SYSTEM)
                   for p, r in zip(props, backend.calls[0]))
        return [p.edit_format for p in props]

    assert formats(7) == formats(7) != formats(8)
    assert 10 < formats(7).count("diff") < 30


def test_a_diff_reply_holding_a_whole_module_is_taken_and_a_cut_off_one_refused():
    whole = "MOTIVATION: rewrote it\n```python\n" + SEEDS["delta_rule"] + "```"
    p = Researcher(FunctionBackend(lambda r: whole), LLMSettings(diff_share=1.0), random.Random(0)).propose(
        seed_specs(2)[1:])[0]
    assert p.ok and p.edit_format == "diff" and p.code == SEEDS["delta_rule"]

    class CutOff(FunctionBackend):
        def generate(self, requests):
            out = super().generate(requests)
            for c in out:
                c.finish_reason = "length"
            return out

    unclosed = EDIT.replace(">>>>>>> REPLACE\n```", "")
    p = Researcher(CutOff(lambda r: unclosed), LLMSettings(diff_share=1.0), random.Random(0)).propose(
        seed_specs(2)[1:])[0]
    assert not p.ok and p.error.startswith("edit: block 1 has no >>>>>>> REPLACE") and "(reply cut off: length)" in p.error


def test_edits_that_do_not_apply_fail_and_their_repair_gets_the_parent_and_the_error():
    wrong = EDIT.replace(Q_LINE, "        q = torch.relu(q) * self.scale")
    p = Researcher(FunctionBackend(lambda r: wrong), LLMSettings(diff_share=1.0), random.Random(0)).propose(
        seed_specs(2)[1:])[0]
    assert not p.ok and p.edit_format == "diff"
    assert p.error.startswith("edit: block 1 (SEARCH starting `q = torch.relu(q) * self.scale`) matches no lines")
    item = RepairItem(p.base, p.error, p.parents, edits=True)
    fixed = {"blocks": EDIT, "module": "```python\n" + SEEDS["delta_rule"] + "```"}
    for reply, code in ((fixed["blocks"], SEEDS["linear_attention"].replace(Q_LINE, Q_SOFTPLUS)),
                        (fixed["module"], SEEDS["delta_rule"])):
        backend = FunctionBackend(lambda r, reply=reply: reply)
        r = Researcher(backend, LLMSettings(), random.Random(0)).repair([item])[0]
        system, user = backend.calls[0][0].messages[0][1], backend.calls[0][0].messages[1][1]
        assert system == prompts.DIFF_SYSTEM and SEEDS["linear_attention"].strip() in user and p.error in user
        assert r.ok and r.code == code and r.operator == "llm_repair" and r.parents == ("lin",)
        assert r.edit_format == "diff" and r.base == SEEDS["linear_attention"]


def test_a_full_repair_asks_for_the_whole_module():
    item = RepairItem(SEEDS["linear_attention"], "rejected: check failed: forward must return a Tensor, got NoneType",
                      ("c",))
    backend = FunctionBackend(lambda r: EDIT)  # blocks are not read when a whole module was asked for
    r = Researcher(backend, LLMSettings(), random.Random(0)).repair([item])[0]
    assert backend.calls[0][0].messages[0][1] == prompts.SYSTEM and r.edit_format == "full"
    assert not r.ok and r.error.startswith("parse:")
