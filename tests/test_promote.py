"""Promotion over a real SQLite archive: the policies, what a step may see, and stage-2 twins."""
import pytest
from genomes import stored_genome

from archive.store import Archive
from evo.promote import promote, promoted, stage1_twin
from evo.screen import Child, Visible
from fitness.settings import FitnessSettings
from records import Evaluation


def fitness(**promotion) -> FitnessSettings:
    return FitnessSettings.model_validate({"promotion": promotion, "racing": {"min_seeds": 3, "z": 2.0}})


@pytest.fixture
def archive(tmp_path):
    """Seeds s1 (0.9) and s2 (0.3), children c1 (0.95), c2 (0.1), c3 (0.5), each over three training
    seeds spread by ±0.01 (pooled SD 0.01), and c4 (0.99) with one seed only."""
    a = Archive(tmp_path / "a.sqlite")
    for gid, mean, step in (("s1", 0.9, 0), ("s2", 0.3, 0), ("c1", 0.95, 1), ("c2", 0.1, 1), ("c3", 0.5, 1)):
        stored_genome(a, gid, "seed" if step == 0 else "llm_mutate", () if step == 0 else ("s1",), step)
        a.add_evaluations([Evaluation(gid, 1, seed, "ok", mean + d) for seed, d in ((0, -0.01), (1, 0.0), (2, 0.01))])
    stored_genome(a, "c4", "llm_mutate", ("s1",), 1)
    a.add_evaluation(Evaluation("c4", 1, 0, "ok", 0.99))
    return a


def _children(archive, ids):
    return [Child(archive.genome(g), evaluations=archive.evaluations(g, stage=1)) for g in ids]


def test_promotion_policies_consider_only_genomes_with_enough_seeds(archive):
    kids, now = _children(archive, ["c1", "c2", "c3", "c4"]), Visible(1, 0)
    top = promoted(fitness(policy="top_k", top_k=2), 1, kids, archive, now)
    assert [c.genome.id for c in top] == ["c1", "c3"]  # c4 (0.99) has one seed: not eligible
    quant = promoted(fitness(policy="quantile", quantile=0.4, top_k=5), 1, kids, archive, now)
    assert [c.genome.id for c in quant] == ["c1", "c3"]  # the 0.4 quantile of the six means 0.1 .. 0.99 is 0.5
    seeds = promoted(fitness(policy="margin", margin=0.5, top_k=1), 0, kids, archive, now)
    assert len(seeds) == 1  # the seed step always promotes top_k


def test_margin_promotes_a_gain_of_z_standard_errors(archive):
    kids, now = _children(archive, ["c1", "c3"]), Visible(1, 0)
    # c1 - s1 = 0.05; SE of the difference = 0.01 * sqrt(2/3) = 0.0082: z = 2 needs 0.016
    assert [c.genome.id for c in promoted(fitness(policy="margin", margin=0.0, top_k=5), 1, kids, archive, now)] == ["c1"]
    assert promoted(fitness(policy="margin", margin=0.04, top_k=5), 1, kids, archive, now) == []  # 0.01 < 0.016


def test_quantile_sees_only_finished_steps_and_its_own(archive):
    for gid, s1 in (("late1", 0.99), ("late2", 0.98), ("late3", 0.97)):  # a concurrent step 2, all better
        stored_genome(archive, gid, "llm_mutate", ("s1",), 2)
        archive.add_evaluation(Evaluation(gid, 1, 0, "ok", s1))
    kids, rule = _children(archive, ["c1", "c3"]), fitness(policy="quantile", quantile=0.4, top_k=5)
    assert [c.genome.id for c in promoted(rule, 1, kids, archive, Visible(1, 0))] == ["c1", "c3"]
    # the same step seen with step 0 still running (steady state): only its own genomes count
    assert [c.genome.id for c in promoted(rule, 1, kids, archive, Visible(1, 1))] == ["c1", "c3"]


