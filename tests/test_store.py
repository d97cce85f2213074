"""archive.store: idempotent writes, checkpoints, LLM cache, WAL readers, and crash safety."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from archive.normalise import code_hash
from archive.store import SCHEMA_VERSION, Archive, ArchiveError
from records import Evaluation, Genome

REPO = Path(__file__).resolve().parents[1]


def make_genome(i: int, generation: int = 0, parents: tuple[str, ...] = ()) -> Genome:
    code = f"import torch\nSCALE = {i}\n"
    return Genome(id=f"g{i:05d}", code=code, code_hash=code_hash(code), parents=parents,
                  operator="seed" if not parents else "llm_mutate", generation=generation)


@pytest.fixture
def archive(tmp_path):
    with Archive(tmp_path / "run.sqlite") as a:
        yield a


def test_add_genome_is_idempotent_and_round_trips(archive):
    g = make_genome(1, parents=("g00000",))
    assert archive.add_genome(g, origin={"directive": "use softplus"}) is True
    assert archive.add_genome(g) is False
    assert archive.count_genomes() == 1
    assert archive.genome(g.id) == g
    assert archive.origin(g.id) == {"directive": "use softplus"}
    assert archive.genomes(code_hash=g.code_hash) == [g]
    assert archive.genome("missing") is None
    with pytest.raises(ArchiveError, match="different code"):
        archive.add_genome(Genome(id=g.id, code="x = 2\n", code_hash=code_hash("x = 2\n")))


def test_evaluations_unique_per_genome_stage_seed(archive):
    g = make_genome(1)
    archive.add_genome(g)
    first = Evaluation(g.id, stage=1, seed=0, status="ok", score=0.5, params=123, metrics={"acc": np.float32(0.5)})
    assert archive.add_evaluation(first) is True
    assert archive.add_evaluation(Evaluation(g.id, stage=1, seed=0, status="ok", score=0.9)) is False
    assert archive.add_evaluation(Evaluation(g.id, stage=1, seed=1, status="ok", score=0.7)) is True
    assert archive.add_evaluation(Evaluation(g.id, stage=2, seed=0, status="failed", reason="boom")) is True
    stage1 = archive.evaluations(genome_id=g.id, stage=1)
    assert [(e.seed, e.score) for e in stage1] == [(0, 0.5), (1, 0.7)]  # the first result wins
    assert stage1[0].metrics == {"acc": 0.5} and stage1[0].params == 123
    assert len(archive.evaluations()) == 3
    with pytest.raises(sqlite3.IntegrityError):  # evaluations must name a stored genome
        archive.add_evaluation(Evaluation("nope", stage=1, seed=0, status="ok", score=1.0))


def test_evaluations_stored_together_and_leaderboard(archive):
    a, b = make_genome(1), make_genome(2)
    for g in (a, b):
        archive.add_genome(g)
    v2 = {"protocol": 2}
    assert archive.add_evaluations([Evaluation(a.id, 1, 0, "ok", score=0.6, metrics=v2),
                                    Evaluation(a.id, 1, 1, "ok", score=0.8, metrics=v2)]) == 2
    archive.add_evaluation(Evaluation(b.id, 1, 0, "ok", score=0.65, metrics=v2))
    archive.add_evaluation(Evaluation(b.id, 1, 1, "timeout", metrics=v2))
    with pytest.raises(sqlite3.IntegrityError):  # one bad row: none of the batch is stored
        archive.add_evaluations([Evaluation(b.id, 2, 0, "ok", score=0.7), Evaluation("nope", 2, 0, "ok", score=1.0)])
    assert archive.evaluations(b.id, stage=2) == []
    board = archive.leaderboard(stage=1, n=5)
    assert [r.genome_id for r in board] == [a.id, b.id]
    assert board[0].mean == pytest.approx(0.7) and board[0].n_seeds == 2
    assert board[0].std == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert board[1].n_seeds == 1 and board[1].std == 0.0


def test_checkpoints(archive):
    genomes = [make_genome(i) for i in range(4)]
    for g in genomes:
        archive.add_genome(g)
    assert archive.last_checkpoint() is None
    archive.save_population(0, [g.id for g in genomes[:3]], state={"rng": [1, 2, 3]})
    archive.save_population(1, [genomes[3].id, genomes[0].id])
    archive.save_population(1, [genomes[3].id, genomes[0].id])  # same again: no-op
    assert archive.last_checkpoint() == 1
    assert archive.population(1) == [genomes[3].id, genomes[0].id]
    assert archive.checkpoint_state(0) == {"rng": [1, 2, 3]}
    assert archive.population(7) == [] and archive.checkpoint_state(7) is None
    with pytest.raises(ArchiveError, match="already checkpointed"):
        archive.save_population(1, [genomes[1].id])
    with pytest.raises(sqlite3.IntegrityError):  # unknown genome: the whole checkpoint is rolled back
        archive.save_population(2, [genomes[0].id, "unknown"])
    assert archive.last_checkpoint() == 1 and archive.population(2) == []


def test_llm_cache_round_trip_and_stats(archive):
    request = {"messages": [{"role": "user", "content": "mutate"}], "temperature": 0.7, "sample": 0}
    failed = {"text": "", "finish_reason": "deadline", "prompt_tokens": 120, "completion_tokens": 0, "latency_s": 60.0}
    completion = {"text": "class Mixer: ...", "prompt_tokens": 120, "completion_tokens": 30, "latency_s": 1.5}
    assert archive.get("k1") is None
    archive.put("k1", request, failed)
    assert archive.get("k1") == failed
    archive.put("k1", request, completion)  # a retry of a failed call: the newest answer is served
    archive.put("k2", request, {"text": "t", "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    assert archive.get("k1") == completion
    # every call counts, the failed attempt included, and its row is kept
    assert archive.llm_stats() == {"calls": 3, "prompt_tokens": 250, "completion_tokens": 35,
                                   "total_tokens": 285, "latency_s": 61.5}


def test_meta_events_step_analyses_embeddings(archive):
    archive.set_meta("config_toml", "[run]\nseed = 1\n")
    archive.set_meta("seed", 1)
    archive.set_meta("status", "running")
    archive.set_meta("status", "done")
    assert archive.get_meta("status") == "done" and archive.get_meta("seed") == 1
    assert archive.get_meta("nothing", "dflt") == "dflt"
    assert archive.get_meta("schema_version") == SCHEMA_VERSION and "created" in archive.meta()
    first = archive.log_event("generation", "gen 0 done", best=0.5)
    archive.log_event("error", "oops")
    assert [e["kind"] for e in archive.events()] == ["generation", "error"]
    assert archive.events(after_id=first)[0]["message"] == "oops"
    assert archive.events(kind="generation")[0]["data"] == {"best": 0.5}
    assert archive.add_step_analysis(1, "softplus helped", {"delta": 0.1}) is True
    assert archive.add_step_analysis(1, "again", {}) is False  # the first stored wins
    archive.add_step_analysis(3, "gates helped", {"delta": 0.2})
    assert [(a["step"], a["gist"], a["data"]) for a in archive.step_analyses()] == [
        (3, "gates helped", {"delta": 0.2}), (1, "softplus helped", {"delta": 0.1})]
    assert [a["step"] for a in archive.step_analyses(before=3)] == [1]
    assert [a["step"] for a in archive.step_analyses(limit=1)] == [3] and archive.step_analyses(before=1) == []
    g = make_genome(1)
    archive.add_genome(g)
    vec = np.arange(4, dtype=np.float32)
    assert archive.add_embeddings([g.id], vec[None]) == 1
    assert archive.add_embeddings([g.id], vec[None] + 1) == 0
    np.testing.assert_array_equal(archive.embedding(g.id), vec)
    assert archive.embedding_marker() == (1, g.id)


def test_wal_reader_sees_only_committed_state(tmp_path):
    path = tmp_path / "run.sqlite"
    writer = Archive(path)
    writer.add_genome(make_genome(0))
    reader = Archive(path, readonly=True)
    assert writer._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with writer._tx() as db:  # a write transaction held open while the reader reads
        db.execute("INSERT INTO meta VALUES ('status', '\"running\"')")
        g = make_genome(1)
        db.execute("INSERT INTO genomes VALUES (?, ?, ?, '[]', 'seed', 0, 0, '', '{}', 0)", (g.id, g.code, g.code_hash))
        assert reader.count_genomes() == 1 and reader.get_meta("status") is None
    assert reader.count_genomes() == 2 and reader.get_meta("status") == "running"
    with pytest.raises(ArchiveError, match="read-only"):
        reader.set_meta("status", "x")
    reader.close()
    writer.close()
    with Archive(path, readonly=True) as again:  # also after the writer has gone
        assert again.count_genomes() == 2


def test_an_archive_of_schema_version_1_is_read_as_is_and_upgraded_by_a_writer(tmp_path):
    path = tmp_path / "run.sqlite"
    with Archive(path) as a:
        a.add_genome(make_genome(1))
    db = sqlite3.connect(path)  # the version-1 layout: a per-genome analyses table, no step analyses
    db.executescript("DROP TABLE step_analyses; CREATE TABLE analyses (genome_id TEXT NOT NULL REFERENCES "
                     "genomes(id), stage INTEGER NOT NULL, note TEXT NOT NULL, data TEXT NOT NULL, created_at REAL "
                     "NOT NULL, PRIMARY KEY (genome_id, stage)); UPDATE meta SET value = '1' WHERE key = "
                     "'schema_version'; PRAGMA user_version = 1;")
    db.close()
    with Archive(path, readonly=True) as reader:  # `evo report` on an old run
        assert reader.count_genomes() == 1 and reader.step_analyses() == []
    with Archive(path) as writer:  # `evo resume` of an old run
        assert writer.count_genomes() == 1 and writer.get_meta("schema_version") == SCHEMA_VERSION == 2
        writer.add_step_analysis(1, "gist", {})
        tables = {r[0] for r in writer._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "analyses" not in tables and "step_analyses" in tables
    with Archive(path, readonly=True) as reader:
        assert reader._db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert [a["gist"] for a in reader.step_analyses()] == ["gist"] and reader.integrity_check() == "ok"


def test_schema_versions(tmp_path):
    path = tmp_path / "run.sqlite"
    Archive(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(ArchiveError, match="newer"):
        Archive(path)
    with pytest.raises(ArchiveError, match="no archive"):
        Archive(tmp_path / "missing.sqlite", readonly=True)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ArchiveError, match="not an evoarch archive"):
        Archive(other)


# A writer that loops like the engine: genomes and evaluations one transaction each, then
# a large population checkpoint and a batch of embeddings, so most wall time is spent inside
# transactions. Resumes from last_checkpoint() like `evo resume`.
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from archive.store import Archive
    from records import Evaluation, Genome

    POP = 1500
    archive = Archive(sys.argv[1])
    gen = (archive.last_checkpoint() or -1) + 1
    rng = np.random.default_rng(gen)
    while True:
        ids = []
        for i in range(POP):
            gid = f"{gen}-{i}"
            ids.append(gid)
            if i < 20:
                archive.add_genome(Genome(id=gid, code=f"x = {i}", code_hash=f"h{i}", generation=gen))
                archive.add_evaluation(Evaluation(gid, 1, 0, "ok", score=float(i)))
        with archive._tx() as db:  # the rest of the generation in one transaction
            db.executemany("INSERT OR IGNORE INTO genomes VALUES (?, 'x', 'h', '[]', 'seed', ?, 0, '', '{}', 0)",
                           [(gid, gen) for gid in ids[20:]])
        archive.add_embeddings(ids, rng.standard_normal((POP, 384), dtype=np.float32))
        archive.save_population(gen, ids, state={"gen": gen})
        print(gen, flush=True)
        gen += 1
""")


def test_sigkill_mid_write_leaves_a_consistent_archive(tmp_path):
    path = tmp_path / "run.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = np.random.default_rng(0)
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() != "", proc.stderr.read()  # one generation committed
        time.sleep(float(rng.uniform(0.0, 0.3)))  # then die at an arbitrary point
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

        with Archive(path) as a:
            assert a.integrity_check() == "ok"
            db = a._db
            sizes = dict(db.execute("SELECT generation, size FROM checkpoints").fetchall())
            counts = dict(db.execute("SELECT generation, count(*) FROM populations GROUP BY generation").fetchall())
            assert counts == sizes and all(n == 1500 for n in sizes.values())  # no partial population
            assert sorted(sizes) == list(range(len(sizes)))  # and no gap
            assert db.execute("SELECT count(*) FROM (SELECT genome_id, stage, seed FROM evaluations "
                              "GROUP BY 1, 2, 3 HAVING count(*) > 1)").fetchone()[0] == 0
            n_emb = db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
            assert n_emb % 1500 == 0  # embedding batches are all-or-nothing
