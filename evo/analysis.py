"""The analyst in the loop: after a step's children are settled, what they say is stored; before a
step breeds, the notes its prompts may read.

`record` turns a bred step into the analyst's outcomes (per ask: what was asked, from the first
proposal; how it ended, from the last child made for it, repaired or not), continues the analysis
of the step before (read back from the archive, so a resumed run continues the same tally) with
`operators.analyst.analyse`, and stores it. `notes` is the gist a step's prompts carry: that of
the latest analysis of a step the step can see (before `step - lag`, as `evo.screen.Visible`), so
in the steady-state mode, where the previous step may still be training, the notes do not depend
on timing, and a resumed run reads the notes the first try read.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from archive.store import Archive
from evo.screen import Child
from operators.analyst import Analysis, Outcome, analyse
from operators.researcher import Proposal

if TYPE_CHECKING:  # evo.breed reads the notes
    from evo.breed import Bred


def record(bred: Bred, archive: Archive, stage1_score: Callable[[str], float | None]) -> Analysis:
    """Analyse step `bred.step` cumulatively with the stored analysis before it, and store it."""
    outcomes = [outcome(first, child, archive, stage1_score)
                for first, child in zip(bred.proposals, bred.children)]
    before = archive.step_analyses(before=bred.step, limit=1)
    analysis = analyse(bred.step, outcomes, Analysis.from_dict(before[0]["data"]) if before else None)
    archive.add_step_analysis(bred.step, analysis.gist, analysis.as_dict())
    return analysis


def notes(archive: Archive, step: int, lag: int) -> str:
    """The gist of the latest analysis step `step` can see ("" before there is one)."""
    latest = archive.step_analyses(before=step - lag, limit=1)
    return latest[0]["gist"] if latest else ""


def outcome(first: Proposal, child: Child, archive: Archive, stage1_score: Callable[[str], float | None]) -> Outcome:
    """One ask's child for the analyst: `first` is the proposal the ask began with, `child` the last
    child made for it."""
    genome = child.genome
    score = child.score if genome is not None else None
    return Outcome(
        operator=first.operator, directive=first.directive,
        edit_format=edit_format(first, archive.origin(genome.id) if genome is not None else None),
        parent_scores=tuple(stage1_score(p) for p in first.parents), score=score,
        failure="" if score is not None else child.error or "no score",
        motivation=first.motivation or (genome.motivation if genome is not None else ""),
        genome_id=genome.id if genome is not None else "", repaired=child.proposal is not first)


def edit_format(proposal: Proposal, origin: dict | None) -> str:
    """How a child was asked for ("full" module or "diff" edits for the LLM, "classic"): as the
    proposal or the child's stored origin says, else "full" for an LLM child (the format of
    proposals that do not say) and "classic" for the others."""
    said = getattr(proposal, "edit_format", "") or (origin or {}).get("edit_format") or ""
    return said or ("full" if proposal.operator.startswith("llm_") else "classic")
