"""Promotion: which children of a step go on to stage 2 (bigger, longer, several seeds), and their runs.

Policies (`[fitness.promotion]`), among the children with `racing.min_seeds` training seeds:
`top_k` the k best by mean; `quantile` those at or above a quantile of every stage-1 mean the
step can see; `margin` those whose gain over the seed baseline (the best seed genome's mean)
less `margin` exceeds `racing.z` standard errors of the difference. The seeds themselves are
promoted by `top_k` at step 0. A genome whose stage-1 runs are bit-identical
to an earlier genome's with stage-2 results (same training seeds, same predictions on the secret
test set: the same function trained the same way, e.g. a rewrite that only renamed things) takes
that genome's stage-2 results instead of training again, and the policy picks among the others.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from typing import Callable

from tqdm import tqdm

from archive.store import Archive
from evo.score import estimate, ok_runs, pooled_sd
from evo.screen import Child, Visible
from fitness.executor import EvalJob, Executor
from fitness.settings import FitnessSettings
from records import Evaluation

log = logging.getLogger("evo")


def promote(step: int, children: list[Child], archive: Archive, executor: Executor, fitness: FitnessSettings,
            visible: Visible, store: Callable[[Evaluation], None]) -> None:
    """Stage 2 for the scored children: a behavioural twin of a genome with stage-2 results takes
    those results; the promotion policy picks among the others, whose runs are stored as they arrive
    (a twin would spend a promotion on a function whose stage 2 is already known)."""
    scored = [c for c in children if c.score is not None]
    twins = {c.genome.id: twin for c in scored if (twin := stage1_twin(archive, c, visible))}
    for genome_id, twin in twins.items():
        reuse_stage2(archive, genome_id, twin, fitness.stage2.seeds)
    chosen = promoted(fitness, step, [c for c in scored if c.genome.id not in twins], archive, visible)
    jobs = [EvalJob(c.genome.id, c.genome.code, 2, seed) for c in chosen for seed in fitness.stage2.seeds
            if not any(e.seed == seed for e in archive.evaluations(c.genome.id, stage=2))]
    for ev in tqdm(executor.run(jobs), total=len(jobs), desc=f"step {step} stage 2", unit="run", disable=not jobs):
        store(ev)
        log.info("  %s stage 2 seed %d %s %s", ev.genome_id, ev.seed, ev.status,
                 f"score={ev.score:.4f}" if ev.ok else ev.reason[:200])


def reuse_stage2(archive: Archive, genome_id: str, twin: str, seeds: list[int]) -> None:
    """Store the twin's stage-2 runs (of the configured seeds) as `genome_id`'s, marked as reused."""
    have = {e.seed for e in archive.evaluations(genome_id, stage=2)}
    copied = [ev for ev in archive.evaluations(twin, stage=2) if ev.seed in seeds and ev.seed not in have]
    if copied:
        archive.add_evaluations([dataclasses.replace(ev, genome_id=genome_id, metrics={
            **ev.metrics, "reused_from": twin, "twin": True}) for ev in copied])
        log.info("  %s stage 2: behavioural twin of %s (identical stage-1 training), its results reused",
                 genome_id, twin)


def promoted(fitness: FitnessSettings, step: int, scored: list[Child], archive: Archive,
             visible: Visible) -> list[Child]:
    """The scored children that go on to stage 2, best first, by the promotion policy; only those
    with `racing.min_seeds` training seeds are eligible (racing gave the best of them that many)."""
    rule, r = fitness.promotion, fitness.racing
    ranked = sorted((c for c in scored if len(c.evaluations) >= r.min_seeds), key=lambda c: -c.score)
    if step == 0 or rule.policy == "top_k":
        return ranked[:rule.top_k]
    if rule.policy == "quantile":
        every = sorted(statistics.fmean(s) for s in ok_runs(archive, visible).values())
        bar = every[min(len(every) - 1, int(rule.quantile * len(every)))]
        return [c for c in ranked if c.score >= bar][:rule.top_k]
    runs = ok_runs(archive, visible)
    sd = pooled_sd(runs.values())
    seeds = [runs[g.id] for g in archive.genomes(generation=0) if g.operator == "seed" and g.id in runs]
    if not seeds:
        return []
    base = max((estimate(s, sd) for s in seeds), key=lambda e: e.mean)

    def gain_shows(c: Child) -> bool:
        e = estimate([x.score for x in c.evaluations], sd)
        return e.mean - base.mean - rule.margin > r.z * math.hypot(e.se, base.se)

    return [c for c in ranked if gain_shows(c)][:rule.top_k]


def stage1_twin(archive: Archive, child: Child, visible: Visible) -> str | None:
    """An earlier visible genome with bit-identical stage-1 runs that has stage-2 results, or None."""
    key = fingerprint(child.evaluations)
    if key is None:
        return None
    runs: dict[str, list[Evaluation]] = {}
    for ev in archive.evaluations(stage=1, status="ok"):
        runs.setdefault(ev.genome_id, []).append(ev)
    twins = [gid for gid, evs in runs.items() if gid != child.genome.id and fingerprint(evs) == key
             and archive.evaluations(gid, stage=2) and visible(archive.genome(gid))]
    return min(twins, default=None)  # the same one whatever order the runs were stored in


def fingerprint(evaluations: list[Evaluation]) -> tuple | None:
    """(training seed, digest of the predictions) of every stage-1 run, or None if one lacks it."""
    keys = sorted((ev.seed, (ev.metrics or {}).get("predictions_sha256")) for ev in evaluations)
    return tuple(keys) if keys and all(d for _, d in keys) else None
