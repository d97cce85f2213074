"""Breeding one step: from the strategy's asks to children scored at stage 1.

For each ask (one parent: a mutation, two: a crossover) build the variation spec (the parents
with their scores, the population's best as examples, the first parent's nearest neighbours to
move away from, the analyst's notes on the steps it can see: evo.analysis), let the operator
propose every child of the step at once, screen them, train each at stage 1 with every training
seed (children of one step with the same source train once), send the failures back to the LLM
for repair, a bounded number of times, and race the contenders (evo.race: more training seeds
where the rank matters). The result holds, per ask, the last child made for it. Results are
stored as they arrive; a step redone after an interruption finds them and makes the same children.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import statistics
import threading
import time
from typing import Callable

from tqdm import tqdm

from archive.store import Archive
from evo import analysis
from evo.config import Config
from evo.neighbours import Neighbours
from evo.race import race
from evo.screen import Child, Screen, Visible
from evo.strategies import Ask
from fitness.executor import EvalJob, Executor
from operators.researcher import Proposal, RepairItem, Scored, Spec
from operators.variation import Variation
from records import Evaluation

log = logging.getLogger("evo")

REPAIR_SLOTS = 100_000  # slot numbers of repair attempt a start at a * REPAIR_SLOTS


class Stopped(RuntimeError):
    """The search is stopping: results arriving now are not stored."""


@dataclasses.dataclass
class Bred:
    """One step's outcome: per ask the last child made for it (None if nothing parsed), and every proposal."""

    step: int
    children: list[Child]
    proposals: list[Proposal]
    llm_s: float = 0.0  # wall seconds of the step's calls to the operator (LLM proposals and repairs)


