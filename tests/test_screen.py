"""Screening with a real archive: what a child's results say, which earlier results a child may
reuse (exact duplicates seen from its step only; with the novelty archive, a scored genome's copy
is rejected), parse failures on record, and the edit format
stored with each child."""
import dataclasses

from archive.normalise import code_hash
from archive.store import Archive
from evo.config import parse_config
from evo.neighbours import Neighbours
from evo.screen import Child, Screen, Visible
from operators.researcher import Proposal
from records import Evaluation, Genome, genome_id

RUN = {"protocol": 2, "launch": "fork"}
CODE = "class Mixer:\n    pass\n"


def proposal(code: str | None, parents=("p",), error: str = "") -> Proposal:
    return Proposal(code, "why", "classic_add_skip", parents, "add_skip", None, None, error)


def test_a_child_scores_the_mean_of_its_seeds_and_fails_on_any():
    ok = [Evaluation("c", 1, 1, "ok", 0.4, metrics=RUN), Evaluation("c", 1, 0, "ok", 0.6, metrics=RUN)]
    child = Child(None, evaluations=list(ok))
    assert child.score == 0.5 and child.failed is None and child.settled([0, 1]) and not child.settled([0, 1, 2])
    child.evaluations.append(Evaluation("c", 1, 2, "timeout", metrics=RUN))
    assert child.score is None and child.failed.status == "timeout"
    near = Child(None, evaluations=[Evaluation("c", 1, 0, "rejected", reason="near-duplicate")])
    assert near.settled([0, 1, 2])  # rejected by the engine before any training


def test_visible_genomes_are_those_of_finished_steps_and_its_own():
    at = lambda step: Genome("g", CODE, "h", generation=step)  # noqa: E731
    assert [Visible(3, 0)(at(s)) for s in range(5)] == [True, True, True, True, False]
    assert [Visible(3, 1)(at(s)) for s in range(5)] == [True, True, False, True, False]


