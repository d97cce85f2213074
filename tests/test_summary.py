"""Summaries and promotion over a real SQLite archive: seed baseline, Spearman, yield, promotion policies."""
import dataclasses

import pytest

from archive.normalise import code_hash
from archive.store import Archive
from records import Evaluation, Genome
from evo.loop import Child, promoted
from evo.summary import rank_correlation, seed_baseline, yield_stats
from fitness.settings import PromotionSettings


def _genome(archive, gid, operator="seed", parents=(), generation=0):
    code = f"class Mixer:\n    name = {gid!r}\n"
    genome = Genome(gid, code, code_hash(code), parents=parents, operator=operator, generation=generation)
    archive.add_genome(genome)
    return genome


@pytest.fixture
def archive(tmp_path):
    a = Archive(tmp_path / "a.sqlite")
    for gid, s1, s2 in (("s1", 0.9, [0.8, 0.82]), ("s2", 0.3, [0.2, 0.25])):
        _genome(a, gid)
        a.add_evaluation(Evaluation(gid, 1, 0, "ok", s1))
        for seed, score in enumerate(s2):
            a.add_evaluation(Evaluation(gid, 2, seed, "ok", score))
    for gid, parent, s1, s2 in (("c1", "s1", 0.95, 0.9), ("c2", "s2", 0.1, 0.1), ("c3", "s2", 0.5, 0.6)):
        _genome(a, gid, "llm_mutate", (parent,), 1)
        a.add_evaluation(Evaluation(gid, 1, 0, "ok", s1))
        a.add_evaluation(Evaluation(gid, 2, 0, "ok", s2))
    _genome(a, "bad", "llm_mutate", ("s1",), 1)
    a.add_evaluation(Evaluation("bad", 1, 0, "rejected", reason="check failed: causality"))
    a.log_event("parse_failed", "no code")
    return a


def test_seed_baseline_is_best_seed_mean_per_stage(archive):
    assert seed_baseline(archive) == {"stage1": 0.9, "stage2": pytest.approx(0.81)}


def test_spearman_over_promoted_genomes(archive):
    corr = rank_correlation(archive)
    assert corr["n"] == 5 and corr["spearman"] == pytest.approx(1.0)


def test_yield_counts_parse_failures_passes_and_wins(archive):
    stats = yield_stats(archive)
    assert stats["llm_children"] == 5 and stats["parsed"] == 4 and stats["passed_checks"] == 3
    assert stats["beat_parent"] == 2  # c1 > s1, c3 > s2; c2 < s2


def _children(archive, ids):
    return [Child(archive.genome(g), evaluation=archive.evaluations(g, stage=1)[0]) for g in ids]


def test_promotion_policies(archive):
    archive.set_meta("seed_baseline", seed_baseline(archive))
    kids = _children(archive, ["c1", "c2", "c3"])
    top = promoted(PromotionSettings(policy="top_k", top_k=2), 1, kids, archive)
    assert [c.genome.id for c in top] == ["c1", "c3"]
    margin = promoted(PromotionSettings(policy="margin", margin=0.01, top_k=5), 1, kids, archive)
    assert [c.genome.id for c in margin] == ["c1"]
    quant = promoted(PromotionSettings(policy="quantile", quantile=0.5, top_k=5), 1, kids, archive)
    assert [c.genome.id for c in quant] == ["c1", "c3"]  # median of 0.1 .. 0.95 is 0.5
    seeds = promoted(PromotionSettings(policy="margin", margin=0.5, top_k=1), 0, kids, archive)
    assert len(seeds) == 1  # the seed generation always promotes top_k


def test_stage1_twin_needs_identical_predictions_with_stage2_results(archive):
    from evo.loop import stage1_twin

    run = {"predictions_sha256": "0123456789abcdef", "reported": {"train_loss": 0.25}}
    _genome(archive, "orig")
    archive.add_evaluation(Evaluation("orig", 1, 0, "ok", 0.7, params=100, metrics=run))
    archive.add_evaluation(Evaluation("orig", 2, 0, "ok", 0.6, params=200, metrics=run))
    _genome(archive, "same", "llm_mutate", ("orig",), 1)
    same = Evaluation("same", 1, 0, "ok", 0.7, params=100, metrics=dict(run))
    archive.add_evaluation(same)
    assert stage1_twin(archive, same) == "orig"
    for changed in ({"predictions_sha256": "0123456789abcdee"}, {"seed": 1}):
        m = {**run, **{k: v for k, v in changed.items() if k in run}}
        ev = Evaluation("same", 1, changed.get("seed", 0), "ok", 0.7, params=100, metrics=m)
        assert stage1_twin(archive, ev) is None, changed
    _genome(archive, "lonely", "llm_mutate", ("s1",), 1)
    no_stage2 = Evaluation("x", 1, 0, "ok", 0.7, params=100, metrics={"predictions_sha256": "ffff"})
    archive.add_evaluation(dataclasses.replace(no_stage2, genome_id="lonely"))
    assert stage1_twin(archive, no_stage2) is None  # "lonely" matches but has no stage-2 results
    assert stage1_twin(archive, Evaluation("y", 1, 0, "ok", 0.7)) is None  # no predictions digest: no fingerprint
