"""Racing: more training seeds for the genomes whose rank matters.

One training seed cannot rank mixers whose score moves by 0.05-0.4 from one training draw to
the next (bench/README.md). A genome's stage-1 score is the mean over its training seeds, with a
standard error from the seed-to-seed SD (evo.score.estimate). After stage 1 of a step, a child
gets its next training seed (from `fitness.stage1_seeds()`, up to all of them) while

- it is a contender for the best place: its interval (mean ± z SE) reaches the best genome's,
  and it has fewer than `min_seeds` seeds or the intervals still overlap; or
- it is among the step's `promotion.top_k` best and has fewer than `min_seeds` seeds (only
  those can be promoted, so no genome goes to stage 2 on one seed).

The best genome, and the pooled SD, come from the genomes of earlier steps the step can see
(the best: highest mean among those with `min_seeds` seeds; at first the best seed genome, the
seeds train with `baseline_seeds`); a copy of the best is not raced against itself. The race is
replayed from the children's `stage1.seeds` results, one round at a time, using results a child
already holds before training new ones, so a step redone after a kill races exactly as the
first try did.
"""
from __future__ import annotations

import statistics
from typing import Callable

from archive.store import Archive
from evo.score import estimate, ok_runs, pooled_sd
from evo.screen import Child, Visible
from fitness.settings import FitnessSettings


def race(step: int, children: list[Child], archive: Archive, fitness: FitnessSettings, visible: Visible,
         train: Callable[[list[tuple[Child, int]]], None]) -> None:
    """Give the step's scored children more training seeds as the rules above say; `train` runs the
    given (child, training seed) pairs and stores their results in the children."""
    r, pool = fitness.racing, fitness.stage1_seeds()
    earlier: dict[str, list[float]] = {}  # source -> scores, one entry per distinct source
    for gid, scores in ok_runs(archive, visible).items():
        genome = archive.genome(gid)
        if genome.generation != step:
            earlier.setdefault(genome.code, scores)
    sd = pooled_sd(earlier.values())
    held = {code: estimate(s, sd) for code, s in earlier.items() if len(s) >= r.min_seeds}
    best_code = max(held, key=lambda code: held[code].mean, default=None)
    best = held.get(best_code)
    first = set(fitness.stage1.seeds)
    seen = {id(c): [e for e in c.evaluations if e.seed in first] for c in children}
    while True:
        scored = [c for c in children if c.genome is not None and c.genome.code != best_code
                  and seen[id(c)] and all(e.ok for e in seen[id(c)])]
        means = {id(c): statistics.fmean(e.score for e in seen[id(c)]) for c in scored}
        top = {id(c) for c in sorted(scored, key=lambda c: -means[id(c)])[:fitness.promotion.top_k]}
        wanted = []
        for c in scored:
            have = {e.seed for e in seen[id(c)]}
            left = [s for s in pool if s not in have]
            if not left:
                continue
            e = estimate([x.score for x in seen[id(c)]], sd)
            contender = best is not None and e.high(r.z) >= best.low(r.z) and (
                e.n < r.min_seeds or e.low(r.z) <= best.high(r.z))
            if contender or (id(c) in top and e.n < r.min_seeds):
                wanted.append((c, left[0]))
        if not wanted:
            return
        new = [(c, s) for c, s in wanted if s not in {e.seed for e in c.evaluations}]
        if new:
            train(new)
        for c, s in wanted:
            got = [e for e in c.evaluations if e.seed == s]
            if not got:  # training stopped (the run is being interrupted)
                return
            seen[id(c)] += got
