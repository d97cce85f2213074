"""The engine end to end on the real fitness (sandboxed training at tiny stage settings), the real
archive and novelty index, with the classic operator: every strategy in every mode it supports;
kill -9 in the middle of a step then `evo resume` gives the same archive as an uninterrupted run;
NSGA-II keeps a front no stored genome dominates; each budget kind stops a run and the spending
is reported. The real-LLM runs are `slow` (one is `ci`)."""
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archive.store import Archive
from evo.config import (
    GENERATIONAL,
    STRATEGIES,
    apply_overrides,
    dump_config,
    parse_config,
)
from evo.run import resume_run, start_run
from evo.score import selection_score
from evo.summary import dominates

ROOT = Path(__file__).resolve().parents[1]
TINY_STAGE = {"d_model": 32, "n_heads": 2, "n_layers": 1, "seq_len": 32, "num_kv_pairs": 2, "vocab_size": 256,
              "batch_size": 8, "steps": 12, "eval_batches": 1}
STEPS = 3
# the mode each strategy's kill -9 test runs in: steady state wherever the strategy allows it
KILL_MODE = {s: "generational" if s in GENERATIONAL else "steady_state" for s in STRATEGIES}
RUNS = [(s, "generational") for s in STRATEGIES] + [(s, "steady_state") for s in STRATEGIES if s not in GENERATIONAL]
TABLES = {"map_elites": {"descriptors": [{"name": "log_params", "low": 3.0, "high": 5.0, "bins": 4},
                                         {"name": "novelty", "low": 0.0, "high": 0.02, "bins": 4}]},
          "islands": {"islands": 2, "every": 1, "strategy": "aging", "aging": {"population": 4, "sample": 2}},
          "aging": {"population": 6, "sample": 2}, "nsga2": {"population": 4}}


def tiny_config(tmp_path: Path, strategy: str, mode: str = "generational", overrides: list[str] = ()):
    """A run of STEPS steps of 3 classic children at tiny stage settings, scored with a shared secret."""
    search = {"strategy": strategy, "mode": mode, "children": 3, "budget": {"max_steps": STEPS}}
    if strategy in TABLES:
        search[strategy] = TABLES[strategy]
    raw = {"run": {"runs_dir": str(tmp_path), "secret_file": str(tmp_path.parent / "shared-secret.key")},
           "operators": {"kind": "classic"}, "novelty": {"threshold": 0.9999},
           "search": search,
           "fitness": {"workers": 2, "checks": {"complexity_probe": False}, "promotion": {"top_k": 1},
                       "stage1": dict(TINY_STAGE), "stage2": {**TINY_STAGE, "steps": 16, "seeds": [0]}}}
    return parse_config(apply_overrides(raw, list(overrides)))


_finished: dict[tuple[str, str], Path] = {}


def finished(tmp_path_factory, strategy: str, mode: str) -> Path:
    """The uninterrupted run of (strategy, mode), made once per session."""
    if (strategy, mode) not in _finished:
        run_dir = start_run(tiny_config(tmp_path_factory.mktemp("runs"), strategy, mode), f"{strategy}-{mode}")
        _finished[strategy, mode] = run_dir
    return _finished[strategy, mode]


def snapshot(run_dir: Path) -> dict:
    """What must be equal between two runs of one config: genomes, scores, checkpoints (measured times aside)."""
    archive = Archive(run_dir / "archive.sqlite", readonly=True)
    genomes = sorted((g.id, g.code_hash, g.parents, g.operator, g.generation, g.island) for g in archive.genomes())
    evaluations = sorted((e.genome_id, e.stage, e.seed, e.status, e.score, e.params, e.reason,
                          e.metrics.get("reused_from")) for e in archive.evaluations())
    checkpoints = {}
    for step in range(archive.last_checkpoint() + 1):
        state = archive.checkpoint_state(step)
        for part in ("spent", "total"):
            state[part] = {k: v for k, v in state[part].items() if k not in ("wall_s", "evaluation_s", "llm_s")}
        checkpoints[step] = (archive.population(step), json.dumps(state, sort_keys=True))
    return {"genomes": genomes, "evaluations": evaluations, "checkpoints": checkpoints}


