"""Breeding a step with the real sandboxed fitness (tiny stage): every training seed runs, identical
children of a step train once (with the novelty archive, the copy of a scored one is rejected),
failures carry their reason, and the LLM prompt's neighbours to move away from come from earlier
steps (`llm.avoid_k` of them)."""
import pytest

from archive.normalise import code_hash
from archive.store import Archive
from evo.breed import Breeder, check_backend, repair_item
from evo.config import parse_config
from evo.neighbours import Neighbours
from evo.screen import Child
from evo.seeds import load_seeds
from evo.strategies import Ask, Member
from fitness.executor import LocalExecutor
from genomes import SECRET, TINY
from operators.backends import Completion, Request
from operators.researcher import Proposal, RepairItem
from operators.variation import Variation
from records import Genome, genome_id

SEEDS = dict(load_seeds())


def config(**llm):
    return parse_config({"fitness": {"workers": 2, "stage1": {**TINY, "seeds": [0, 1]},
                                     "checks": {"complexity_probe": False}},
                         "operators": {"kind": "classic"}, "llm": llm})


def stored(archive, name, step, slot):
    code = SEEDS[name]
    g = Genome(genome_id(code_hash(code), (), "seed", step, slot), code, code_hash(code), generation=step)
    archive.add_genome(g)
    return g


def test_every_seed_runs_and_identical_children_train_once(tmp_path):
    cfg = config()
    archive = Archive(tmp_path / "a.sqlite")
    with LocalExecutor(cfg.fitness, SECRET) as executor:
        breeder = Breeder(cfg, archive, executor, Variation("classic", None, None, cfg.llm), None, lag=0)
        a, twin = stored(archive, "short_conv", 1, 0), stored(archive, "short_conv", 1, 1)
        broken = Genome("broken", "import os\nclass Mixer: pass\n", "hb", generation=1)
        archive.add_genome(broken)
        children = [Child(a), Child(twin), Child(broken)]
        breeder.evaluate(1, children)
    sandboxed = [e for e in archive.evaluations() if "reused_from" not in e.metrics]
    assert sorted((e.genome_id, e.seed) for e in sandboxed) == sorted(
        [(a.id, 0), (a.id, 1), ("broken", 0), ("broken", 1)])
    assert [e.seed for e in children[0].evaluations] == [0, 1] and children[0].score is not None
    assert [e.metrics["reused_from"] for e in children[1].evaluations] == [a.id, a.id]
    assert children[1].score == children[0].score
    assert children[2].score is None and children[2].error.startswith("rejected: policy")


def test_with_the_novelty_archive_a_siblings_exact_copy_is_rejected_untrained(tmp_path):
    cfg = config()
    archive = Archive(tmp_path / "a.sqlite")
    with LocalExecutor(cfg.fitness, SECRET) as executor:
        breeder = Breeder(cfg, archive, executor, Variation("classic", None, None, cfg.llm),
                          Neighbours(archive, tmp_path, cfg.novelty), lag=0)
        a, twin = stored(archive, "short_conv", 1, 0), stored(archive, "short_conv", 1, 1)
        children = [Child(a), Child(twin)]
        breeder.evaluate(1, children)
    assert [e.seed for e in children[0].evaluations] == [0, 1] and children[0].score is not None
    assert [e.status for e in children[1].evaluations] == ["rejected"] and children[1].score is None
    assert children[1].error == f"rejected: an exact copy of {a.id}, which was already trained and scored; " \
                                "make a different change"
    assert sorted(e.genome_id for e in archive.evaluations() if "launch" in e.metrics) == [a.id, a.id]


def test_prompts_name_avoid_k_neighbours_from_earlier_steps(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    neighbours = Neighbours(archive, tmp_path, parse_config({}).novelty)
    earlier = [stored(archive, name, 0, i) for i, name in enumerate(sorted(SEEDS))]
    for g in earlier:
        neighbours.add(g)
    same_step = stored(archive, "delta_rule", 3, 0)
    neighbours.add(same_step)
    for k in (0, 1, 3):
        cfg = parse_config({"llm": {"avoid_k": k}})
        breeder = Breeder(cfg, archive, None, Variation("llm", None, object(), cfg.llm), neighbours, lag=0)
        parent = Member(earlier[0], 0.5)
        spec = breeder.spec(Ask((parent,)), (), step=3)
        assert len(spec.avoid) == k and all(s.genome.generation < 3 for s in spec.avoid)
        assert earlier[0].id not in {s.genome.id for s in spec.avoid}


def test_a_batch_the_llm_failed_entirely_stops_the_run():
    failed = Proposal(None, "", "llm_mutate", (), "", Request((("user", "x"),)), Completion("", finish_reason="error"),
                      "error: boom")
    classic = Proposal("code", "", "classic_add_skip", (), "", None, None)
    with pytest.raises(RuntimeError, match="answered none of 1 requests"):
        check_backend([failed, classic])
    assert check_backend([classic]) == [classic]
    stalled = Proposal(None, "", "llm_mutate", (), "", Request((("user", "y"),)),
                       Completion("partial", finish_reason="deadline"), "deadline: abandoned")
    answered = Proposal("code", "", "llm_mutate", (), "", Request((("user", "z"),)), Completion("code"))
    with pytest.raises(RuntimeError, match="answered none of 2 requests"):
        check_backend([stalled, failed])
    assert check_backend([stalled, answered]) == [stalled, answered]


def test_repair_items_show_the_code_a_diff_childs_edits_were_made_against():
    parent = SEEDS["linear_attention"]
    failed_edits = Proposal(None, "", "llm_crossover", ("a", "b"), "x", None, Completion("<<<<<<< SEARCH ..."),
                            "edit: block 1 (SEARCH starting `q = 1`) matches no lines", edit_format="diff", base=parent)
    assert repair_item(Child(None, failed_edits, error=failed_edits.error)) == RepairItem(
        parent, failed_edits.error, ("a", "b"), True)
    unparsed = Proposal(None, "", "llm_mutate", ("a",), "x", None, Completion("no code"), "parse: none",
                        edit_format="full")
    assert repair_item(Child(None, unparsed, error="parse: none")) == RepairItem("no code", "parse: none", ("a",), False)
    child = Genome("c", SEEDS["short_conv"], "h")
    for fmt in ("full", "diff"):
        made = Proposal(child.code, "", "llm_mutate", ("a",), "x", None, Completion(""), edit_format=fmt, base=parent)
        assert repair_item(Child(child, made, error="rejected: check failed")) == RepairItem(
            child.code, "rejected: check failed", ("c",), fmt == "diff")
