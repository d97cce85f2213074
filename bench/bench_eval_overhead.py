"""Evaluation overhead per genome: what the harness costs beside the training it runs.

Run: python bench/bench_eval_overhead.py [--config configs/quickstart.toml] [--genomes softmax_attention,...]
     [--repeats 2] [--launch both|fork|spawn] [--ray] [--markdown]

For each genome, at the config's stage-1 settings (quickstart: MQAR T=64, kv=4, d=64, 350
steps) on the CPU with one torch thread, one evaluation at a time, and for each launch mode
side by side (`fork`: the worker is forked from a fork server that imported torch and the
harness once, as the executors run it; `spawn`: a fresh interpreter per genome):
- `evaluate()` end to end (policy, sandboxed child: fork or spawn, imports, guard, checks,
  training, scoring, result transport); its wall time is the cost of one genome;
- the child's own timings (structural checks, training loop, held-out scoring);
- batch generation alone (the training loop draws one batch per step), timed here;
- the fixed cost of a sandboxed evaluation, from a genome that fails its first check at once
  (spawn + interpreter + torch/harness imports + audit hook + JSON result);
- the same work in this process (`evaluate_in_process`), as a cross-check of the child's speed.

Overhead = sandboxed wall - optimizer steps (the child's training loop minus batch generation,
both from the same evaluation, so machine load cancels), as a fraction of the optimizer steps:
spawn, imports, policy, checks, data, held-out scoring and transport. "Harness only" leaves out
the checks, data and scoring (fitness work every evaluation needs wherever it runs). The
sandboxed-minus-in-process training loop column shows what the worker's instrumentation adds
to training (plus noise: the two runs are minutes apart). `--ray` adds one
evaluation per genome through RayExecutor on a private local cluster (its start-up is paid
once per run, so it is reported apart).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import tomllib

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evo.seeds import load_seeds  # noqa: E402
from fitness.evaluate import evaluate, evaluate_in_process  # noqa: E402
from fitness.executor import EvalJob  # noqa: E402
from fitness.forkserver import ForkServer  # noqa: E402
from fitness.policy import check_policy  # noqa: E402
from fitness.settings import FitnessSettings  # noqa: E402
from fitness.sandbox import worker_env  # noqa: E402
from fitness.tasks import data_env, make_task  # noqa: E402

# passes the policy, fails the first structural check at once: the sandbox's fixed cost
EMPTY = ("import torch.nn as nn\nclass Mixer(nn.Module):\n    def __init__(self, d_model, n_heads):\n"
         "        super().__init__()\n    def forward(self, x):\n        return x[:, :1]\n")


def load_settings(path: str) -> FitnessSettings:
    """The config's stage-1 (and checks/sandbox) settings, on the CPU, one evaluation at a time."""
    with open(path, "rb") as f:
        fit = tomllib.load(f).get("fitness", {})
    keep = {k: fit[k] for k in ("stage1", "checks", "sandbox", "threads_per_worker") if k in fit}
    return FitnessSettings.model_validate({**keep, "device": "cpu", "workers": 1})


def time_batches(settings: FitnessSettings, seed: int) -> float:
    """Seconds to draw the training loop's stage1.steps batches."""
    st = settings.stage1
    task = make_task(st)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(st.steps):
        task.make_batch(gen, st.batch_size)
    return time.perf_counter() - t0


IMPORTS = ("import torch, torch.optim\nfrom fitness import checks, guard, train\n"
           "from fitness.evaluate import evaluate_in_process\nfrom fitness.tasks import mqar\n"
           "torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # imports torch._dynamo, as the worker does")


