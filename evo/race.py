"""Racing: more training seeds for the genomes whose rank matters, until noise cannot change it.

One training seed cannot rank mixers whose score moves by 0.05-0.4 from one training draw to
the next (bench/README.md). A genome's stage-1 score is the mean over its training seeds, with a
standard error from the pooled seed-to-seed SD (evo.score). After stage 1 of a step, a child gets its next training seed (from
`fitness.stage1_seeds()`, up to all of them) while

- it is a contender for the best place: its interval (mean ± z SE) reaches the best genome's,
  and it has fewer than `min_seeds` seeds or the intervals still overlap; or
- it is among the step's `promotion.top_k` best and has fewer than `min_seeds` seeds (only
  those can be promoted, so no genome goes to stage 2 on one seed).

The best genome is the one with the highest mean among the genomes the step can see that have
`min_seeds` seeds (at first the best seed genome: the seeds train with `baseline_seeds`).
"""
from __future__ import annotations

import statistics
from typing import Callable

from archive.store import Archive
from evo.score import Estimate, ok_runs, pooled_sd
from evo.screen import Child, Visible
from fitness.settings import FitnessSettings


def race(step: int, children: list[Child], archive: Archive, fitness: FitnessSettings, visible: Visible,
         train: Callable[[list[tuple[Child, int]]], None]) -> None:
    """Give the step's scored children more training seeds as the rules above say; `train` runs the
    given (child, training seed) pairs and stores their results in the children."""
    r, pool = fitness.racing, fitness.stage1_seeds()
    runs = ok_runs(archive, visible)
    sd = pooled_sd(runs.values())
    held = [Estimate(statistics.fmean(s), len(s), sd) for s in runs.values() if len(s) >= r.min_seeds]
    best = max(held, key=lambda e: e.mean, default=None)
    while True:
        scored = [c for c in children if c.score is not None and c.genome is not None]
        top = {c.genome.code for c in sorted(scored, key=lambda c: -c.score)[:fitness.promotion.top_k]}
        wanted = []
        for c in scored:
            have = {e.seed for e in c.evaluations}
            left = [s for s in pool if s not in have]
            if not left:
                continue
            e = Estimate(c.score, len(have), sd)
            contender = best is not None and e.high(r.z) >= best.low(r.z) and (
                e.n < r.min_seeds or e.low(r.z) <= best.high(r.z))
            if contender or (c.genome.code in top and e.n < r.min_seeds):
                wanted.append((c, left[0]))
        if not wanted:
            return
        train(wanted)
