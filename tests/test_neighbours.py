"""A genome's neighbours with the real embedder, FAISS and SQLite: only earlier steps are seen, k and
the HNSW settings reach the index, and the index survives a restart."""
import pytest

from archive.normalise import code_hash
from archive.novelty import NoveltySettings
from archive.store import Archive
from evo.neighbours import Neighbours
from evo.seeds import load_seeds
from records import Genome

SEEDS = dict(load_seeds())


def genome(gid: str, code: str, step: int) -> Genome:
    return Genome(gid, code, code_hash(code), generation=step)


@pytest.fixture
def world(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    made = {}
    for step, (name, code) in enumerate(sorted(SEEDS.items())):
        g = genome(name, code, step)
        archive.add_genome(g)
        made[name] = g
    return archive, made, tmp_path


def test_only_genomes_of_earlier_steps_are_seen(world):
    archive, made, run_dir = world
    n = Neighbours(archive, run_dir, NoveltySettings(k=2))
    for g in made.values():
        n.add(g)
    copy = genome("copy", SEEDS["linear_attention"] + "\n# a comment\n", 9)
    archive.add_genome(copy)
    step_of_linear = made["linear_attention"].generation
    near = n.near_duplicate(copy, before=step_of_linear + 1)
    assert near is not None and near[0] == "linear_attention" and near[1] > 0.999
    assert n.near_duplicate(copy, before=step_of_linear) is None  # that step is not finished: unseen
    hits = n.nearest(copy, 3, before=99)
    assert [h[0] for h in hits][0] == "linear_attention" and len(hits) == 3
    assert all(made[h[0]].generation < 2 for h in n.nearest(copy, 3, before=2))


def test_novelty_is_the_mean_distance_to_the_k_nearest(world):
    archive, made, run_dir = world
    one, three = (Neighbours(archive, run_dir, NoveltySettings(k=k)) for k in (1, 3))
    for g in made.values():
        one.add(g)
    three._index = one.index()
    probe = made["delta_rule"]
    sims = [s for _, s in one.nearest(probe, 3, before=99)]
    assert one.novelty(probe, before=99) == pytest.approx(1 - sims[0])
    assert three.novelty(probe, before=99) == pytest.approx(sum(1 - s for s in sims) / 3)
    assert one.novelty(probe, before=0) == 1.0  # nothing earlier: maximally novel


def test_hnsw_settings_reach_the_index_and_it_survives_a_restart(world):
    archive, made, run_dir = world
    settings = NoveltySettings(index="hnsw", hnsw_m=8, hnsw_ef_search=40)
    n = Neighbours(archive, run_dir, settings)
    for g in made.values():
        n.add(g)
    index = n.index().index
    assert index.hnsw.nb_neighbors(1) == 8 and index.hnsw.efSearch == 40
    n.save()
    again = Neighbours(archive, run_dir, settings)
    assert again.index().ids == n.index().ids
    assert again.nearest(made["short_conv"], 2, before=99) == n.nearest(made["short_conv"], 2, before=99)
