"""LLM seconds per child for the ways of decoding a step's mutations: backend, speculation, batch, edit format.

Run: python bench/bench_llm_decoding.py [--model qwen2.5-coder-0.5b] [--batches 2,4] [--rounds 2]
     [--variants vllm,llamacpp,llamacpp+ngram] [--formats full,diff] [--json out.json]

Each round asks every variant, in turn (interleaved, so load on the machine hits all alike), for
one batch of mutation prompts of the seed genomes with the quickstart's sampling, the same
prompts and sampling seeds for every variant (no response cache). Reported per (variant, edit
format, batch): LLM wall seconds per child (the batch's wall time over its children), completion
tokens per child, and how many replies gave a module. Model loading is timed apart.
`llamacpp+ngram` is llama.cpp with n-gram (prompt-lookup) speculative decoding: drafts copied
from the prompt, which a full rewrite of the parent mostly is.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from archive.normalise import code_hash  # noqa: E402
from evo.config import load_config  # noqa: E402
from evo.seeds import load_seeds  # noqa: E402
from operators.backends import load_backend  # noqa: E402
from operators.researcher import Researcher, Scored, Spec  # noqa: E402
from operators.settings import DEFAULT_DIRECTIVES, LLMSettings  # noqa: E402
from records import Genome  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def settings_for(variant: str, model: str, fmt: str, batch: int) -> LLMSettings:
    """The quickstart's [llm] with the variant's backend and the edit format."""
    base = load_config(ROOT / "configs" / "quickstart.toml").llm
    backend, _, spec = variant.partition("+")
    extra = {"parallel": batch, **({"speculative": spec} if spec else {})} if backend == "llamacpp" else {}
    return base.on_backend(backend, model=model, diff_share=1.0 if fmt == "diff" else 0.0, examples_k=0, avoid_k=0,
                           **extra)


def specs(batch: int, round_: int) -> list[Spec]:
    """`batch` mutation specs: seed genomes (softmax attention excluded) with directives, by round."""
    seeds = [(n, c) for n, c in load_seeds() if n != "softmax_attention"]
    out = []
    for i in range(batch):
        name, code = seeds[(round_ * batch + i) % len(seeds)]
        out.append(Spec((Scored(Genome(name, code, code_hash(code)), 0.5),),
                        directive=DEFAULT_DIRECTIVES[(round_ * batch + i) % len(DEFAULT_DIRECTIVES)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--variants", default="vllm,llamacpp,llamacpp+ngram")
    ap.add_argument("--formats", default="full,diff")
    ap.add_argument("--batches", default="2,4")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    variants, formats = args.variants.split(","), args.formats.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    results: dict[tuple, list[dict]] = {}
    loads: dict[str, float] = {}
    for variant in variants:  # one backend per variant, loaded once (llamacpp: as many slots as the largest batch)
        t0 = time.perf_counter()
        backend = load_backend(settings_for(variant, args.model, "full", max(batches)))
        loads[variant] = time.perf_counter() - t0
        try:
            for r in range(args.rounds):
                for fmt in formats:
                    for batch in batches:
                        s = settings_for(variant, args.model, fmt, max(batches))
                        t = time.perf_counter()
                        props = Researcher(backend, s, random.Random(f"{r}:{batch}:{fmt}")).propose(specs(batch, r))
                        wall = time.perf_counter() - t
                        results.setdefault((variant, fmt, batch), []).append({
                            "s_per_child": wall / batch, "made": sum(p.ok for p in props),
                            "tokens": statistics.fmean(p.completion.completion_tokens for p in props)})
                        print(f"[decoding] {variant} {fmt} batch {batch} round {r}: {wall / batch:.1f} s per child",
                              flush=True)
        finally:
            if hasattr(backend, "close"):
                backend.close()
    lines = ["| backend | edit format | batch | LLM s per child | completion tokens per child | modules made |",
             "|---|---|---:|---:|---:|---:|"]
    for (variant, fmt, batch), rows in results.items():
        lines.append(f"| {variant} | {fmt} | {batch} | {statistics.fmean(r['s_per_child'] for r in rows):.1f} | "
                     f"{statistics.fmean(r['tokens'] for r in rows):.0f} | "
                     f"{sum(r['made'] for r in rows)}/{batch * len(rows)} |")
    print("\n".join(lines))
    print("model load s: " + ", ".join(f"{v} {s:.0f}" for v, s in loads.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"loads": loads, "results": {"|".join(map(str, k)): v
                                                                          for k, v in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
