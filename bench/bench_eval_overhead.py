"""Evaluation overhead per genome: what the harness costs beside the training it runs.

Run: python bench/bench_eval_overhead.py [--config configs/quickstart.toml] [--genomes softmax_attention,...]
     [--repeats 2] [--launch both|fork|spawn] [--ray] [--markdown]

At the config's stage-1 settings (quickstart: MQAR T=64, kv=4, d=64, 350 steps, complexity
probe on) on the CPU with one torch thread, one evaluation at a time, for each launch mode side
by side (`fork`: the launcher is forked from a fork server that imported torch and the harness
once, as the executors run it; `spawn`: a fresh interpreter per genome):

- the fixed cost of a sandboxed evaluation: a genome with one training step (a linear layer as
  its Mixer) evaluated end to end (launch, every containment layer, the harness's snapshot and
  operator list, checks, the stage's whole test set sent as inputs, predictions returned,
  checked and scored by the engine, the causality comparison, the complexity probe, teardown
  of processes, cgroup and scratch);
- per seed genome: `evaluate()` wall, the worker's training loop (reported), batch generation
  (timed here), the engine-timed test exchange and complexity probe; overhead = wall -
  optimizer steps (training loop minus batch generation, from the same evaluation, so machine
  load cancels), as a fraction of the optimizer steps;
- the same training in this process (`fitness.testset.train_and_score`) as a cross-check.

`--ray` adds one evaluation per genome through RayExecutor on a private local cluster (its
start-up is paid once per run, so it is reported apart).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tomllib

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evo.seeds import load_seeds  # noqa: E402
from fitness.evaluate import evaluate  # noqa: E402
from fitness.executor import EvalJob  # noqa: E402
from fitness.forkserver import ForkServer  # noqa: E402
from fitness.sandbox import worker_env  # noqa: E402
from fitness.settings import FitnessSettings  # noqa: E402
from fitness.tasks import data_env, make_task  # noqa: E402
from fitness.testset import train_and_score  # noqa: E402

SECRET = bytes(32)
LINEAR = ("import torch.nn as nn\nclass Mixer(nn.Module):\n    def __init__(self, d_model, n_heads):\n"
          "        super().__init__()\n        self.proj = nn.Linear(d_model, d_model)\n"
          "    def forward(self, x):\n        return self.proj(x)\n")


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


def fmt_row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.toml"))
    ap.add_argument("--genomes", default="softmax_attention,linear_attention", help="seed names, comma-separated")
    ap.add_argument("--repeats", type=int, default=2, help="sandboxed evaluations per genome")
    ap.add_argument("--fixed-repeats", type=int, default=5, help="evaluations of the one-step genome")
    ap.add_argument("--launch", default="both", choices=("both", "fork", "spawn"))
    ap.add_argument("--ray", action="store_true", help="also evaluate each genome once through RayExecutor")
    ap.add_argument("--markdown", action="store_true", help="print tables as markdown")
    args = ap.parse_args()

    settings = load_settings(args.config)
    torch.set_num_threads(settings.threads_per_worker)
    st = settings.stage1
    seeds = dict(load_seeds())
    names = [n.strip() for n in args.genomes.split(",") if n.strip()]
    print(f"# stage 1: task={st.task} T={st.seq_len} kv={st.num_kv_pairs} d={st.d_model} layers={st.n_layers} "
          f"batch={st.batch_size} steps={st.steps} eval_batches={st.eval_batches}; complexity probe "
          f"{settings.checks.complexity_probe}; torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load avg {os.getloadavg()[0]:.2f}", flush=True)
    t0 = time.perf_counter()
    server = ForkServer().start(worker_env(settings.threads_per_worker, data_env()))
    server_start_s = time.perf_counter() - t0
    print(f"fork server start-up (once per executor slot): {server_start_s:.2f} s", flush=True)
    launches = {"both": ["fork", "spawn"], "fork": ["fork"], "spawn": ["spawn"]}[args.launch]
    servers = {"fork": server, "spawn": None}

    one_step = settings.model_copy(update={"stage1": st.model_copy(update={"steps": 1})})
    fixed = {}
    for launch in launches:
        evs = []
        for _ in range(args.fixed_repeats):
            ev = evaluate("linear", LINEAR, 1, None, 0, one_step, SECRET, server=servers[launch])
            assert ev.ok, ev.reason
            evs.append(ev)
        med = lambda f: statistics.median(f(e) for e in evs)  # noqa: E731
        fixed[launch] = {"wall": med(lambda e: e.wall_s), "train": med(lambda e: e.metrics["train_wall_s"]),
                         "test": med(lambda e: e.metrics["test_wall_s"]),
                         "complexity": med(lambda e: e.metrics.get("complexity_wall_s", 0.0)),
                         "positions": evs[0].metrics["test_positions"]}
        print(f"{launch}: fixed cost (one-step genome, median of {len(evs)}): {fixed[launch]}", flush=True)

    rows = []
    for name in names:
        code = seeds[name]
        data_s = time_batches(settings, 0)
        ref = train_and_score(code, st, 0, SECRET)
        for launch in launches:
            evs = []
            for _ in range(args.repeats):
                ev = evaluate(name, code, 1, None, 0, settings, SECRET, server=servers[launch])
                assert ev.ok, ev.reason
                assert ev.score == ref["score"], (ev.score, ref["score"])  # sandboxed == in process, bit for bit
                evs.append(ev)
                print(f"{name} ({launch}): wall {ev.wall_s:.2f} s, train loop {ev.metrics['train_s']:.2f} s, "
                      f"test {ev.metrics['test_wall_s']:.2f} s, complexity {ev.metrics.get('complexity_wall_s', 0):.2f} s",
                      flush=True)
            med = lambda f: statistics.median(f(e) for e in evs)  # noqa: E731
            wall, train = med(lambda e: e.wall_s), med(lambda e: e.metrics["train_s"])
            rows.append(dict(genome=name, launch=launch, wall=wall, steps=train - data_s, data=data_s, train=train,
                             test=med(lambda e: e.metrics["test_wall_s"]),
                             complexity=med(lambda e: e.metrics.get("complexity_wall_s", 0.0)),
                             inproc_train=ref["train_s"], ray=None))
    server.close()

    if args.ray:
        from fitness.executor_ray import RayExecutor

        rs = settings.model_copy(update={"executor": "ray"})
        t0 = time.perf_counter()
        with RayExecutor(rs, SECRET) as ex:
            start_s = time.perf_counter() - t0
            for row in rows:
                if row["launch"] != launches[0]:
                    continue
                t0 = time.perf_counter()
                (ev,) = list(ex.run([EvalJob(row["genome"], seeds[row["genome"]], 1, 0)]))
                assert ev.ok, ev.reason
                row["ray"] = (time.perf_counter() - t0, ev.wall_s)
        print(f"ray local cluster start-up and self-test: {start_s:.1f} s (once per run)", flush=True)

    print(fmt_row(["launch", "fixed cost s", "train op s (1 step, checks, load)", "test exchange s",
                   "complexity probe s", "scored positions"]))
    print(fmt_row(["---"] + ["---:"] * 5))
    for launch, f in fixed.items():
        print(fmt_row([launch, f"**{f['wall']:.2f}**", f"{f['train']:.2f}", f"{f['test']:.2f}",
                       f"{f['complexity']:.2f}", f["positions"]]))
    head = ["genome", "launch", "sandboxed wall s", "optimizer steps s", "overhead s", "overhead %",
            "test exchange s", "complexity probe s", "batch generation s", "sandboxed − in-process train loop s"]
    if args.ray:
        head += ["ray task wall s (evaluate wall s)"]
    print()
    print(fmt_row(head))
    print(fmt_row(["---"] + ["---:"] * (len(head) - 1)))
    for r in rows:
        cells = [r["genome"], r["launch"], f"{r['wall']:.1f}", f"{r['steps']:.1f}", f"{r['wall'] - r['steps']:.1f}",
                 f"**{100 * (r['wall'] - r['steps']) / r['steps']:.1f}**", f"{r['test']:.2f}", f"{r['complexity']:.2f}",
                 f"{r['data']:.2f}", f"{r['train'] - r['inproc_train']:+.1f}"]
        if args.ray:
            cells.append(f"{r['ray'][0]:.1f} ({r['ray'][1]:.1f})" if r["ray"] else "")
        print(fmt_row(cells))
    print(f"\nfork server start-up {server_start_s:.2f} s once per slot")


if __name__ == "__main__":
    main()
