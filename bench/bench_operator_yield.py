"""How many children of an operator pass the checks: the classic AST edits against the LLM.

Run: python bench/bench_operator_yield.py --operator classic|llm [--children 40] [--per-step 4]
     [--steps 50] [--out DIR]

A random-strategy search (every child a variation of a uniformly drawn seed genome, so parents
are the same population for both operators) with no repairs, at the quickstart's stage-1
settings but `--steps` optimizer steps (the checks do not depend on training length). For the
children of the operator (not the seeds): made (a module came out: the LLM's reply parsed, the
classic edit applied), rejected as near duplicates, passed every check and trained (stage 1 ok),
and the reasons of the rest; LLM tokens and wall seconds per child.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from archive.store import Archive  # noqa: E402
from evo.config import load_config, parse_config  # noqa: E402
from evo.run import start_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--operator", choices=("classic", "llm"), required=True)
    ap.add_argument("--children", type=int, default=40, help="children to make")
    ap.add_argument("--per-step", type=int, default=4, help="children per step (one LLM batch)")
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps of stage 1")
    ap.add_argument("--threshold", type=float, default=None,
                    help="novelty threshold (default: 0.99 for the LLM, 0.9999 for classic edits)")
    ap.add_argument("--out", default=None, help="folder for the run (default: a temporary one)")
    args = ap.parse_args()

    quick = load_config(ROOT / "configs" / "quickstart.toml")
    threshold = args.threshold or (0.99 if args.operator == "llm" else 0.9999)
    raw = {"run": {"runs_dir": args.out or tempfile.mkdtemp(prefix="yield-")},
           "search": {"strategy": "random", "children": args.per_step,
                      "budget": {"max_steps": -(-args.children // args.per_step)}},
           "operators": {"kind": args.operator}, "novelty": {"threshold": threshold},
           "llm": {**quick.llm.model_dump(), "repair_attempts": 0},
           "fitness": {"workers": 2, "checks": {"complexity_probe": False}, "promotion": {"top_k": 0},
                       "stage1": {**quick.fitness.stage1.model_dump(), "steps": args.steps}}}
    t0 = time.monotonic()
    run_dir = start_run(parse_config(raw), f"yield-{args.operator}")
    wall = time.monotonic() - t0
    archive = Archive(run_dir / "archive.sqlite", readonly=True)
    children = [g for g in archive.genomes() if g.generation > 0]
    unmade = len({(e["data"].get("generation"), e["data"].get("slot")) for e in archive.events(kind="parse_failed")})
    outcome = collections.Counter()
    reasons = collections.Counter()
    for g in children:
        evs = archive.evaluations(g.id, stage=1)
        if all(e.ok for e in evs):
            outcome["passed"] += 1
        elif "near-duplicate" in evs[0].reason:
            outcome["near_duplicate"] += 1
        else:
            outcome["failed"] += 1
            bad = next(e for e in evs if not e.ok)
            reasons[f"{bad.status}: {bad.reason.split(':')[0][:60]}"] += 1
    proposed = len(children) + unmade
    distinct = {g.code: all(e.ok for e in archive.evaluations(g.id, stage=1)) for g in children}
    total = archive.checkpoint_state(archive.last_checkpoint())["total"]
    print("| operator | children | made | near duplicates | passed | passed / trained | distinct sources | "
          "distinct passed | tokens per child | wall s per child |")
    print(f"| {args.operator} | {proposed} | {len(children)} | {outcome['near_duplicate']} | "
          f"{outcome['passed']} ({outcome['passed'] / max(proposed, 1):.0%}) | "
          f"{outcome['passed'] / max(len(children) - outcome['near_duplicate'], 1):.0%} | {len(distinct)} | "
          f"{sum(distinct.values())} | "
          f"{(total['prompt_tokens'] + total['completion_tokens']) / max(proposed, 1):.0f} | {wall / max(proposed, 1):.1f} |")
    print("failures:", dict(reasons.most_common()))
    print("operators:", dict(collections.Counter(g.operator for g in children)))
    print("run:", run_dir)


if __name__ == "__main__":
    main()
