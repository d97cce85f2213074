"""`evo bench` end to end on the real fitness at tiny settings (classic operator): the matrix with its
baselines, evaluations shared across the runs of a paired seed and still charged, the report folder
(HTML opened in headless Chromium, Markdown, event log, IOH export), kill -9 then --resume giving the
same tables, a changed matrix refused; and the report's sections on synthetic runs."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evo.bench.config import load_bench
from evo.bench.events import RunEvents
from evo.bench.report import build
from evo.bench.runner import run_bench
from evo.browser_check import check_page
from evo.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = """
[run]
seed = 0
[search]
strategy = "mu_plus_lambda"
children = 3
[search.budget]
max_steps = 3
[search.mu_plus_lambda]
population = 4
elitism = 1
[operators]
kind = "classic"
[novelty]
enabled = false
[fitness]
workers = 2
[fitness.checks]
complexity_probe = false
[fitness.racing]
baseline_seeds = 1
min_seeds = 1
[fitness.promotion]
top_k = 0
[fitness.stage1]
d_model = 16
n_layers = 1
seq_len = 32
num_kv_pairs = 2
vocab_size = 64
batch_size = 16
steps = 60
eval_batches = 1
"""
BENCH = """
[bench]
base = "base.toml"
seeds = 2
budget = {budget}
baselines = ["random", "aging", "classic"]
[strategies.mu_plus_lambda.search]
strategy = "mu_plus_lambda"
"""


def write_bench(folder: Path, budget: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.toml").write_text(BASE)
    (folder / "bench.toml").write_text(BENCH.format(budget=budget))
    return folder / "bench.toml"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    """The uninterrupted tiny bench, run once for the module."""
    folder = tmp_path_factory.mktemp("bench")
    run_bench(load_bench(write_bench(folder), str(folder / "out")))
    return folder / "out"


def test_matrix_has_baselines_and_paired_seeds(tmp_path):
    bench = load_bench(write_bench(tmp_path))
    assert list(bench.strategies) == ["mu_plus_lambda", "random", "aging"]
    assert any("classic" in n and "mu_plus_lambda" in n for n in bench.notes)  # classic = the GA itself here
    cells = bench.cells()
    assert len(cells) == 6
    for k in (0, 1):
        same_seed = [c.config.run for c in cells if c.seed == k]
        assert {r.seed for r in same_seed} == {k} and len({r.secret_file for r in same_seed}) == 1
        assert all(c.config.search.budget.max_evaluations == 12 for c in cells)


def test_bad_bench_files_are_named(tmp_path):
    path = write_bench(tmp_path)
    path.write_text(path.read_text().replace("seeds = 2", "seeds = 2\nsede = 1"))
    with pytest.raises(ConfigError, match="sede"):
        load_bench(path)
    path.write_text(BENCH.format(budget=12) + '\n[sweep]\nstrategy = "nope"\nkey = "a.b"\nvalues = [1, 2]\n')
    with pytest.raises(ConfigError, match="sweep.strategy = 'nope'"):
        load_bench(path)
    path.write_text(BENCH.format(budget=12) + "budget = { max_steps = 9 }\n")
    with pytest.raises(ConfigError, match="sets search.budget"):
        load_bench(path)
    path.write_text(BENCH.format(budget=12).replace('strategy = "mu_plus_lambda"', 'strategy = "hill"'))
    with pytest.raises(ConfigError, match="search.strategy"):
        load_bench(path)


def test_sweep_makes_one_strategy_per_value(tmp_path):
    path = write_bench(tmp_path)
    path.write_text(BENCH.format(budget=12) + '\n[sweep]\nstrategy = "mu_plus_lambda"\n'
                    'key = "search.mu_plus_lambda.selection.args.tournsize"\nvalues = [2, 3]\n')
    bench = load_bench(path)
    swept = [s for s in bench.strategies if s.startswith("mu_plus_lambda.")]
    assert swept == ["mu_plus_lambda.tournsize=2", "mu_plus_lambda.tournsize=3"]
    sizes = {c.strategy: c.config.search.mu_plus_lambda.selection.args["tournsize"] for c in bench.cells()
             if c.strategy in swept}
    assert sizes == {"mu_plus_lambda.tournsize=2": 2, "mu_plus_lambda.tournsize=3": 3}


def test_bench_runs_share_evaluations_and_charge_them(bench_dir):
    rows = [json.loads(line) for line in (bench_dir / "report" / "events.jsonl").read_text().splitlines()]
    runs = {r["run"] for r in rows}
    assert len(runs) == 6
    for run in runs:
        mine = [r for r in rows if r["run"] == run]
        assert [r["evaluation"] for r in mine] == list(range(1, len(mine) + 1))
        assert len(mine) >= 12  # every run spent its budget (charged, reused or not)
    # the seed genomes of a paired seed train once for the whole bench: later strategies reuse them
    reused = [r for r in rows if r["bench_reused"]]
    assert reused and all(r["step"] == 0 or r["operator"] != "seed" for r in reused)
    with sqlite3.connect(bench_dir / "evaluations.sqlite") as db:
        stored = db.execute("SELECT count(*) FROM results").fetchone()[0]
    assert stored < len(rows)


def test_report_folder_opens_in_chromium(bench_dir, tmp_path):
    report = bench_dir / "report"
    md = (report / "report.md").read_text()
    for heading in ("Final score at the budget", "Pairwise comparisons", "Fixed-target runtimes",
                    "NAS best-practice checklist", "Evaluator noise", "Provenance"):
        assert f"## {heading}" in md
    assert "MISSING" in md  # two seeds: the checklist flags it
    ioh = list((report / "ioh").glob("*/IOHprofiler_*.json"))
    assert {p.parent.name for p in ioh} == {"mu_plus_lambda", "random", "aging"}
    meta = json.loads(ioh[0].read_text())
    assert meta["maximization"] and len(meta["scenarios"][0]["runs"]) == 2
    shot = tmp_path / "bench.png"
    result = check_page(report / "index.html", shot, min_plots=4)
    assert result.ok, result
    assert shot.stat().st_size > 10_000


def test_run_report_opens_in_chromium(bench_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "evo.cli", "report", str(bench_dir / "runs" / "mu_plus_lambda-s0")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    page = bench_dir / "runs" / "mu_plus_lambda-s0" / "report.html"
    text = page.read_text()
    assert "diff parent → child" in text and "Provenance" in text
    result = check_page(page, tmp_path / "run.png", min_plots=4)
    assert result.ok, result


def final_tables(folder: Path) -> str:
    """The report's tables that must not depend on timing: final scores, targets, pairwise, runs' finals."""
    md = (folder / "report" / "report.md").read_text()
    keep = [s for s in md.split("\n## ") if s.split("\n", 1)[0] in
            ("Final score at the budget", "Fixed-target runtimes", "Pairwise comparisons")]
    runs = md.split("\n## Runs")[1].split("\n## ")[0]
    finals = [re.split(r"\s*\|\s*", line)[1:5] for line in runs.splitlines() if line.startswith("| ")]
    return "\n".join(keep) + json.dumps(finals)


def test_kill_9_then_resume_gives_the_same_tables(bench_dir, tmp_path):
    path = write_bench(tmp_path)
    out = tmp_path / "out"
    (out / "secrets").mkdir(parents=True)  # the same test sets and training draws as the uninterrupted bench
    for key in (bench_dir / "secrets").iterdir():
        (out / "secrets" / key.name).write_bytes(key.read_bytes())
    proc = subprocess.Popen([sys.executable, "-m", "evo.cli", "bench", str(path), "--out", str(out)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    db = out / "runs" / "random-s0" / "archive.sqlite"  # the second run of seed 0: kill it mid-search
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                if c.execute("SELECT count(*) FROM checkpoints").fetchone()[0] >= 2:
                    break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the bench ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run([sys.executable, "-m", "evo.cli", "bench", str(path), "--out", str(out)],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert again.returncode == 2 and "--resume" in again.stderr
    done = subprocess.run([sys.executable, "-m", "evo.cli", "bench", str(path), "--out", str(out), "--resume"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert final_tables(out) == final_tables(bench_dir)
    # a changed matrix is refused unless allowed
    path.write_text(BENCH.format(budget=14))
    changed = subprocess.run([sys.executable, "-m", "evo.cli", "bench", str(path), "--out", str(out), "--resume"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert changed.returncode == 2 and "matrix changed" in changed.stderr


def test_parallel_runs_give_the_same_tables(bench_dir, tmp_path):
    path = write_bench(tmp_path)
    text = path.read_text().replace("seeds = 2", "seeds = 2\nparallel_runs = 2")
    path.write_text(text.replace("[strategies.", "[bench.patch.fitness]\nworkers = 1\n[strategies.", 1))
    out = tmp_path / "out"
    (out / "secrets").mkdir(parents=True)  # the same test sets and training draws as the sequential bench
    for key in (bench_dir / "secrets").iterdir():
        (out / "secrets" / key.name).write_bytes(key.read_bytes())
    run_bench(load_bench(path, str(out)))
    assert final_tables(out) == final_tables(bench_dir)


def synthetic_run(strategy: str, seed: int, level: float, budget: int = 10) -> RunEvents:
    """A run whose best-so-far climbs to `level` (a stand-in for the report's logic, not for a search)."""
    level += 0.01 * seed
    rows = [{"run": f"{strategy}-s{seed}", "strategy": strategy, "seed": seed, "evaluation": i, "step": i // 5,
             "genome": f"g{i}", "stage": 1, "training_seed": 0, "status": "ok", "score": level * i / budget,
             "genome_mean": level * i / budget, "best_so_far": level * i / budget, "operator": "classic_x",
             "parents": [], "novelty": None, "bench_reused": False, "evaluation_s": float(i),
             "tokens_at_step_end": 0, "wall_s_at_step_end": float(i), "llm_calls_at_step_end": 0}
            for i in range(1, budget + 1)]
    steps = [{"step": s, "evaluations": 5 * (s + 1), "tokens": 0, "wall_s": 5.0 * (s + 1), "llm_calls": 0,
              "best_so_far": level * 5 * (s + 1) / budget} for s in range(budget // 5)]
    return RunEvents(f"{strategy}-s{seed}", strategy, seed, rows, steps, 0.2, None, None, None, "finished",
                     {"delta_rule": 0.2})


def test_report_sections_include_the_sweep(tmp_path):
    labels = ["mu.tournsize=2", "mu.tournsize=3", "random"]
    runs = [synthetic_run(s, k, level) for s, level in zip(labels, (0.9, 0.6, 0.4)) for k in range(5)]
    info = {"budget": 10, "currency": "evaluations", "strategies": labels, "seeds": list(range(5)),
            "runs": [{"name": r.run, "strategy": r.strategy, "seed": r.seed} for r in runs], "notes": [],
            "configs": {}, "models": [], "source": "x.toml",
            "sweep": {"strategy": "mu", "key": "search.mu_plus_lambda.selection.args.tournsize", "values": ["2", "3"]}}
    sections = {h: md for h, _, md in build(info, runs)}
    assert "Sweep of search.mu_plus_lambda.selection.args.tournsize" in sections
    sweep = sections["Sweep of search.mu_plus_lambda.selection.args.tournsize"]
    assert "| 2 | 0.920 |" in sweep and "| 3 | 0.620 |" in sweep
    pairs = sections["Pairwise comparisons"]
    assert "| mu.tournsize=2 | random | 5 | 0.500 | 0.500 | 0.500 |" in pairs  # same gap on every seed
    assert "no difference detected" in pairs  # ... so no spread to test: no verdict