@pytest.mark.parametrize("strategy,mode", RUNS)
def test_every_strategy_runs_end_to_end(tmp_path_factory, strategy, mode):
    run_dir = finished(tmp_path_factory, strategy, mode)
    archive = Archive(run_dir / "archive.sqlite", readonly=True)
    assert archive.last_checkpoint() == STEPS and archive.get_meta("status") == "finished"
    assert archive.get_meta("stop_reason").startswith(f"max_steps = {STEPS} reached")
    children = [g for g in archive.genomes() if g.generation > 0]
    assert {g.generation for g in children} == set(range(1, STEPS + 1))
    assert all(g.operator.startswith("classic_") and g.parents for g in children)
    evaluations = archive.evaluations()
    assert all(archive.evaluations(g.id, stage=1) for g in children), "every child evaluated or rejected"
    scored = [g for g in children if any(e.ok for e in archive.evaluations(g.id, stage=1))]
    assert scored, "some classic child passed the checks and trained"
    total = archive.checkpoint_state(STEPS)["total"]
    sandboxed = [e for e in evaluations if "launch" in e.metrics and "reused_from" not in e.metrics]
    assert total["steps"] == STEPS and total["llm_calls"] == 0 and total["prompt_tokens"] == 0
    assert total["evaluations_stage1"] + total["evaluations_stage2"] == len(sandboxed)
    # no genome holds the best place (the top of `evo top`) or goes to stage 2 on one training seed
    runs = {g.id: archive.evaluations(g.id, stage=1) for g in archive.genomes()}
    means = {gid: statistics.fmean(e.score for e in evs) for gid, evs in runs.items() if evs and all(e.ok for e in evs)}
    top = max(means.values())
    assert all(len(runs[gid]) >= 3 for gid, m in means.items() if m == top)
    for gid in {e.genome_id for e in archive.evaluations(stage=2)}:
        assert len(archive.evaluations(gid, stage=1)) >= 3
    seeds = [g for g in archive.genomes(generation=0)]
    assert all(len(archive.evaluations(g.id, stage=1)) == 3 for g in seeds)  # the baseline: a mean of three
    state = archive.checkpoint_state(STEPS)["strategy"]
    population = archive.population(STEPS)
    assert population and all(gid in archive.checkpoint_state(STEPS)["members"] for gid in population)
    if strategy == "aging":
        assert len(state["queue"]) <= TABLES["aging"]["population"]
    if strategy == "islands":
        assert len(state["islands"]) == 2 and {g.island for g in children} == {0, 1}
    if strategy == "map_elites":
        assert len(state["cells"]) == len(population) >= 1
    if strategy == "nsga2":
        assert state["pareto"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_kill_minus_nine_mid_step_then_resume_gives_the_same_archive(tmp_path_factory, tmp_path, strategy):
    mode = KILL_MODE[strategy]
    reference = finished(tmp_path_factory, strategy, mode)
    config = tiny_config(reference.parent, strategy, mode)
    config_file = tmp_path / "config.toml"
    config_file.write_text(dump_config(config))
    proc = subprocess.Popen([sys.executable, "-m", "evo.cli", "run", str(config_file), "--name", "killed"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = reference.parent / "killed" / "archive.sqlite"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:  # kill once step 2 has results but no checkpoint
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                started = c.execute("SELECT count(*) FROM evaluations e JOIN genomes g ON g.id = e.genome_id "
                                    "WHERE g.generation = 2").fetchone()[0]
                done = c.execute("SELECT count(*) FROM checkpoints WHERE generation = 2").fetchone()[0]
            if started and not done:
                break
        except sqlite3.OperationalError:  # not created yet
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed in step 2"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with Archive(db, readonly=True) as archive:
        assert archive.last_checkpoint() < 2
    resume_run(db.parent)
    assert snapshot(db.parent) == snapshot(reference)


def test_nsga2_front_is_not_dominated_by_any_stored_genome(tmp_path_factory):
    run_dir = finished(tmp_path_factory, "nsga2", "generational")
    archive = Archive(run_dir / "archive.sqlite", readonly=True)
    state = archive.checkpoint_state(STEPS)
    front = state["strategy"]["pareto"]
    assert front
    points, baseline = {}, archive.get_meta("seed_baseline")
    for genome in archive.genomes():
        runs = archive.evaluations(genome.id, stage=1)
        if runs and all(e.ok for e in runs):
            stage2 = [e.score for e in archive.evaluations(genome.id, stage=2) if e.ok]
            points[genome.id] = (selection_score([e.score for e in runs], stage2, baseline), -runs[0].params)
    for gid in front:
        member = state["members"][gid]
        assert points[gid] == (member["score"], -member["objectives"]["params"])
        assert not any(dominates(p, points[gid]) for p in points.values()), f"{gid} is dominated"
    listed = subprocess.run([sys.executable, "-m", "evo.cli", "top", str(run_dir), "--pareto"], capture_output=True,
                            text=True, check=True).stdout
    assert all(gid in listed for gid in front) and "score (max)" in listed and "params (min)" in listed


@pytest.mark.parametrize("limit,value", [("max_evaluations", 20), ("max_wall_s", 0.5), ("target_score", None)])
def test_each_budget_kind_stops_the_run_and_reports_what_it_spent(tmp_path, limit, value):
    if limit == "target_score":  # a score the seeds reach: the run stops after step 0
        value = 0.0
    config = tiny_config(tmp_path, "mu_plus_lambda", overrides=[f"search.budget.{limit}={value}",
                                                                "search.budget.max_steps=50"])
    run_dir = start_run(config, limit)
    archive = Archive(run_dir / "archive.sqlite", readonly=True)
    last = archive.last_checkpoint()
    total = archive.checkpoint_state(last)["total"]
    reason = archive.get_meta("stop_reason")
    assert reason.startswith(f"{limit} = {value:g} reached"), reason
    evaluations = total["evaluations_stage1"] + total["evaluations_stage2"]
    if limit == "max_evaluations":
        before = archive.checkpoint_state(last - 1)["total"]
        assert evaluations >= value > before["evaluations_stage1"] + before["evaluations_stage2"]
    if limit == "max_wall_s":
        assert last == 0 and total["wall_s"] >= value
    if limit == "target_score":
        assert last == 0 and archive.checkpoint_state(0)["best"] >= value
    top = subprocess.run([sys.executable, "-m", "evo.cli", "top", str(run_dir)], capture_output=True, text=True,
                         check=True).stdout
    assert f"spent after step {last}:" in top and f"{total['evaluations_stage1']} stage-1" in top
    assert f"stopped: {limit}" in top


# ---- the real LLM ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    """One in-process vLLM for the module's runs (the registry's 0.5B coder model)."""
    from evo.config import load_config
    from operators.backends import LazyBackend

    backend = LazyBackend(load_config(ROOT / "configs" / "quickstart.toml").llm)
    yield backend
    backend.close()


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("strategy", ["mu_plus_lambda", "aging", "random"])
def test_strategy_with_the_real_llm(tmp_path, model, strategy):
    config = tiny_config(tmp_path, strategy, overrides=[
        'operators.kind="llm"', "novelty.threshold=0.99", "search.children=2", "search.budget.max_steps=1",
        "llm.max_tokens=600", "llm.repair_attempts=1", "llm.examples_k=0"] + (
        ["search.budget.max_llm_tokens=1", "search.budget.max_steps=3"] if strategy == "mu_plus_lambda" else []))
    run_dir = start_run(config, strategy, llm_backend=model)
    archive = Archive(run_dir / "archive.sqlite", readonly=True)
    assert archive.last_checkpoint() == 1  # mu_plus_lambda: the tokens of step 1 end the run
    total = archive.checkpoint_state(1)["total"]
    assert total["llm_calls"] >= 2 and total["prompt_tokens"] > 0 and total["completion_tokens"] > 0
    assert archive.llm_stats()["calls"] >= 2
    llm = [g for g in archive.genomes() if g.operator.startswith("llm_")]
    for genome in llm:  # every child that parsed was evaluated or rejected with a reason
        evs = archive.evaluations(genome.id, stage=1)
        assert evs and all(e.ok or e.reason for e in evs)
    if strategy == "mu_plus_lambda":
        assert archive.get_meta("stop_reason").startswith("max_llm_tokens = 1 reached")
    if strategy == "random":
        seeds = {g.id for g in archive.genomes(generation=0)}
        assert all(set(g.parents) <= seeds for g in llm if g.operator != "llm_repair")
