"""archive.novelty: nearest neighbours, near-duplicate threshold, novelty, save/load and rebuild."""
import numpy as np
import pytest
from pydantic import ValidationError

from archive.novelty import NoveltyIndex, NoveltySettings
from archive.store import Archive
from records import Genome

DIM = 16


def unit(rng, n):
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_nearest_threshold_novelty(kind):
    rng = np.random.default_rng(0)
    vecs = unit(rng, 50)
    index = NoveltyIndex(DIM, kind)
    assert index.nearest(vecs[0], 3) == [] and index.novelty(vecs[0], 3) == 1.0
    assert index.max_similarity(vecs[0]) == -1.0
    ids = [f"g{i}" for i in range(50)]
    assert index.add(ids, vecs) == 50
    assert index.add(ids[:5], vecs[:5]) == 0 and len(index) == 50  # ids are added once
    hits = index.nearest(vecs[7], 3)
    assert hits[0][0] == "g7" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert index.nearest(vecs[7], 3, exclude="g7")[0][0] != "g7"
    near = vecs[7] + 0.01 * unit(rng, 1)[0]  # scale does not matter: queries are normalised
    assert index.near_duplicate(3 * near, threshold=0.99)[0] == "g7"
    assert index.near_duplicate(unit(rng, 1)[0], threshold=0.99) is None
    assert index.max_similarity(vecs[7]) == pytest.approx(1.0, abs=1e-5)
    # novelty: mean (1 - sim) over k neighbours; an archived vector is less novel than a fresh one
    assert index.novelty(vecs[7], 5) < index.novelty(unit(rng, 1)[0], 5)
    expected = np.mean([1 - s for _, s in index.nearest(vecs[7], 5, exclude="g7")])
    assert index.novelty(vecs[7], 5, exclude="g7") == pytest.approx(expected)
    assert len(index.nearest(vecs[0], 500)) == 50
    with pytest.raises(ValueError, match="dimension"):
        index.nearest(np.ones(DIM + 1, dtype=np.float32), 1)


def _archive_with_vectors(path, vecs, start=0):
    a = Archive(path)
    ids = [f"g{i}" for i in range(start, start + len(vecs))]
    for gid in ids:
        a.add_genome(Genome(id=gid, code="x = 1", code_hash="h"))
    a.add_embeddings(ids, vecs)
    return a, ids


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_and_staleness(tmp_path, kind):
    rng = np.random.default_rng(1)
    vecs = unit(rng, 30)
    archive, ids = _archive_with_vectors(tmp_path / "run.sqlite", vecs)
    path = tmp_path / "novelty.npz"
    index = NoveltyIndex.open(archive, path, DIM, kind)  # missing file: built from SQLite and saved
    assert path.exists() and len(index) == 30 and index.is_fresh(archive)
    loaded = NoveltyIndex.load(path)
    assert loaded.kind == kind and loaded.ids == ids
    assert loaded.nearest(vecs[3], 2) == index.nearest(vecs[3], 2)

    more = unit(rng, 10)  # the archive moves on: the saved file is stale, then caught up
    new_ids = [f"g{i}" for i in range(30, 40)]
    for gid in new_ids:
        archive.add_genome(Genome(id=gid, code="x = 1", code_hash="h"))
    archive.add_embeddings(new_ids, more)
    assert not NoveltyIndex.load(path).is_fresh(archive)
    caught_up = NoveltyIndex.open(archive, path, DIM, kind)
    assert caught_up.ids == ids + new_ids and caught_up.is_fresh(archive)
    assert caught_up.nearest(more[4], 1)[0][0] == "g34"
    assert NoveltyIndex.load(path).is_fresh(archive)
    archive.close()


def test_rebuild_when_file_is_foreign_or_corrupt(tmp_path):
    rng = np.random.default_rng(2)
    archive, ids = _archive_with_vectors(tmp_path / "run.sqlite", unit(rng, 20))
    path = tmp_path / "novelty.npz"
    other = NoveltyIndex(DIM)
    other.add(["zz"], unit(rng, 1))
    other.save(path)  # an index of something else: ids are not a prefix of the archive's
    assert NoveltyIndex.open(archive, path, DIM).ids == ids
    path.write_bytes(b"torn")
    assert NoveltyIndex.open(archive, path, DIM).ids == ids
    NoveltyIndex.open(archive, path, DIM, "hnsw")  # another kind configured: rebuilt as that kind
    assert NoveltyIndex.load(path).kind == "hnsw"
    rebuilt = NoveltyIndex.rebuild(archive, DIM)
    stored_ids, stored = archive.embeddings()
    assert rebuilt.ids == stored_ids == ids
    assert rebuilt.nearest(stored[5], 1)[0][0] == "g5"
    archive.close()


def test_settings():
    s = NoveltySettings()
    assert (s.enabled, s.threshold, s.k, s.index, s.weight) == (True, 0.99, 10, "flat", 0.0)
    assert NoveltySettings(index="hnsw", k=5, weight=0.3).index == "hnsw"
    for bad in ({"threshold": 1.5}, {"k": 0}, {"index": "ivf"}, {"weight": -1}, {"thresold": 0.9}):
        with pytest.raises(ValidationError):
            NoveltySettings(**bad)
    assert "near-duplicate" in NoveltySettings.model_fields["threshold"].description
    index = NoveltyIndex.from_settings(DIM, NoveltySettings(index="hnsw", hnsw_m=8))
    assert index.kind == "hnsw"
