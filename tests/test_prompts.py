"""operators.prompts: content, layout and size of the chat prompts."""
from operators import prompts
from operators.prompts import Example

PARENT = Example("class Mixer: pass", 0.4321, "elu+1 linear attention")


def test_mutation_prompt_has_contract_directive_parent_and_format():
    msgs = prompts.mutation(PARENT, "Use F.softplus instead of F.elu(x)+1.",
                            examples=[Example("class Mixer: best", 0.9)], avoid=[Example("x", None, "a decayed variant")])
    assert [m["role"] for m in msgs] == ["system", "user"]
    system, user = msgs[0]["content"], msgs[1]["content"]
    for needle in ("class Mixer(nn.Module)", "causal", "einops", "MOTIVATION:", "```python"):
        assert needle in system
    assert "Use F.softplus instead of F.elu(x)+1." in user
    assert "score 0.4321" in user and "class Mixer: pass" in user
    assert "score 0.9000" in user and "class Mixer: best" in user
    assert "move away" in user and "a decayed variant" in user
    # shared context (examples) comes before the per-child part (parent, directive): prefix caching
    assert user.index("class Mixer: best") < user.index("class Mixer: pass") < user.index("softplus")


def test_mutation_prompt_is_short_without_context():
    user = prompts.mutation(PARENT, "d")[1]["content"]
    assert "archive" not in user and "move away" not in user
    assert len(prompts.SYSTEM) + len(user) < 1500


def test_crossover_prompt_names_both_parents():
    user = prompts.crossover(Example("AAA", 0.5), Example("BBB", None))[1]["content"]
    assert "Mixer A (score 0.5000)" in user and "Mixer B (not scored)" in user
    assert user.index("AAA") < user.index("BBB")
    assert "ONE specific idea from B" in user


def test_repair_prompt_keeps_error_tail():
    err = "x" * 5000 + "RuntimeError: shape mismatch"
    user = prompts.repair("class Mixer: pass", err)[1]["content"]
    assert "RuntimeError: shape mismatch" in user and len(user) < 2500
