"""Screening: proposals become stored genomes, and the ones not worth training are set aside.

A proposal that did not parse is logged. A parsed one is stored as a genome (its id derives from
its code, parents, operator, step and slot, so a resumed step makes the same ids). An exact
duplicate (the same source, byte for byte: a reformatted copy could read its own line numbers
or docstrings and behave differently) of a genome already evaluated under this fitness
protocol reuses that result, unless the novelty archive is on and the genome scored: then the
copy is rejected before any training like a near duplicate (cosine similarity of the normalised
code's embeddings to a genome of an earlier step at or above the novelty threshold, which a
reformatted copy reaches), since a clone taking a population slot is what the archive keeps
the search away from. A step sees
only the genomes of finished steps and its own (see `Visible`), so what screening decides does
not depend on timing or on where a killed run stopped.
"""
from __future__ import annotations

import dataclasses
import statistics

from archive.normalise import NormaliseError, code_hash
from archive.store import Archive
from evo.neighbours import Neighbours
from fitness.protocol import FITNESS_PROTOCOL
from operators.prompts import CONTRACT_EXAMPLE
from operators.researcher import Proposal
from records import Evaluation, Genome, genome_id

EXAMPLE_HASH = code_hash(CONTRACT_EXAMPLE)  # the repair prompt's minimal Mixer: never a child

REUSABLE = ("ok", "rejected", "failed")  # timeout and killed say more about the machine than the code


@dataclasses.dataclass
class Child:
    """A genome (None if its proposal did not parse) on its way through screening, stage 1 and repair."""

    genome: Genome | None
    proposal: Proposal | None = None
    evaluations: list[Evaluation] = dataclasses.field(default_factory=list)  # stage 1, by seed
    error: str = ""  # why it failed, for the repair prompt

    def settled(self, seeds: list[int]) -> bool:
        """Every training seed has a result, or the engine rejected it before training."""
        return any("protocol" not in e.metrics for e in self.evaluations) or \
            {e.seed for e in self.evaluations} >= set(seeds)

    @property
    def failed(self) -> Evaluation | None:
        """The first evaluation that is not ok, by seed."""
        return next((e for e in sorted(self.evaluations, key=lambda e: e.seed) if not e.ok), None)

    @property
    def score(self) -> float | None:
        """The mean stage-1 score over the training seeds; None unless every one is ok."""
        if not self.evaluations or self.failed is not None:
            return None
        return statistics.fmean(e.score for e in self.evaluations)


@dataclasses.dataclass(frozen=True)
class Visible:
    """The genomes step `step` may see: the seed genomes (step 0 ends before any other starts),
    those of steps before `step - lag` and its own (`lag` 1 in the steady-state mode, where the
    previous step may still be running)."""

    step: int
    lag: int

    def __call__(self, genome: Genome) -> bool:
        return genome.generation == 0 or genome.generation < self.step - self.lag or genome.generation == self.step


