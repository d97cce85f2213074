"""operators.prompts: content, layout and size of the chat prompts, the diff variant, and what a
repair prompt shows (the whole short error, the line it points at, a contract example that passes
the real checks)."""
import pytest

from evo.seeds import load_seeds
from fitness.checks import run_checks
from fitness.genome_module import load_genome
from fitness.policy import check_policy
from fitness.settings import CheckSettings
from operators import prompts
from operators.edits import Edit, parse_edits
from operators.prompts import Example

LINEAR = dict(load_seeds())["linear_attention"]

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


def test_diff_prompts_share_the_contract_prefix_and_teach_the_format_the_parser_reads():
    full, diff = prompts.mutation(PARENT, "d"), prompts.mutation(PARENT, "d", edits=True)
    assert full[0]["content"] == prompts.SYSTEM and diff[0]["content"] == prompts.DIFF_SYSTEM
    assert prompts.SYSTEM.startswith(prompts.CONTRACT) and prompts.DIFF_SYSTEM.startswith(prompts.CONTRACT)
    assert "```python" not in prompts.DIFF_SYSTEM[len(prompts.CONTRACT):]
    assert parse_edits(prompts.DIFF_SYSTEM)[-1] == Edit("        q = F.elu(q) + 1", "        q = F.softplus(q)")
    # the user text differs only in its last line (the format), after the parent and directive
    assert full[1]["content"].rsplit("\n", 1)[0] == diff[1]["content"].rsplit("\n", 1)[0]
    assert diff[1]["content"].endswith("SEARCH/REPLACE blocks that edit the parent.")
    assert len(prompts.DIFF_SYSTEM) + len(diff[1]["content"]) < 1900
    cross = prompts.crossover(Example("AAA"), Example("BBB"), edits=True)
    assert cross[0]["content"] == prompts.DIFF_SYSTEM and cross[1]["content"].endswith("blocks that edit A.")


def test_repair_prompt_keeps_a_short_error_whole_and_a_long_one_head_and_tail():
    short = "rejected: check failed: output shape (2, 8, 16) != input shape (2, 8, 32) (batch, seq, d_model)"
    assert f"```\n{short}\n```" in prompts.repair("class Mixer: pass", short)[1]["content"]
    err = "RuntimeError: shape mismatch at the start " + "x" * 5000 + " ValueError: at the end"
    user = prompts.repair("class Mixer: pass", err)[1]["content"]
    assert "RuntimeError: shape mismatch at the start" in user and "ValueError: at the end" in user
    assert len(user) < 1500 + len(prompts.CONTRACT_EXAMPLE) + 400


def test_repair_prompt_leads_with_a_contract_example_that_passes_the_real_checks():
    assert check_policy(prompts.CONTRACT_EXAMPLE) is None
    assert "params_mixer_layer" in run_checks(lambda: load_genome(prompts.CONTRACT_EXAMPLE).Mixer(32, 4), 32, 64,
                                              CheckSettings(), seed=0)
    a, b = (prompts.repair(c, "failed: error: boom")[1]["content"] for c in ("class Mixer: a", "class Mixer: b"))
    assert a.startswith("A minimal mixer") and a.index(prompts.CONTRACT_EXAMPLE.strip()) < a.index("class Mixer: a")
    assert a[:a.index("class Mixer: a")] == b[:b.index("class Mixer: b")]  # a prefix every repair shares


@pytest.mark.parametrize("error, line", [
    ("failed: error: NameError: name 'qg' is not defined (genome line 25: `q = F.elu(...) + 1`)", 25),
    ('Traceback:\n  File "<genome>", line 33, in forward\n  File "/torch/nn/functional.py", line 2, in pad\n'
     '  File "<genome>", line 28, in <genexpr>\nRuntimeError: bad pad', 28),
    ("rejected: policy: line 8: import from `os` is not allowed", 8),
    ("rejected: policy: syntax error at line 12: invalid syntax", 12),
    ("failed: error: RuntimeError: The size of tensor a (64) must match the size of tensor b (128)", None),
    ("parse: ```python block: SyntaxError line 12: invalid syntax", None),  # the reply's line, not the code's
    ("failed: error: boom (genome line 999: `x`)", None),  # past the end
])
def test_error_line_reads_the_sandbox_and_policy_references(error, line):
    where = prompts.error_line(LINEAR, error)
    assert (where and where[0]) == line


def test_repair_prompt_marks_the_line_the_error_points_at():
    user = prompts.repair(LINEAR, "failed: error: ValueError: x (genome line 25: `q = ...`)")[1]["content"]
    assert "At line 25:" in user
    assert "        q = F.elu(q.view(b, t, h, e).transpose(1, 2)) + 1  # <-- the error points here" in user
    assert "        q, k, v = self.qkv(x).chunk(3, dim=-1)\n" in user  # context before it, unmarked


def test_forward_returning_none_points_at_its_missing_return():
    ret = "        return self.out(y.transpose(1, 2).reshape(b, t, d))\n"
    cut = LINEAR.replace(ret, "")  # a reply cut off at its token limit, trimmed to parse
    error = "rejected: check failed: forward must return a Tensor, got NoneType"
    n, note = prompts.error_line(cut, error)
    assert cut.split("\n")[n - 1].strip().startswith("y = (num / (den") and "without a return" in note
    assert prompts.error_line(LINEAR, error)[0] == LINEAR.split("\n").index(ret.rstrip("\n")) + 1
    assert prompts.error_line("not python (", error) is None


def test_an_edits_repair_asks_for_blocks_or_a_whole_module():
    msgs = prompts.repair(LINEAR, "edit: block 1 (SEARCH starting `x`) matches no lines", edits=True)
    assert msgs[0]["content"] == prompts.DIFF_SYSTEM
    assert "your SEARCH/REPLACE edits of it" in msgs[1]["content"]
    assert msgs[1]["content"].endswith(prompts.REPAIR_DIFF_REMINDER) and "whole fixed module" in msgs[1]["content"]


def test_a_long_motivation_shown_as_a_note_is_clipped():
    """A genome's note is the LLM's own MOTIVATION line; a degenerate reply repeats itself for thousands of
    characters, which every later prompt showing that genome would carry."""
    long = "softplus " * 1000
    msgs = prompts.mutation(PARENT, "d", examples=[Example("class Mixer: best", 0.9, long)],
                            avoid=[Example("x", None, long)])
    user = msgs[1]["content"]
    assert len(user) < 1500 and user.count("softplus softplus") >= 2 and "..." in user
    short = prompts.mutation(PARENT, "d", examples=[Example("class Mixer: best", 0.9, "a  gate")])[1]["content"]
    assert "# score 0.9000 - a  gate" in short  # short notes as they are (prompts, hence cache keys, unchanged)
