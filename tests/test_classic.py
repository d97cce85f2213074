"""Classic (non-LLM) edits: each applies to the seed genomes, keeps the Mixer contract (the real
policy and structural checks pass), is seeded, and says when it does not apply; the crossover
runs both parents' Mixers."""
import random

import pytest
import torch

from evo.seeds import load_seeds
from fitness.checks import run_checks
from fitness.genome_module import load_genome
from fitness.policy import check_policy
from fitness.settings import CheckSettings
from operators import classic

torch.set_num_threads(1)
SEEDS = dict(load_seeds())
CHECKS = CheckSettings(complexity_probe=False)


def passes_checks(code: str) -> dict:
    module = load_genome(code)
    return run_checks(lambda: module.Mixer(32, 2), 32, 32, CHECKS, seed=0)


@pytest.mark.parametrize("edit", sorted(classic.MUTATIONS))
def test_each_edit_applies_somewhere_and_its_children_pass_the_checks(edit):
    made = 0
    for name, code in SEEDS.items():
        child = classic.MUTATIONS[edit](code, random.Random(f"{edit}:{name}"))
        if child is None:
            continue
        made += 1
        assert child != code
        assert check_policy(child) is None, (edit, name)
        assert passes_checks(child)["params_mixer_layer"] > 0, (edit, name)
    assert made, f"{edit} applies to no seed genome"


def test_mutate_is_seeded_and_names_its_edit():
    code = SEEDS["linear_attention"]
    a = classic.mutate(code, random.Random(3))
    assert a == classic.mutate(code, random.Random(3))
    assert a[1] in classic.MUTATIONS
    edits = {classic.mutate(code, random.Random(i))[1] for i in range(40)}
    assert len(edits) >= 4  # the edit is drawn among those that apply


def test_an_edit_that_does_not_apply_says_so():
    assert classic.drop_gate(SEEDS["softmax_attention"], random.Random(0)) is None
    with pytest.raises(classic.ClassicError, match="class Mixer"):
        classic.mutate("x = 1\n", random.Random(0))
    with pytest.raises(classic.ClassicError, match="unparsable"):
        classic.mutate("class Mixer(:\n", random.Random(0))


def test_skip_starts_as_its_parent():
    code = SEEDS["short_conv"]
    child = classic.add_skip(code, random.Random(0))
    torch.manual_seed(0)
    parent = load_genome(code).Mixer(32, 2)
    torch.manual_seed(0)
    son = load_genome(child).Mixer(32, 2)
    x = torch.randn(2, 16, 32)
    assert torch.equal(parent(x), son(x))  # the skip's scale starts at zero


def test_crossover_blends_both_parents_and_passes_the_checks():
    a, b = SEEDS["delta_rule"], SEEDS["short_conv"]
    child = classic.crossover(a, b, random.Random(0))
    assert check_policy(child) is None
    module = load_genome(child)
    mixer = module.Mixer(32, 2)
    assert isinstance(mixer.a, module.A_Mixer) and isinstance(mixer.b, module.B_Mixer)
    n_a = sum(p.numel() for p in load_genome(a).Mixer(32, 2).parameters())
    n_b = sum(p.numel() for p in load_genome(b).Mixer(32, 2).parameters())
    assert sum(p.numel() for p in mixer.parameters()) == n_a + n_b + 1
    assert passes_checks(child)["params_mixer_layer"] > 0
    again = classic.crossover(child, a, random.Random(0))  # a crossover of a crossover still names apart
    assert check_policy(again) is None and passes_checks(again)
