"""Evaluation overhead per genome: sandboxed evaluate() vs the same work in-process.

Run: python bench/bench_eval_overhead.py [--repeats 3]
The difference is the price of isolation (spawn, torch import, guard, JSON round trip).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from evo.seeds import load_seeds
from fitness.evaluate import evaluate, evaluate_in_process
from fitness.settings import FitnessSettings


def main() -> None:
    """Print median wall seconds of in-process vs sandboxed evaluation of a 1-step stage."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    settings = FitnessSettings.model_validate({"device": "cpu", "stage1": {"steps": 1, "eval_batches": 1},
                                               "checks": {"complexity_probe": False}})
    code = dict(load_seeds())["softmax_attention"]
    inproc, sandboxed = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        evaluate_in_process(code, settings.stage1, settings.checks, 0)
        inproc.append(time.perf_counter() - t0)
        ev = evaluate("bench", code, 1, None, 0, settings)
        assert ev.ok, ev.reason
        sandboxed.append(ev.wall_s)
    a, b = statistics.median(inproc), statistics.median(sandboxed)
    print(f"in-process {a:.2f} s | sandboxed {b:.2f} s | overhead {b - a:.2f} s per evaluation (median of {args.repeats})")


if __name__ == "__main__":
    main()
