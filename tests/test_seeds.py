"""Seed genomes: shipped, short, documented, valid; under a complexity limit of 1.5 the linear
seeds pass and softmax attention is rejected; the slow test trains each at stage 1."""
import pytest

from evo.seeds import SEED_NAMES, load_seeds
from fitness.policy import check_policy


def test_five_seeds_in_order():
    seeds = load_seeds()
    assert [n for n, _ in seeds] == list(SEED_NAMES) and len(seeds) == 5


@pytest.mark.parametrize("name,code", load_seeds())
def test_seed_is_short_documented_and_valid(name, code):
    assert code.lstrip().startswith('"""'), "top docstring"
    assert len(code.splitlines()) <= 55  # a page: the chunked GLA is the longest
    assert check_policy(code) is None


@pytest.mark.parametrize("name,code", load_seeds())
def test_complexity_limit_keeps_the_linear_seeds_and_rejects_softmax(name, code):
    from fitness.evaluate import evaluate
    from fitness.settings import FitnessSettings
    from genomes import SECRET, TINY

    settings = FitnessSettings.model_validate({
        "device": "cpu", "stage1": dict(TINY, batch_size=16, steps=10, eval_batches=1),
        "checks": {"complexity_probe": True, "complexity_lengths": [256, 512, 1024], "max_complexity_exponent": 1.5}})
    ev = evaluate(name, code, 1, None, 0, settings, SECRET)
    if name == "softmax_attention":
        assert ev.status == "rejected" and "above the limit max_complexity_exponent = 1.5" in ev.reason, ev.reason
    else:
        assert ev.status == "ok", ev.reason
        assert ev.metrics["complexity"]["scaling_exponent"] <= 1.5, ev.metrics["complexity"]


@pytest.mark.slow
@pytest.mark.parametrize("name,code", load_seeds())
def test_seed_stage1(name, code):
    from fitness.evaluate import evaluate
    from fitness.settings import FitnessSettings
    from genomes import SECRET

    ev = evaluate(name, code, 1, None, 0, FitnessSettings(device="cpu"), SECRET)
    print(name, ev.status, ev.score, round(ev.wall_s, 1), ev.reason)
    assert ev.status == "ok", ev.reason