class Screen:
    """Proposals -> children, for one run."""

    def __init__(self, archive: Archive, neighbours: Neighbours | None, seeds: list[int], lag: int):
        self.archive, self.neighbours, self.seeds, self.lag = archive, neighbours, seeds, lag

    def __call__(self, step: int, proposals: list[Proposal], islands: list[int], slot_base: int) -> list[Child]:
        """One child per proposal, in order; `islands[i]` is the island of proposal i."""
        return [self.one(step, p, island, slot) for slot, (p, island) in enumerate(zip(proposals, islands), slot_base)]

    def one(self, step: int, proposal: Proposal, island: int, slot: int) -> Child:
        if proposal.code is None:
            return self.unmade(step, proposal, slot, proposal.error)
        try:
            h = code_hash(proposal.code)
        except NormaliseError as exc:
            return self.unmade(step, proposal, slot, str(exc))
        if h == EXAMPLE_HASH:
            return self.unmade(step, proposal, slot,
                               "the reply is the repair prompt's minimal example Mixer, not a fix of the module")
        genome = Genome(genome_id(h, proposal.parents, proposal.operator, step, slot), proposal.code, h,
                        parents=proposal.parents, operator=proposal.operator, generation=step, island=island,
                        motivation=proposal.motivation)
        stored = self.archive.genome(genome.id)
        if stored is None:
            self.archive.add_genome(genome, origin=origin(proposal))
        else:
            # a step redone after an interruption: the child stored first stands, also when this slot's reply
            # differs from it only in comments, layout or motivation (the same normalised code)
            genome = stored
        child = Child(genome, proposal, self.archive.evaluations(genome.id, stage=1))
        if child.evaluations:  # screened before an interruption
            return child
        source = self.reusable(genome, Visible(step, self.lag))
        if source is not None:
            child.evaluations = self.take_copy(genome, source)
        elif self.neighbours is not None:
            near = self.neighbours.near_duplicate(genome, before=step - self.lag)
            if near is not None:
                child.evaluations = [self.reject(genome, f"near-duplicate of {near[0]} (cosine {near[1]:.4f} >= "
                                                         f"threshold {self.neighbours.settings.threshold}); "
                                                         "make a different change")]
        return child

    def take_copy(self, genome: Genome, source: list[Evaluation]) -> list[Evaluation]:
        """The stage-1 results of `genome`, an exact copy of the genome whose results are `source`: with the
        novelty archive on and every one of them ok, a rejection (it would be a second population member of
        one function); else `source`, stored as reused."""
        if self.neighbours is not None and source and all(e.ok for e in source):
            return [self.reject(genome, f"an exact copy of {source[0].genome_id}, which was already trained and "
                                        "scored; make a different change")]
        self.archive.add_evaluations(copies(source, genome.id))
        return self.archive.evaluations(genome.id, stage=1)

    def reject(self, genome: Genome, reason: str) -> Evaluation:
        """Store and return the engine's rejection of `genome` before any training."""
        ev = Evaluation(genome.id, 1, self.seeds[0], "rejected", reason=reason)
        self.archive.add_evaluation(ev)
        return ev

    def unmade(self, step: int, proposal: Proposal, slot: int, why: str) -> Child:
        """No child from this proposal: the reason logged (a `parse_failed` event) and carried for the repair."""
        self.archive.log_event("parse_failed", why, operator=proposal.operator, parents=list(proposal.parents),
                               generation=step, slot=slot, edit_format=proposal.edit_format)
        return Child(None, proposal, error=why)

    def reusable(self, genome: Genome, visible: Visible) -> list[Evaluation] | None:
        """The stage-1 results of the earliest visible genome with the same source, if it was evaluated
        under this protocol for every training seed (or failed), else None."""
        for other in self.archive.genomes(code_hash=genome.code_hash):
            if other.id == genome.id or other.code != genome.code or not visible(other):
                continue
            evs = [e for e in self.archive.evaluations(other.id, stage=1)
                   if e.metrics.get("protocol") == FITNESS_PROTOCOL and e.status in REUSABLE]
            if {e.seed for e in evs} >= set(self.seeds) or any(not e.ok for e in evs):
                return evs
        return None


def copies(evaluations: list[Evaluation], genome_id: str) -> list[Evaluation]:
    """The evaluations of an identical genome, recorded for `genome_id` (marked `reused_from`)."""
    return [dataclasses.replace(ev, genome_id=genome_id, metrics={**ev.metrics, "reused_from": ev.genome_id})
            for ev in evaluations]


def origin(proposal: Proposal) -> dict:
    """How a child was made: the directive or edit, the edit format (full, diff, classic) and the LLM reply's
    accounting."""
    c = proposal.completion
    return {"directive": proposal.directive, "edit_format": proposal.edit_format,
            "finish_reason": c.finish_reason if c else None,
            "completion_tokens": c.completion_tokens if c else 0, "cached": c.cached if c else False}
