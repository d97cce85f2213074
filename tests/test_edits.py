"""operators.edits on the real seed genomes: reading SEARCH/REPLACE blocks from replies, applying
them exactly, across whitespace and indentation, as near misses, and refusing what is ambiguous,
unmatched, empty, cut off or does not give a module."""
import difflib
import random

import pytest
import torch

from evo.seeds import load_seeds
from fitness.checks import check_causality, check_output
from fitness.genome_module import load_genome
from fitness.settings import CheckSettings
from operators.edits import EditError, apply_edits, apply_reply, has_edits, parse_edits

SEEDS = dict(load_seeds())
LINEAR = SEEDS["linear_attention"]
Q_LINE = "        q = F.elu(q.view(b, t, h, e).transpose(1, 2)) + 1"
Q_SOFTPLUS = "        q = F.softplus(q.view(b, t, h, e).transpose(1, 2))"


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


def changed(old: str, new: str) -> list[str]:
    """The lines removed (-) and added (+), in order."""
    return [d for d in difflib.ndiff(old.splitlines(), new.splitlines()) if d[:1] in "+-"]


def test_an_exact_block_replaces_just_its_lines():
    new, why = apply_reply(LINEAR, f"MOTIVATION: softplus keys\n{block(Q_LINE, Q_SOFTPLUS)}")
    assert changed(LINEAR, new) == [f"- {Q_LINE}", f"+ {Q_SOFTPLUS}"] and why == "softplus keys"


@pytest.mark.parametrize("search", [Q_LINE.strip() + "   ", "    " + Q_LINE.rstrip(), "\t" + Q_LINE.strip()])
def test_other_indentation_and_trailing_spaces_match_and_the_replacement_is_reindented(search):
    shift = len(search) - len(search.lstrip()) - 8
    replace = " " * max(0, 8 + shift) + "q = F.softplus(q.view(b, t, h, e).transpose(1, 2))\n" \
        + " " * max(0, 8 + shift) + "q = q * 2"
    new = apply_edits(LINEAR, parse_edits(block(search, replace)))
    assert changed(LINEAR, new) == [f"- {Q_LINE}", f"+ {Q_SOFTPLUS}", "+         q = q * 2"]


def test_a_near_miss_applies_at_the_one_similar_place():
    typo = "        q = F.elu(q.view(b,t,h,e).transpose(1,2))+1"  # spacing differs: no exact or stripped match
    new = apply_edits(LINEAR, parse_edits(block(typo, Q_SOFTPLUS)))
    assert changed(LINEAR, new) == [f"- {Q_LINE}", f"+ {Q_SOFTPLUS}"]


def test_a_near_miss_as_close_to_two_places_is_ambiguous():
    both = "        x = F.elu(x.view(b, t, h, e).transpose(1, 2)) + 1"  # as close to the q line as to the k line
    with pytest.raises(EditError, match=r"block 1 .*line 25, line 26 equally well"):
        apply_edits(LINEAR, parse_edits(block(both, Q_SOFTPLUS)))


def test_an_exact_match_at_two_places_is_ambiguous():
    code = SEEDS["gated_linear_attention"]
    twice = "        super().__init__()"
    assert code.count(twice) == 1
    with pytest.raises(EditError, match="matches 2 places"):
        apply_edits(code + "\n\nclass Other:\n    def __init__(self):\n" + twice + "\n", parse_edits(block(twice, "")))


def test_a_block_that_matches_nothing_is_named_and_the_closest_lines_quoted():
    reply = block(Q_LINE, Q_SOFTPLUS) + "\n" + block("        mask = torch.triu(torch.ones(t, t))\n"
                                                     "        scores = scores.masked_fill(mask, 0)", "        pass")
    with pytest.raises(EditError) as err:
        apply_reply(LINEAR, reply)
    msg = str(err.value)
    assert msg.startswith("block 2 (SEARCH starting `mask = torch.triu(torch.ones(t, t))`) matches no lines")
    assert "mask = torch.ones(c, c, device=x.device).tril()" in msg  # the parent's closest lines, quoted
    assert "lines 32-33" in msg and "```" not in msg  # no fences: the repair prompt fences the error


def test_several_blocks_apply_in_order_and_give_a_working_mixer():
    reply = """MOTIVATION: output gate
Here are the edits:
```python
<<<<<<< SEARCH
        self.out = nn.Linear(d_model, d_model)
=======
        self.out = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(d_model, d_model)
>>>>>>> REPLACE
```
```python
<<<<<<< SEARCH
        return self.out(y.transpose(1, 2).reshape(b, t, d))
=======
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.out(y * torch.sigmoid(self.gate(x)))
>>>>>>> REPLACE
```
"""
    new, _ = apply_reply(LINEAR, reply)
    assert changed(LINEAR, new) == ["+         self.gate = nn.Linear(d_model, d_model)",
                                    "-         return self.out(y.transpose(1, 2).reshape(b, t, d))",
                                    "+         y = y.transpose(1, 2).reshape(b, t, d)",
                                    "+         return self.out(y * torch.sigmoid(self.gate(x)))"]
    torch.manual_seed(0)
    mixer = load_genome(new).Mixer(32, 4)
    x = torch.randn(2, 80, 32)
    assert check_output(mixer, x) is None and check_causality(mixer, x, CheckSettings(), random.Random(0)) is None