class Breeder:
    """Makes the children of a step. Thread-safe: two steps may breed at once (steady state)."""

    def __init__(self, config: Config, archive: Archive, executor: Executor, variation: Variation,
                 neighbours: Neighbours | None, lag: int):
        self.config, self.archive, self.executor, self.variation = config, archive, executor, variation
        self.neighbours, self.lag = neighbours, lag
        self.seeds = list(config.fitness.stage1.seeds)
        self.screen = Screen(archive, neighbours, self.seeds, lag)
        self.stop = threading.Event()

    def breed(self, step: int, asks: list[Ask], examples: tuple[Scored, ...]) -> Bred:
        """Propose, screen, train and repair the children of `asks`."""
        seed, repairs = self.config.run.seed, self.config.llm.repair_attempts
        specs = [self.spec(a, examples, step) for a in asks]
        t0 = time.perf_counter()
        proposals = check_backend(self.variation.propose(specs, random.Random(f"{seed}:{step}:propose")))
        llm_s = time.perf_counter() - t0 if any(p.request is not None for p in proposals) else 0.0
        islands = [a.island for a in asks]
        final = self.screen(step, proposals, islands, slot_base=0)
        latest = list(enumerate(final))
        for attempt in range(1, repairs + 2):
            self.evaluate(step, [c for _, c in latest])
            broken = [(i, c) for i, c in latest if c.error and (c.genome is not None or reply_text(c))]
            if not broken or attempt > repairs or not self.variation.repairs:
                break
            log.info("step %d: repairing %d children (attempt %d)", step, len(broken), attempt)
            t0 = time.perf_counter()
            repaired = check_backend(self.variation.repair([repair_item(c) for _, c in broken],
                                                           random.Random(f"{seed}:{step}:repair:{attempt}")))
            llm_s += time.perf_counter() - t0
            proposals += repaired
            made = self.screen(step, repaired, [islands[i] for i, _ in broken], slot_base=attempt * REPAIR_SLOTS)
            latest = [(i, c) for (i, _), c in zip(broken, made)]
            for i, c in latest:
                final[i] = c
        race(step, final, self.archive, self.config.fitness, Visible(step, self.lag), self.train_more)
        return Bred(step, final, proposals, llm_s)

    def train_more(self, pairs: list[tuple[Child, int]]) -> None:
        """One more stage-1 training seed for each child named (racing)."""
        extra = {id(c): s for c, s in pairs}
        children = [c for c, _ in pairs]
        self.evaluate(children[0].genome.generation, children,
                      seeds=lambda c: sorted({e.seed for e in c.evaluations} | {extra[id(c)]}))

    def spec(self, ask: Ask, examples: tuple[Scored, ...], step: int) -> Spec:
        """The variation spec of one ask; for the LLM, with the analyst's notes unless `llm.analyst` is off."""
        parents = tuple(Scored(m.genome, m.score) for m in ask.parents)
        avoid: tuple[Scored, ...] = ()
        k, llm = self.config.llm.avoid_k, self.variation.kind != "classic"
        if self.neighbours is not None and k and llm:
            near = self.neighbours.nearest(ask.parents[0].genome, k, before=step - self.lag)
            avoid = tuple(Scored(self.archive.genome(gid), self.stage1_score(gid)) for gid, _ in near)
        notes = analysis.notes(self.archive, step, self.lag) if llm and self.config.llm.analyst else ""
        return Spec(parents, examples=examples, avoid=avoid, notes=notes)

    def evaluate(self, step: int, children: list[Child], seeds: Callable[[Child], list[int]] | None = None) -> None:
        """Stage 1 for the children with each training seed `seeds(child)` names (default: stage1.seeds)
        that it lacks; one run per distinct source (with the novelty archive on, a sibling's exact copy of a
        child that scored is rejected, as evo.screen.Screen.take_copy decides for copies of earlier genomes)."""
        want = seeds or (lambda c: self.seeds)
        todo = [c for c in children if c.genome is not None and not c.settled(want(c))]
        leaders: dict[str, Child] = {}
        for c in todo:
            leaders.setdefault(c.genome.code, c)
        by_id = {c.genome.id: c for c in leaders.values()}
        jobs = [EvalJob(c.genome.id, c.genome.code, 1, s) for c in leaders.values() for s in want(c)
                if s not in {e.seed for e in c.evaluations}]
        for ev in tqdm(self.executor.run(jobs), total=len(jobs), desc=f"step {step} stage 1", unit="run",
                       disable=not jobs):
            if self.stop.is_set():
                raise Stopped("search stopped")
            self.store(ev)
            by_id[ev.genome_id].evaluations.append(ev)
            log.info("  %s %-16s seed %d %s %s", ev.genome_id, by_id[ev.genome_id].genome.operator, ev.seed,
                     ev.status, f"score={ev.score:.4f}" if ev.ok else ev.reason[:200])
        for c in todo:
            leader = leaders[c.genome.code]
            if c is not leader:
                c.evaluations = self.screen.take_copy(c.genome, leader.evaluations)
        for c in children:
            self.settle(c)

    def settle(self, child: Child) -> None:
        """Order a child's results by seed, note why it failed, index its code if it scored."""
        child.evaluations.sort(key=lambda e: e.seed)
        failed = child.failed
        if failed is not None:
            child.error = f"{failed.status}: {failed.reason}"
        elif child.score is not None and self.neighbours is not None:
            self.neighbours.add(child.genome)

    def store(self, ev: Evaluation) -> None:
        """Store a result; once the seed baseline is known, with its score relative to it. The sandbox
        self-test's report is stored once the executor has run it."""
        report = getattr(self.executor, "containment", None)
        if report is not None and self.archive.get_meta("containment") != report:
            self.archive.set_meta("containment", report)
        baseline = (self.archive.get_meta("seed_baseline") or {}).get(f"stage{ev.stage}")
        if ev.ok and baseline is not None:
            ev.metrics["vs_seed_baseline"] = ev.score - baseline
        self.archive.add_evaluation(ev)

    def stage1_score(self, genome_id: str) -> float | None:
        """Mean stage-1 score of a stored genome (None unless every run is ok)."""
        evs = self.archive.evaluations(genome_id, stage=1)
        return statistics.fmean(e.score for e in evs) if evs and all(e.ok for e in evs) else None


def check_backend(proposals: list[Proposal]) -> list[Proposal]:
    """Stop the run (resumable) when the LLM answered no request of a batch: every one failed or was
    abandoned at the deadline (a stalled server). The answers of a batch it did answer are stored in
    the response cache; a resumed run redoes the step from them and asks again what was not answered."""
    asked = [p for p in proposals if p.request is not None]
    failed = [p for p in asked if p.completion is None or p.completion.finish_reason in ("error", "deadline")]
    if asked and len(failed) == len(asked):
        raise RuntimeError(f"the LLM backend answered none of {len(asked)} requests ({failed[0].error}); "
                           f"fix it (or raise [llm] deadline_s), then `evo resume` the run")
    return proposals


def reply_text(child: Child) -> str:
    completion = child.proposal.completion if child.proposal else None
    return completion.text if completion else ""


def repair_item(child: Child) -> RepairItem:
    """What the engineer's repair prompt shows: the child's code (when it did not parse, its raw reply; when its
    SEARCH/REPLACE edits did not apply, the code they were made against) and error; a diff child is repaired as
    edits."""
    edits = child.proposal is not None and child.proposal.edit_format == "diff"
    if child.genome is not None:
        return RepairItem(child.genome.code, child.error, (child.genome.id,), edits)
    return RepairItem(child.proposal.base if edits else reply_text(child), child.error,
                      tuple(child.proposal.parents), edits)
