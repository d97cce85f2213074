"""The bench's statistics on known numbers: the verdict needs an interval that excludes zero and a
corrected test, IQM drops the outer quartiles."""
import numpy as np
import pytest

from evo.bench import stats


def test_pairwise_says_better_only_when_the_interval_excludes_zero():
    finals = {"a": np.array([0.5, 0.6, 0.7, 0.8, 0.9]), "b": np.array([0.42, 0.5, 0.61, 0.69, 0.8]),
              "c": np.array([0.45, 0.62, 0.68, 0.85, 0.88])}
    rows = {(r["a"], r["b"]): r for r in stats.pairwise(finals)}
    assert rows[("a", "b")]["verdict"] == "better" and rows[("a", "b")]["a12"] == pytest.approx(0.68)
    assert rows[("a", "c")]["verdict"] == "no difference detected"
    assert rows[("a", "b")]["p_holm"] >= rows[("a", "b")]["p"]


def test_iqm_ignores_the_outer_quartiles():
    finals = {"x": np.array([0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0])}
    point, low, high = stats.iqm_interval(finals)["x"]
    assert point == pytest.approx(0.5) and low <= point <= high


def test_pairwise_verdict_needs_a_corrected_test():
    base = np.array([0.50, 0.55, 0.60, 0.65, 0.70])
    finals = {"a": base + np.array([0.10, 0.12, 0.09, 0.11, 0.10]), "b": base}
    (row,) = stats.pairwise(finals)
    assert row["verdict"] == "better" and row["p_t_holm"] < 0.05 and row["p_holm"] >= 0.0625
    finals["c"] = base + np.array([0.01, -0.01, 0.02, -0.02, 0.015])
    rows = {(r["a"], r["b"]): r for r in stats.pairwise(finals)}
    assert rows[("b", "c")]["verdict"] == "no difference detected"