def time_child(source: str, repeats: int) -> float:
    """Median wall seconds of `python -c source` in a fresh interpreter (as the sandbox starts one)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", source], check=True, env=env)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def fmt_row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.toml"))
    ap.add_argument("--genomes", default="softmax_attention,linear_attention", help="seed names, comma-separated")
    ap.add_argument("--repeats", type=int, default=2, help="sandboxed evaluations per genome")
    ap.add_argument("--steps", type=int, default=None, help="override stage1.steps (for a quick look)")
    ap.add_argument("--launch", default="both", choices=("both", "fork", "spawn"),
                    help="fork: workers forked from a fork server (the executors' default); spawn: fresh interpreters")
    ap.add_argument("--ray", action="store_true", help="also evaluate each genome once through RayExecutor")
    ap.add_argument("--markdown", action="store_true", help="print tables as markdown")
    args = ap.parse_args()

    settings = load_settings(args.config)
    if args.steps:
        settings = settings.model_copy(update={"stage1": settings.stage1.model_copy(update={"steps": args.steps})})
    torch.set_num_threads(settings.threads_per_worker)
    st = settings.stage1
    seeds = dict(load_seeds())
    names = [n.strip() for n in args.genomes.split(",") if n.strip()]
    print(f"# stage 1: task={st.task} T={st.seq_len} kv={st.num_kv_pairs} d={st.d_model} layers={st.n_layers} "
          f"batch={st.batch_size} steps={st.steps}; checks: complexity_probe={settings.checks.complexity_probe}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}", flush=True)

    t0 = time.perf_counter()
    server = ForkServer().start(worker_env(settings.threads_per_worker, data_env()))
    server_start_s = time.perf_counter() - t0
    print(f"fork server start-up (once per executor slot): {server_start_s:.2f} s", flush=True)
    launches = {"both": ["fork", "spawn"], "fork": ["fork"], "spawn": ["spawn"]}[args.launch]
    servers = {"fork": server, "spawn": None}

    fixed = {}
    for launch in launches:
        walls = []
        for _ in range(max(2, args.repeats)):
            ev = evaluate("empty", EMPTY, 1, None, 0, settings, server=servers[launch])
            assert ev.status == "rejected" and ev.reason.startswith("check failed"), ev.reason
            walls.append(ev.wall_s)
        fixed[launch] = statistics.median(walls)
        print(f"{launch}: sandbox fixed cost (empty genome, median of {len(walls)}): {fixed[launch]:.2f} s  {walls}",
              flush=True)
    bare_s = time_child("pass", 3)
    imports_s = time_child(IMPORTS, 3)
    print(f"of which: bare interpreter start {bare_s:.2f} s, interpreter + torch/harness/dynamo imports {imports_s:.2f} s",
          flush=True)

    rows = []
    for name in names:
        code = seeds[name]
        t0 = time.perf_counter()
        for _ in range(20):
            check_policy(code)
        policy_s = (time.perf_counter() - t0) / 20
        data_s = time_batches(settings, 0)
        t0 = time.perf_counter()
        ref = evaluate_in_process(code, st, settings.checks, 0)
        inproc_wall = time.perf_counter() - t0
        assert ref["status"] == "ok", ref["reason"]
        for launch in launches:
            evs = []
            for _ in range(args.repeats):
                ev = evaluate(name, code, 1, None, 0, settings, server=servers[launch])
                assert ev.ok, ev.reason
                evs.append(ev)
                print(f"{name} ({launch}): wall {ev.wall_s:.2f} s, checks {ev.metrics['check_s']:.2f} s, train "
                      f"{ev.metrics['train_s']:.2f} s, scoring {ev.metrics['eval_s']:.2f} s", flush=True)
            med = lambda key: statistics.median(e.metrics[key] for e in evs)  # noqa: E731
            wall = statistics.median(e.wall_s for e in evs)
            check_s, train_s, eval_s = med("check_s"), med("train_s"), med("eval_s")
            steps_s = train_s - data_s
            rows.append(dict(
                genome=name, launch=launch, wall=wall, policy=policy_s, harness=wall - check_s - train_s - eval_s,
                checks=check_s, data=data_s, scoring=eval_s, steps=steps_s, train=train_s,
                overhead=wall - steps_s, inproc_wall=inproc_wall, inproc_train=ref["metrics"]["train_s"], ray=None,
            ))
    server.close()

    if args.ray:
        from fitness.executor_ray import RayExecutor

        rs = settings.model_copy(update={"executor": "ray"})
        t0 = time.perf_counter()
        with RayExecutor(rs) as ex:
            start_s = time.perf_counter() - t0
            for row in rows:
                if row["launch"] != launches[0]:
                    continue
                t0 = time.perf_counter()
                (ev,) = list(ex.run([EvalJob(row["genome"], seeds[row["genome"]], 1, 0)]))
                assert ev.ok, ev.reason
                row["ray"] = (time.perf_counter() - t0, ev.wall_s)
        print(f"ray local cluster start-up: {start_s:.1f} s (once per run)", flush=True)

    head = ["genome", "launch", "sandboxed wall s", "optimizer steps s", "overhead s", "overhead %",
            "start+imports+policy+transport s", "checks s", "batch generation s", "held-out scoring s",
            "sandboxed − in-process train loop s", "harness only %"]
    if args.ray:
        head += ["ray task wall s (evaluate wall s)"]
    sep = ["---"] + ["---:"] * (len(head) - 1)
    print(fmt_row(head))
    print(fmt_row(sep))
    for r in rows:
        cells = [r["genome"], r["launch"], f"{r['wall']:.1f}", f"{r['steps']:.1f}", f"{r['overhead']:.1f}",
                 f"{100 * r['overhead'] / r['steps']:.1f}", f"{r['harness']:.2f}", f"{r['checks']:.2f}",
                 f"{r['data']:.2f}", f"{r['scoring']:.2f}", f"{r['train'] - r['inproc_train']:+.1f}",
                 f"{100 * r['harness'] / r['steps']:.1f}"]
        if args.ray:
            cells.append(f"{r['ray'][0]:.1f} ({r['ray'][1]:.1f})" if r["ray"] else "")
        print(fmt_row(cells))
    print(f"\nsandbox fixed cost (empty genome: start, imports, audit hook, result): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in fixed.items())
          + f"; fork server start-up {server_start_s:.2f} s once per slot; policy "
          f"{statistics.median(r['policy'] for r in rows) * 1000:.1f} ms; a bare interpreter {bare_s:.2f} s, "
          f"interpreter + torch, torch._dynamo and harness imports {imports_s:.2f} s")


if __name__ == "__main__":
    main()