def test_markers_are_read_tolerantly():
    reply = ("MOTIVATION: m\n<<<<<<<\n" + Q_LINE + "\n========\n" + Q_SOFTPLUS + "\n"  # no SEARCH word, 8 '='
             "<<<<<<<< SEARCH\n```python\n        k = F.elu(k.view(b, t, h, e).transpose(1, 2)) + 1\n```\n"
             "=======\n```python\n        k = F.softplus(k.view(b, t, h, e).transpose(1, 2))\n```\n>>>>>>>\n"
             ">>>>>>> REPLACE\n")  # the first block has no end marker; fences inside the second; a stray end marker
    edits = parse_edits(reply)
    assert [e.search for e in edits] == [Q_LINE, "        k = F.elu(k.view(b, t, h, e).transpose(1, 2)) + 1"]
    assert [e.replace for e in edits] == [Q_SOFTPLUS, "        k = F.softplus(k.view(b, t, h, e).transpose(1, 2))"]
    assert has_edits(reply) and not has_edits("```python\n" + LINEAR + "```")


def test_an_unclosed_last_block_is_taken_unless_the_reply_was_cut_off():
    reply = f"<<<<<<< SEARCH\n{Q_LINE}\n=======\n{Q_SOFTPLUS}\n"
    assert parse_edits(reply)[0].replace == Q_SOFTPLUS
    with pytest.raises(EditError, match="block 1 has no >>>>>>> REPLACE line: the reply was cut off"):
        parse_edits(reply, cut_off=True)


@pytest.mark.parametrize("reply, why", [
    ("MOTIVATION: nothing to see", "no <<<<<<< SEARCH"),
    (block("", "        pass"), "block 1 has an empty SEARCH"),
    (f"<<<<<<< SEARCH\n{Q_LINE}\n>>>>>>> REPLACE", "has no ======= line"),
    (f"<<<<<<< SEARCH\n{Q_LINE}\n", "block 1 ends before its ======="),
])
def test_malformed_replies_are_errors(reply, why):
    with pytest.raises(EditError, match=why):
        parse_edits(reply)


@pytest.mark.parametrize("replace, why", [
    ("        q = F.softplus(q.view(b, t, h, e)", r"does not parse \(.*\) at `q = F.softplus"),
    (Q_LINE, "the edits change nothing"),
])
def test_a_result_that_is_no_new_module_is_an_error(replace, why):
    with pytest.raises(EditError, match=why):
        apply_edits(LINEAR, parse_edits(block(Q_LINE, replace)))
    short = SEEDS["short_conv"]
    with pytest.raises(EditError, match="defines no top-level `class Mixer`"):
        apply_edits(short, parse_edits(block("class Mixer(nn.Module):", "class Mixer2(nn.Module):")))


GATED = """import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.v = nn.Linear(d_model, d_model)

    def forward(self, x):
        y = self.v(x)
        if self.training:
            y = y * 0.9
        y = y.cumsum(dim=1)
        return y
"""


def test_a_search_indented_otherwise_line_by_line_is_refused_not_moved_into_a_block():
    """Before: the stripped lines matched, and the REPLACE (written for the SEARCH's indentation) silently moved
    the cumsum into the `if`: a valid module that mixes causally only while training."""
    search = "        if self.training:\n            y = y * 0.9\n            y = y.cumsum(dim=1)"
    with pytest.raises(EditError, match=r"block 1 .*lines 12-14 only with other indentation line by line"):
        apply_edits(GATED, parse_edits(block(search, search.replace("0.9", "0.8"))))
    shifted = "\n".join(line[4:] for line in search.split("\n")[:2])  # one shift for every line: re-indented
    new = apply_edits(GATED, parse_edits(block(shifted, shifted.replace("0.9", "0.8"))))
    assert changed(GATED, new) == ["-             y = y * 0.9", "+             y = y * 0.8"]


def test_a_near_miss_that_names_other_variables_is_refused():
    """The parent's q line is no longer the seed's; a SEARCH copying the seed's q line was 96% like the k line and
    silently replaced it (the k feature map gone, q assigned twice)."""
    parent = LINEAR.replace(Q_LINE, Q_SOFTPLUS)
    relu = "        q = F.relu(q.view(b, t, h, e).transpose(1, 2)) ** 2"
    with pytest.raises(EditError, match=r"(?s)block 1 .*matches no lines of the code; the closest \(line 26, .*k = F\.elu"):
        apply_edits(parent, parse_edits(block(Q_LINE, relu)))


def test_a_search_that_skips_a_line_of_the_code_is_refused():
    """Before: the 4 SEARCH lines matched 4 of the 5 code lines as a near miss; the `ksum` line was dropped and
    the `num` line doubled."""
    lines = LINEAR.split("\n")
    search = "\n".join(lines[33:35] + lines[36:38])  # lines 34, 35, 37, 38 (36 left out)
    replace = "\n".join(lines[33:35] + lines[36:37] + ["        before = before * 0.5"] + lines[37:38])
    with pytest.raises(EditError, match="matches no lines of the code"):
        apply_edits(LINEAR, parse_edits(block(search, replace)))
