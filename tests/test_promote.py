"""Promotion over a real SQLite archive: the policies, what a step may see, and stage-2 twins."""
import pytest
from genomes import stored_genome

from archive.store import Archive
from evo.promote import promoted, stage1_twin
from evo.screen import Child, Visible
from evo.summary import seed_baseline
from fitness.settings import PromotionSettings
from records import Evaluation


@pytest.fixture
def archive(tmp_path):
    a = Archive(tmp_path / "a.sqlite")
    for gid, s1 in (("s1", 0.9), ("s2", 0.3)):
        stored_genome(a, gid)
        a.add_evaluation(Evaluation(gid, 1, 0, "ok", s1))
    for gid, s1 in (("c1", 0.95), ("c2", 0.1), ("c3", 0.5)):
        stored_genome(a, gid, "llm_mutate", ("s1",), 1)
        a.add_evaluation(Evaluation(gid, 1, 0, "ok", s1))
    return a


def _children(archive, ids):
    return [Child(archive.genome(g), evaluations=archive.evaluations(g, stage=1)) for g in ids]


def test_promotion_policies(archive):
    archive.set_meta("seed_baseline", seed_baseline(archive))
    kids, now = _children(archive, ["c1", "c2", "c3"]), Visible(1, 0)
    top = promoted(PromotionSettings(policy="top_k", top_k=2), 1, kids, archive, now)
    assert [c.genome.id for c in top] == ["c1", "c3"]
    margin = promoted(PromotionSettings(policy="margin", margin=0.01, top_k=5), 1, kids, archive, now)
    assert [c.genome.id for c in margin] == ["c1"]
    quant = promoted(PromotionSettings(policy="quantile", quantile=0.5, top_k=5), 1, kids, archive, now)
    assert [c.genome.id for c in quant] == ["c1", "c3"]  # median of 0.1 .. 0.95 is 0.5
    seeds = promoted(PromotionSettings(policy="margin", margin=0.5, top_k=1), 0, kids, archive, now)
    assert len(seeds) == 1  # the seed step always promotes top_k


def test_quantile_sees_only_finished_steps_and_its_own(archive):
    for gid, s1 in (("late1", 0.99), ("late2", 0.98), ("late3", 0.97)):  # a concurrent step 2, all better
        stored_genome(archive, gid, "llm_mutate", ("s1",), 2)
        archive.add_evaluation(Evaluation(gid, 1, 0, "ok", s1))
    kids, rule = _children(archive, ["c1", "c3"]), PromotionSettings(policy="quantile", quantile=0.5, top_k=5)
    assert [c.genome.id for c in promoted(rule, 1, kids, archive, Visible(1, 0))] == ["c1", "c3"]
    # the same step seen with step 0 still running (steady state): only its own genomes count
    assert [c.genome.id for c in promoted(rule, 1, kids, archive, Visible(1, 1))] == ["c1", "c3"]


def test_stage1_twin_needs_identical_predictions_with_stage2_results(archive):
    run = {"predictions_sha256": "0123456789abcdef", "reported": {"train_loss": 0.25}}
    stored_genome(archive, "orig")
    archive.add_evaluation(Evaluation("orig", 1, 0, "ok", 0.7, params=100, metrics=run))
    archive.add_evaluation(Evaluation("orig", 2, 0, "ok", 0.6, params=200, metrics=run))
    same = stored_genome(archive, "same", "llm_mutate", ("orig",), 1)
    archive.add_evaluation(Evaluation("same", 1, 0, "ok", 0.7, params=100, metrics=dict(run)))
    now = Visible(1, 0)
    assert stage1_twin(archive, Child(same, evaluations=archive.evaluations("same", stage=1)), now) == "orig"
    assert stage1_twin(archive, Child(same, evaluations=archive.evaluations("same", stage=1)), Visible(1, 1)) is None
    for changed in ({"predictions_sha256": "0123456789abcdee"}, {"seed": 1}):
        m = {**run, **{k: v for k, v in changed.items() if k in run}}
        ev = Evaluation("same", 1, changed.get("seed", 0), "ok", 0.7, params=100, metrics=m)
        assert stage1_twin(archive, Child(same, evaluations=[ev]), now) is None, changed
    lonely = stored_genome(archive, "lonely", "llm_mutate", ("s1",), 1)
    archive.add_evaluation(Evaluation("lonely", 1, 0, "ok", 0.7, params=100, metrics={"predictions_sha256": "ffff"}))
    probe = Evaluation("x", 1, 0, "ok", 0.7, params=100, metrics={"predictions_sha256": "ffff"})
    assert stage1_twin(archive, Child(same, evaluations=[probe]), now) is None  # "lonely" has no stage-2 results
    assert stage1_twin(archive, Child(lonely, evaluations=[Evaluation("y", 1, 0, "ok", 0.7)]), now) is None
