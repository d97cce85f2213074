"""MQAR accuracy of the seed mixers at a config's stage settings (the fitness's calibration).

Run: python bench/bench_mqar_seeds.py [--config configs/quickstart.toml] [--stage 1]
     [--seeds softmax_attention,linear_attention] [--set fitness.stage1.seq_len=128 ...]
     [--train-seeds 0,1] [--secret FILE] [--markdown]

Each seed genome is trained in this process (no sandbox: the numbers are the task's, not the
harness's) exactly as the sandboxed worker trains it in a search, on the CPU with one torch
thread, and scored by the engine's code on the engine's held-out test set
(`fitness.testset.train_and_score`). The test set derives from a secret: by default a fixed one
(`BENCH_SECRET`), so the table is the same on every machine; `--secret FILE` uses a run's.
Printed per row: held-out accuracy and its standard error (binomial, over the scored queries),
test loss, final train loss and training wall time, then the no-recall floors (`floors`) on the
same test rows. `--set` takes the same dotted overrides as
`evo run --set`, so the grid in bench/README.md is a handful of invocations of this script.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evo.config import load_config  # noqa: E402
from evo.seeds import load_seeds  # noqa: E402
from fitness.secret import derive_seed, load_or_create  # noqa: E402
from fitness.tasks.mqar import MQAR  # noqa: E402
from fitness.testset import train_and_score  # noqa: E402

BENCH_SECRET = hashlib.sha256(b"evoarch bench secret").digest()


def run(config: str, stage: int, names: list[str], overrides: list[str], train_seeds: list[int] | None,
        secret: bytes = BENCH_SECRET) -> list[dict]:
    """Train each named seed at the stage's settings; one row per (genome, training seed)."""
    torch.set_num_threads(1)
    st = load_config(config, overrides).fitness.stage(stage)
    sources = dict(load_seeds())
    rows = []
    for name in names:
        for seed in train_seeds or st.seeds:
            m = train_and_score(sources[name], st, seed, secret)
            acc, n = m["test_accuracy"], m["test_positions"]
            rows.append({"genome": name, "seed": seed, "T": st.seq_len, "kv": st.num_kv_pairs, "d": st.d_model,
                         "steps": st.steps, "lr": st.lr, "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n),
                         "test_loss": m["test_loss"], "train_loss": m["train_loss"], "train_s": m["train_s"]})
            print(rows[-1], flush=True)
    return rows


def floors(config: str, stage: int, overrides: list[str], secret: bytes = BENCH_SECRET) -> dict[str, float]:
    """Accuracy of two rules that recall nothing, on the engine's scored test rows: copy the token k
    positions back (the best k), and answer with the value of the pair most often asked at the query's
    absolute position (learned from 200 training batches)."""
    st = load_config(config, overrides).fitness.stage(stage)
    task = MQAR.from_stage(st)
    seed = derive_seed(secret, "test", "mqar", st.seq_len, st.num_kv_pairs, st.vocab_size, st.batch_size,
                       st.eval_batches)
    test = task.test_batches(torch.Generator().manual_seed(seed), st.batch_size, st.eval_batches)
    inputs = torch.cat([b.inputs for b in test])
    targets = torch.cat([b.targets for b in test])
    rows, pos = (targets != -100).nonzero(as_tuple=True)
    answers = targets[rows, pos]
    copy = max((float((inputs[rows, pos - k] == answers).float().mean()), k) for k in range(1, st.seq_len))
    train = task.test_batches(torch.Generator().manual_seed(seed + 1), st.batch_size, 200)
    kv = st.num_kv_pairs
    counts = torch.zeros(st.seq_len, kv)
    for b in train:
        r, p = (b.targets != -100).nonzero(as_tuple=True)
        pair = (b.inputs[r, 1:2 * kv:2] == b.targets[r, p].unsqueeze(1)).float().argmax(dim=1)
        counts.index_put_((p, pair), torch.ones(len(p)), accumulate=True)
    guess = inputs[rows, 1 + 2 * counts.argmax(dim=1)[pos]]
    return {f"copy the token k back (best k = {copy[1]})": copy[0],
            "value of the pair most often asked at that position": float((guess == answers).float().mean())}


def main() -> None:
    """Parse arguments, run, print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.toml")
    ap.add_argument("--stage", type=int, default=1, choices=(1, 2))
    ap.add_argument("--seeds", default="softmax_attention,linear_attention", help="comma-separated seed genomes")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="dotted override, e.g. fitness.stage1.steps=400")
    ap.add_argument("--train-seeds", default="", help="comma-separated training seeds (default: the stage's)")
    ap.add_argument("--secret", default=None, help="a secret.key file (default: the fixed bench secret)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    seeds = [int(s) for s in args.train_seeds.split(",") if s] or None
    secret = load_or_create(args.secret) if args.secret else BENCH_SECRET
    rows = run(args.config, args.stage, [n for n in args.seeds.split(",") if n], args.overrides, seeds, secret)
    by_genome: dict[str, list[dict]] = {}
    for r in rows:
        by_genome.setdefault(r["genome"], []).append(r)
    sep = " | " if args.markdown else "  "
    print(sep.join(["genome", "T", "kv", "d", "steps", "lr", "accuracy ± SE (per seed)", "mean", "train s"]))
    for name, rs in by_genome.items():
        accs = [r["accuracy"] for r in rs]
        r0 = rs[0]
        print(sep.join([name, str(r0["T"]), str(r0["kv"]), str(r0["d"]), str(r0["steps"]), f"{r0['lr']:g}",
                        " ".join(f"{r['accuracy']:.3f}±{r['se']:.3f}" for r in rs), f"{statistics.mean(accs):.3f}",
                        f"{statistics.mean(r['train_s'] for r in rs):.0f}"]))
    for rule, acc in floors(args.config, args.stage, args.overrides, secret).items():
        print(sep.join([f"floor: {rule}", "", "", "", "", "", f"{acc:.3f}", f"{acc:.3f}", "0"]))


if __name__ == "__main__":
    main()