def test_stage1_twin_needs_identical_predictions_with_stage2_results(archive):
    run = {"predictions_sha256": "0123456789abcdef", "reported": {"train_loss": 0.25}}
    stored_genome(archive, "orig", "llm_mutate", ("s1",), 1)
    archive.add_evaluation(Evaluation("orig", 1, 0, "ok", 0.7, params=100, metrics=run))
    archive.add_evaluation(Evaluation("orig", 2, 0, "ok", 0.6, params=200, metrics=run))
    same = stored_genome(archive, "same", "llm_mutate", ("orig",), 2)
    archive.add_evaluation(Evaluation("same", 1, 0, "ok", 0.7, params=100, metrics=dict(run)))
    now = Visible(2, 0)
    assert stage1_twin(archive, Child(same, evaluations=archive.evaluations("same", stage=1)), now) == "orig"
    # step 1 may still run beside step 2 (steady state): its genomes are not seen
    assert stage1_twin(archive, Child(same, evaluations=archive.evaluations("same", stage=1)), Visible(2, 1)) is None
    for changed in ({"predictions_sha256": "0123456789abcdee"}, {"seed": 1}):
        m = {**run, **{k: v for k, v in changed.items() if k in run}}
        ev = Evaluation("same", 1, changed.get("seed", 0), "ok", 0.7, params=100, metrics=m)
        assert stage1_twin(archive, Child(same, evaluations=[ev]), now) is None, changed
    lonely = stored_genome(archive, "lonely", "llm_mutate", ("s1",), 1)  # seen by step 2 without lag
    archive.add_evaluation(Evaluation("lonely", 1, 0, "ok", 0.7, params=100, metrics={"predictions_sha256": "ffff"}))
    probe = Evaluation("x", 1, 0, "ok", 0.7, params=100, metrics={"predictions_sha256": "ffff"})
    assert stage1_twin(archive, Child(same, evaluations=[probe]), now) is None  # "lonely" has no stage-2 results
    assert stage1_twin(archive, Child(lonely, evaluations=[Evaluation("y", 1, 0, "ok", 0.7)]), now) is None


class RecordingExecutor:
    """Stands in for the sandboxed executor: which stage-2 runs were asked for (scores made up)."""

    def __init__(self):
        self.jobs = []

    def run(self, jobs):
        self.jobs += jobs
        return [Evaluation(j.genome_id, j.stage, j.seed, "ok", 0.5) for j in jobs]


def test_a_twin_takes_its_originals_stage2_results_and_the_promotion_goes_to_another(archive):
    run = {"predictions_sha256": "0123456789abcdef"}
    stored_genome(archive, "orig", "llm_mutate", ("s1",), 1)
    archive.add_evaluations([Evaluation("orig", 1, seed, "ok", 0.97, metrics=run) for seed in (0, 1, 2)])
    archive.add_evaluations([Evaluation("orig", 2, seed, "ok", 0.8, metrics=run) for seed in (0, 1)])
    stored_genome(archive, "twin", "llm_mutate", ("orig",), 2)
    archive.add_evaluations([Evaluation("twin", 1, seed, "ok", 0.97, metrics=dict(run)) for seed in (0, 1, 2)])
    stored_genome(archive, "new", "llm_mutate", ("s1",), 2)
    archive.add_evaluations([Evaluation("new", 1, seed, "ok", 0.6, metrics={"predictions_sha256": "ab"})
                             for seed in (0, 1, 2)])
    settings = FitnessSettings.model_validate({"promotion": {"policy": "top_k", "top_k": 1},
                                               "racing": {"min_seeds": 3}, "stage2": {"seeds": [0, 1]}})
    executor = RecordingExecutor()
    promote(2, _children(archive, ["twin", "new"]), archive, executor, settings, Visible(2, 0),
            archive.add_evaluation)
    assert [(j.genome_id, j.seed) for j in executor.jobs] == [("new", 0), ("new", 1)]
    reused = archive.evaluations("twin", stage=2)
    assert [(e.seed, e.score, e.metrics["reused_from"]) for e in reused] == [(0, 0.8, "orig"), (1, 0.8, "orig")]
