"""Summaries over a real SQLite archive: seed baseline, Spearman, yield, the Pareto front."""
import pytest
from genomes import stored_genome

from archive.store import Archive
from evo.summary import rank_correlation, seed_baseline, yield_stats
from records import Evaluation


@pytest.fixture
def archive(tmp_path):
    a = Archive(tmp_path / "a.sqlite")
    for gid, s1, s2 in (("s1", 0.9, [0.8, 0.82]), ("s2", 0.3, [0.2, 0.25])):
        stored_genome(a, gid)
        a.add_evaluation(Evaluation(gid, 1, 0, "ok", s1))
        for seed, score in enumerate(s2):
            a.add_evaluation(Evaluation(gid, 2, seed, "ok", score))
    for gid, parent, s1, s2 in (("c1", "s1", 0.95, 0.9), ("c2", "s2", 0.1, 0.1), ("c3", "s2", 0.5, 0.6)):
        stored_genome(a, gid, "llm_mutate", (parent,), 1)
        a.add_evaluation(Evaluation(gid, 1, 0, "ok", s1))
        a.add_evaluation(Evaluation(gid, 2, 0, "ok", s2))
    stored_genome(a, "bad", "llm_mutate", ("s1",), 1)
    a.add_evaluation(Evaluation("bad", 1, 0, "rejected", reason="check failed: causality"))
    a.log_event("parse_failed", "no code")
    return a


def test_seed_baseline_is_best_seed_mean_per_stage(archive):
    assert seed_baseline(archive) == {"stage1": 0.9, "stage2": pytest.approx(0.81)}


def test_spearman_over_promoted_genomes(archive):
    corr = rank_correlation(archive)
    assert corr["n"] == 5 and corr["spearman"] == pytest.approx(1.0)
    assert corr["p_value"] == pytest.approx(2 / 120)  # exact: 2 of the 5! orders are as extreme


def test_spearman_counts_a_twin_with_copied_stage2_results_once(archive):
    stored_genome(archive, "twin", "llm_mutate", ("c2",), 2)
    archive.add_evaluation(Evaluation("twin", 1, 0, "ok", 0.1))
    archive.add_evaluation(Evaluation("twin", 2, 0, "ok", 0.1, metrics={"reused_from": "c2", "twin": True}))
    corr = rank_correlation(archive)
    assert corr["n"] == 5 and corr["twins"] == 1 and corr["p_value"] == pytest.approx(2 / 120)


def test_yield_counts_parse_failures_passes_and_wins(archive):
    stats = yield_stats(archive)
    assert stats["llm_children"] == 5 and stats["parsed"] == 4 and stats["passed_checks"] == 3
    assert stats["beat_parent"] == 2  # c1 > s1, c3 > s2; c2 < s2