def test_exact_duplicates_reuse_visible_complete_results_only(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    screen = Screen(archive, None, seeds=[0, 1], lag=1)
    h = code_hash(CODE)
    for gid, step in (("old", 0), ("concurrent", 1)):
        archive.add_genome(Genome(gid, CODE, h, generation=step))
    archive.add_evaluations([Evaluation("concurrent", 1, s, "ok", 0.9, metrics=RUN) for s in (0, 1)])
    archive.add_evaluation(Evaluation("old", 1, 0, "ok", 0.7, metrics=RUN))  # seed 1 missing: not complete
    child = screen(2, [proposal(CODE)], [0], slot_base=0)[0]
    assert child.evaluations == []  # "old" is incomplete, "concurrent" (step 1) is unseen from step 2
    archive.add_evaluation(Evaluation("old", 1, 1, "ok", 0.8, metrics=RUN))
    again = screen(2, [proposal(CODE, parents=("q",))], [0], slot_base=1)[0]
    assert [(e.seed, e.score, e.metrics["reused_from"]) for e in again.evaluations] == [(0, 0.7, "old"), (1, 0.8, "old")]
    assert again.score == 0.75 and again.genome.generation == 2


def test_with_the_novelty_archive_an_exact_copy_of_a_scored_genome_is_rejected_and_a_failed_ones_reused(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    screen = Screen(archive, Neighbours(archive, tmp_path, parse_config({}).novelty), seeds=[0], lag=0)
    failing = CODE + "# fails\n"
    archive.add_genome(Genome("scored", CODE, code_hash(CODE)))
    archive.add_genome(Genome("broken", failing, code_hash(failing)))
    archive.add_evaluation(Evaluation("scored", 1, 0, "ok", 0.7, metrics=RUN))
    archive.add_evaluation(Evaluation("broken", 1, 0, "failed", reason="shape", metrics=RUN))
    copy, broken = screen(1, [proposal(CODE), proposal(failing)], [0, 0], slot_base=0)
    assert [(e.status, e.seed) for e in copy.evaluations] == [("rejected", 0)] and copy.score is None
    assert "exact copy of scored" in copy.evaluations[0].reason and "protocol" not in copy.evaluations[0].metrics
    assert [(e.status, e.reason, e.metrics["reused_from"]) for e in broken.evaluations] == [("failed", "shape", "broken")]


def test_killed_runs_and_other_protocols_are_not_reused(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    screen = Screen(archive, None, seeds=[0], lag=0)
    archive.add_genome(Genome("a", CODE, code_hash(CODE)))
    archive.add_evaluation(Evaluation("a", 1, 0, "killed", metrics=RUN))
    assert screen(1, [proposal(CODE)], [0], 0)[0].evaluations == []
    archive.add_genome(Genome("b", CODE, code_hash(CODE)))
    archive.add_evaluation(Evaluation("b", 1, 0, "ok", 0.5, metrics={**RUN, "protocol": 1}))
    assert screen(1, [proposal(CODE, parents=("x",))], [0], 0)[0].evaluations == []


def test_unparsable_proposals_are_logged_and_carry_their_error(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    children = Screen(archive, None, [0], 0)(4, [proposal(None, error="parse: no code block"),
                                                  proposal("def broken(:\n")], [1, 1], 0)
    assert [c.genome for c in children] == [None, None]
    assert children[0].error == "parse: no code block" and children[1].error
    assert len(archive.events(kind="parse_failed")) == 2 and archive.count_genomes() == 0


def test_a_reformatted_copy_is_not_an_exact_duplicate(tmp_path):
    """Same normalised code, other source: it could read its own line numbers or docstring, so it
    does not inherit the original's score (the near-duplicate check rejects it instead)."""
    archive = Archive(tmp_path / "a.sqlite")
    screen = Screen(archive, None, seeds=[0], lag=0)
    archive.add_genome(Genome("a", CODE, code_hash(CODE)))
    archive.add_evaluation(Evaluation("a", 1, 0, "ok", 0.9, metrics=RUN))
    moved = '"""A docstring the genome may read."""\n\n' + CODE
    assert code_hash(moved) == code_hash(CODE)
    assert screen(1, [proposal(moved)], [0], 0)[0].evaluations == []
    assert screen(1, [proposal(CODE)], [0], 1)[0].score == 0.9


def test_the_edit_format_is_stored_with_each_child_and_leaves_its_id_alone(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    made = [dataclasses.replace(proposal(CODE), edit_format=f) for f in ("full", "diff")]
    failed = dataclasses.replace(proposal(None, error="edit: block 1 matches no lines"), edit_format="diff")
    full, diff, none = Screen(archive, None, [0], 0)(2, made + [failed], [0, 0, 0], 0)
    assert [archive.origin(c.genome.id)["edit_format"] for c in (full, diff)] == ["full", "diff"]
    assert archive.events(kind="parse_failed")[0]["data"]["edit_format"] == "diff" and none.genome is None
    # the id derives from code, parents, operator, step and slot only: a full rewrite keeps the id it always had
    again = Screen(Archive(tmp_path / "b.sqlite"), None, [0], 0)(2, [proposal(CODE)], [0], 0)[0]
    assert again.genome.id == full.genome.id == genome_id(code_hash(CODE), ("p",), "classic_add_skip", 2, 0)


def test_a_redone_step_whose_slot_gets_a_cosmetic_variant_keeps_the_stored_child(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    screen = Screen(archive, None, seeds=[0], lag=0)
    first = screen(1, [proposal(CODE)], [0], slot_base=0)[0]
    archive.add_evaluation(Evaluation(first.genome.id, 1, 0, "ok", 0.5, metrics=RUN))
    variant = "# the same module, commented\nclass Mixer:\n    pass\n"
    assert code_hash(variant) == code_hash(CODE)  # the id of the slot is the same
    again = screen(1, [proposal(variant)], [0], slot_base=0)[0]
    assert again.genome == first.genome and again.genome.code == CODE and again.score == 0.5


def test_a_reply_that_is_the_repair_prompts_example_is_no_child(tmp_path):
    from operators.prompts import CONTRACT_EXAMPLE

    archive = Archive(tmp_path / "a.sqlite")
    screen = Screen(archive, None, seeds=[0], lag=0)
    copied = "# fixed\n" + CONTRACT_EXAMPLE
    child = screen(1, [dataclasses.replace(proposal(copied), operator="llm_repair")], [0], slot_base=0)[0]
    assert child.genome is None and "minimal example" in child.error and archive.genomes() == []
    assert [e["kind"] for e in archive.events(kind="parse_failed")] == ["parse_failed"]
