"""LLM operator throughput: one batched generate of N mutation prompts on a seed mixer.

Measures model preparation (registry parts -> sha256 -> HF folder; ~0 once cached), engine
load, the batched call (wall, tokens/s, how many replies parse into a module with
`class Mixer`), optionally the same prompts one at a time, and the CPU the idle engine
burns between calls (it must not steal the cores training subprocesses need).

    .venv/bin/python bench/bench_llm_throughput.py --n 6 [--single] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEED_MIXER = '''import torch
import torch.nn.functional as F
from torch import nn


class Mixer(nn.Module):
    """Linear attention with the elu+1 feature map, in masked quadratic form."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        q, k = F.elu(q) + 1, F.elu(k) + 1
        scores = q @ k.transpose(-1, -2)  # (b, h, t, t)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~mask, 0.0)
        y = (scores @ v) / (scores.sum(-1, keepdim=True) + 1e-6)
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.out(y)
'''


def idle_cpu(seconds: float) -> dict:
    """CPU% (100 = one core) of this process and its children while nothing is asked of them."""
    import psutil

    me = psutil.Process()
    procs = [me] + me.children(recursive=True)
    t0 = {p.pid: p.cpu_times() for p in procs}
    time.sleep(seconds)
    per = {}
    for p in procs:
        try:
            t1 = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        used = (t1.user + t1.system) - (t0[p.pid].user + t0[p.pid].system)
        per[f"{p.pid}:{p.name()}"] = round(100 * used / seconds, 1)
    return {"seconds": seconds, "total_pct": round(sum(per.values()), 1), "per_process_pct": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--single", action="store_true", help="also send the first prompt alone")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from records import Genome
    from operators.vllm_backend import VLLMBackend
    from operators.model_store import ensure_model
    from operators.researcher import Researcher, Scored, Spec
    from operators.settings import LLMSettings

    settings = LLMSettings(model=args.model, **({"max_tokens": args.max_tokens} if args.max_tokens else {}))
    res: dict = {"model": args.model, "n": args.n, "max_tokens": settings.max_tokens, "cpus": os.cpu_count()}
    t = time.perf_counter()
    ensure_model(args.model)
    res["prepare_s"] = round(time.perf_counter() - t, 1)
    backend = VLLMBackend.from_settings(settings)
    res["load_s"] = round(backend.load_s, 1)

    parent = Scored(Genome(id="seed-linear", code=SEED_MIXER, code_hash="seed", motivation="elu+1 linear attention"), 0.1)
    researcher = Researcher(backend, settings.model_copy(update={"free_form_prob": 0.0}), random.Random(args.seed))
    specs = [Spec((parent,), directive=settings.directives[i % len(settings.directives)]) for i in range(args.n)]
    t = time.perf_counter()
    props = researcher.propose(specs)
    wall = time.perf_counter() - t
    comps = [p.completion for p in props]
    out_tok = sum(c.completion_tokens for c in comps)
    res["batch"] = {
        "wall_s": round(wall, 1), "prompt_tokens": sum(c.prompt_tokens for c in comps),
        "completion_tokens": out_tok, "tok_s": round(out_tok / wall, 1),
        "finish": [c.finish_reason for c in comps], "parsed_mixer": sum(p.ok for p in props),
        "errors": [p.error for p in props if not p.ok],
    }
    # vLLM's shm queue busy-polls ~1 s after the last message, then sleeps on a socket:
    # measure the first 2 s and the steady state apart.
    res["idle_cpu_first_2s"] = idle_cpu(2.0)
    res["idle_cpu_steady"] = idle_cpu(args.idle_s)
    if args.single:
        t = time.perf_counter()
        c = backend.generate([props[0].request])[0]
        w = time.perf_counter() - t
        res["single"] = {"wall_s": round(w, 1), "completion_tokens": c.completion_tokens,
                         "tok_s": round(c.completion_tokens / w, 1)}
    res["samples"] = [{"directive": p.directive, "motivation": p.motivation, "text": p.completion.text}
                      for p in props]
    backend.close()
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
