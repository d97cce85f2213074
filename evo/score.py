"""A genome's score: the mean over its training seeds with a standard error, and the score
strategies select on.

The standard error uses the pooled seed-to-seed SD of the genomes with several seeds, or the
genome's own SD where it has three or more seeds and that is larger (a mixer whose draws spread
more than most must not look surer than it is). The selection score is the stage-1 mean; once a genome has
stage-2 results, it is the stage-1 seed baseline plus the genome's stage-2 gain over the stage-2
seed baseline, so the larger model's verdict decides survival, in the stage-1 score's units.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Iterable

from archive.store import Archive
from evo.summary import stage_scores


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A genome's stage-1 score: mean over n training seeds, with the pooled SD."""

    mean: float
    n: int
    sd: float

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n)

    def low(self, z: float) -> float:
        return self.mean - z * self.se

    def high(self, z: float) -> float:
        return self.mean + z * self.se


def pooled_sd(runs: Iterable[list[float]]) -> float:
    """Pooled SD over genomes with two or more seeds, each weighted by its degrees of freedom (0.0
    when there are none)."""
    several = [scores for scores in runs if len(scores) >= 2]
    dof = sum(len(s) - 1 for s in several)
    return math.sqrt(sum((len(s) - 1) * statistics.variance(s) for s in several) / dof) if dof else 0.0


def estimate(scores: list[float], pooled: float) -> Estimate:
    """The mean of `scores` with the pooled SD, or the genome's own SD from three seeds on if larger."""
    own = statistics.stdev(scores) if len(scores) >= 3 else 0.0
    return Estimate(statistics.fmean(scores), len(scores), max(pooled, own))


def ok_runs(archive: Archive, visible) -> dict[str, list[float]]:
    """genome id -> stage-1 scores, for the visible genomes whose every stage-1 run is ok."""
    return {gid: scores for gid, scores in stage_scores(archive, 1).items() if visible(archive.genome(gid))}


def selection_score(stage1: list[float], stage2: list[float | None], baseline: dict) -> float | None:
    """The stage-1 mean, or, with stage-2 results and both seed baselines known, the stage-1
    baseline plus the stage-2 gain over the stage-2 baseline. A failed stage-2 run (None) leaves
    no score: failing the larger model must not keep the stage-1 score."""
    if any(s is None for s in stage2):
        return None
    if stage2 and baseline.get("stage1") is not None and baseline.get("stage2") is not None:
        return baseline["stage1"] + statistics.fmean(stage2) - baseline["stage2"]
    return statistics.fmean(stage1)


def test_loss(metrics: dict) -> float:
    """The engine's held-out test loss of one run: its task's, or the sum over a task mix's."""
    if "test_loss" in metrics:
        return float(metrics["test_loss"])
    return float(sum(v for k, v in metrics.items() if k.endswith("/test_loss")))
