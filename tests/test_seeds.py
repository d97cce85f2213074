"""Seed genomes: shipped, short, documented, valid; the slow test trains each at stage 1."""
import pytest

from evo.seeds import SEED_NAMES, load_seeds
from fitness.policy import check_policy


def test_five_seeds_in_order():
    seeds = load_seeds()
    assert [n for n, _ in seeds] == list(SEED_NAMES) and len(seeds) == 5


@pytest.mark.parametrize("name,code", load_seeds())
def test_seed_is_short_documented_and_valid(name, code):
    assert code.lstrip().startswith('"""'), "top docstring"
    assert len(code.splitlines()) <= 45
    assert check_policy(code) is None


@pytest.mark.slow
@pytest.mark.parametrize("name,code", load_seeds())
def test_seed_stage1(name, code):
    from fitness.evaluate import evaluate
    from fitness.settings import FitnessSettings
    from genomes import SECRET

    ev = evaluate(name, code, 1, None, 0, FitnessSettings(device="cpu"), SECRET)
    print(name, ev.status, ev.score, round(ev.wall_s, 1), ev.reason)
    assert ev.status == "ok", ev.reason
