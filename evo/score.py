"""A genome's score: the mean over its training seeds with a standard error, and the score
strategies select on.

The standard error uses the pooled seed-to-seed SD of the genomes with several seeds (a genome
with one seed has no SD of its own). The selection score is the stage-1 mean; once a genome has
stage-2 results, it is the stage-1 seed baseline plus the genome's stage-2 gain over the stage-2
seed baseline, so the larger model's verdict decides survival, in the stage-1 score's units.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Iterable

from archive.store import Archive
from records import Evaluation


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
    """Root of the mean sample variance over genomes with two or more seeds (0.0 when there are none)."""
    variances = [statistics.variance(scores) for scores in runs if len(scores) >= 2]
    return math.sqrt(statistics.fmean(variances)) if variances else 0.0


def ok_runs(archive: Archive, visible) -> dict[str, list[float]]:
    """genome id -> stage-1 scores, for the visible genomes whose every stage-1 run is ok."""
    runs: dict[str, list[Evaluation]] = {}
    for ev in archive.evaluations(stage=1):
        runs.setdefault(ev.genome_id, []).append(ev)
    return {gid: [e.score for e in evs] for gid, evs in runs.items()
            if all(e.ok for e in evs) and visible(archive.genome(gid))}


def selection_score(stage1: list[float], stage2: list[float], baseline: dict) -> float:
    """The stage-1 mean, or, with stage-2 results and both seed baselines known, the stage-1
    baseline plus the stage-2 gain over the stage-2 baseline."""
    if stage2 and baseline.get("stage1") is not None and baseline.get("stage2") is not None:
        return baseline["stage1"] + statistics.fmean(stage2) - baseline["stage2"]
    return statistics.fmean(stage1)
