"""What share of the LLM's children parse, pass the checks and beat their parent, per model and edit format.

Run: python bench/bench_llm_yield.py [--models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b] [--formats full,diff]
     [--children 40] [--batch 8] [--backend vllm|llamacpp] [--out DIR]

A fixed list of tasks (a parent from the seed genomes the quickstart's complexity limit admits, a
directive from the default list, a sampling seed), the same for every cell, so cells compare
paired. Each cell (model, edit format) asks the model for one child per task, in batches of
`--batch` (one generate call each, as a search step does), with the quickstart's sampling and no
repair. Every child that parsed is evaluated at the quickstart's stage 1 with its first training
seed, in the sandbox, as the search would; so is each parent, once. Per cell: parsed, passed the
checks and trained (stage 1 ok), trained but unlike its parent (a stage-1 score other than the
parent's, same training seed and test set: the same score is a copy in behaviour), beat its parent
(a stage-1 score above the parent's), each with a Wilson 95% interval; completion tokens and LLM
wall seconds per child (the batch's wall time over its children; for replies from the cache, the
time they took when generated). Resumable: replies are cached in DIR/archive.sqlite and each
finished child is a line of DIR/children.jsonl; a rerun skips what is there.
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
from archive.store import Archive  # noqa: E402
from evo.config import load_config  # noqa: E402
from evo.seeds import load_seeds  # noqa: E402
from fitness.executor import EvalJob, make_executor  # noqa: E402
from fitness.secret import load_or_create  # noqa: E402
from operators.backends import CachedBackend, load_backend  # noqa: E402
from operators.researcher import Researcher, Scored, Spec  # noqa: E402
from operators.settings import DEFAULT_DIRECTIVES  # noqa: E402
from records import Genome  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUADRATIC = ("softmax_attention",)  # rejected by the quickstart's complexity limit of 1.5


def tasks(n: int) -> list[tuple[str, str, int]]:
    """n (parent name, directive, sampling seed) tasks: parents round-robin, directives in turn."""
    parents = [name for name, _ in load_seeds() if name not in QUADRATIC]
    return [(parents[i % len(parents)], DEFAULT_DIRECTIVES[(i // len(parents)) % len(DEFAULT_DIRECTIVES)], 1000 + i)
            for i in range(n)]


def wilson(k: int, n: int) -> str:
    """'k/n (p%, [lo, hi])' with the Wilson 95% interval."""
    if n == 0:
        return "0/0"
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return f"{k}/{n} ({k / n:.0%}, [{lo:.0%}, {hi:.0%}])"


class Bench:
    """The bench's folder: the reply cache, the finished children, the parents' scores, the sandbox."""

    def __init__(self, out: Path, backend_kind: str) -> None:
        self.out, self.backend_kind = out, backend_kind
        out.mkdir(parents=True, exist_ok=True)
        self.config = load_config(ROOT / "configs" / "quickstart.toml")
        self.archive = Archive(out / "archive.sqlite")
        self.rows_file = out / "children.jsonl"
        self.rows = [json.loads(line) for line in self.rows_file.read_text().splitlines()] \
            if self.rows_file.exists() else []
        self.executor = make_executor(self.config.fitness, load_or_create(out / "secret.key"))
        self.seed = self.config.fitness.stage1.seeds[0]
        self.scores: dict[str, dict] = {}  # code hash -> evaluation summary, reused across cells

    def evaluate(self, codes: dict[str, str]) -> None:
        """Stage 1 (first training seed) of each code hash -> code not evaluated yet."""
        for row in self.rows:
            self.scores.setdefault(row.get("hash") or "", row.get("eval") or {})
        todo = {h: c for h, c in codes.items() if h not in self.scores}
        for ev in self.executor.run(EvalJob(h, c, 1, self.seed) for h, c in todo.items()):
            self.scores[ev.genome_id] = {"status": ev.status, "score": ev.score, "reason": ev.reason[:300]}

    def parents(self) -> dict[str, dict]:
        """Each seed genome's stage-1 result, evaluated once (DIR/parents.json)."""
        path = self.out / "parents.json"
        if path.exists():
            return json.loads(path.read_text())
        seeds = dict(load_seeds())
        codes = {code_hash(c): c for n, c in seeds.items() if n not in QUADRATIC}
        self.evaluate(codes)
        result = {n: {**self.scores[code_hash(c)], "code": c} for n, c in seeds.items() if n not in QUADRATIC}
        path.write_text(json.dumps(result, indent=1))
        return result

    def cell(self, model: str, fmt: str, work: list[tuple[str, str, int]], batch: int, parents: dict) -> None:
        """Make and evaluate the children of one cell that are not in children.jsonl yet."""
        name = f"{model}/{fmt}/{self.backend_kind}"
        done = {r["task"] for r in self.rows if r["cell"] == name}
        todo = [(i, t) for i, t in enumerate(work) if i not in done]
        if not todo:
            return
        settings = self.config.llm.on_backend(
            self.backend_kind, model=model, diff_share=1.0 if fmt == "diff" else 0.0, repair_attempts=0,
            examples_k=0, avoid_k=0, analyst=False, **({"parallel": batch} if self.backend_kind == "llamacpp" else {}))
        backend = CachedBackend(load_backend(settings), self.archive)
        try:
            for start in range(0, len(todo), batch):
                chunk = todo[start:start + batch]
                specs = [Spec((Scored(Genome(p, parents[p]["code"], code_hash(parents[p]["code"])),
                                      parents[p]["score"]),), directive=d) for _, (p, d, _) in chunk]
                rng = random.Random(f"{name}:{chunk[0][0]}")
                wall0 = backend.usage.wall_s
                proposals = Researcher(backend, settings, rng).propose(specs)
                llm_s = (backend.usage.wall_s - wall0) / len(chunk)
                replies = [p.completion for p in proposals if p.completion]
                if replies and all(c.cached for c in replies):  # a rerun: the batch's time when it was generated
                    llm_s = max(c.latency_s for c in replies) / len(chunk)
                made = {code_hash(p.code): p.code for p in proposals if p.ok}
                self.evaluate(made)
                with open(self.rows_file, "a") as f:
                    for (i, (parent, directive, _)), p in zip(chunk, proposals):
                        h = code_hash(p.code) if p.ok else None
                        ev = self.scores.get(h, {}) if h else {}
                        row = {"cell": name, "task": i, "parent": parent, "directive": directive,
                               "edit_format": p.edit_format, "parsed": p.ok, "error": p.error[:300], "hash": h,
                               "same_as_parent": h == code_hash(parents[parent]["code"]), "eval": ev,
                               "completion_tokens": p.completion.completion_tokens if p.completion else 0,
                               "cached": bool(p.completion and p.completion.cached),
                               "llm_s": llm_s, "finish_reason": p.completion.finish_reason if p.completion else ""}
                        self.rows.append(row)
                        f.write(json.dumps(row) + "\n")
                print(f"[yield] {name}: {len([r for r in self.rows if r['cell'] == name])}/{len(work)} children, "
                      f"{llm_s:.1f} LLM s per child", flush=True)
        finally:
            inner = backend.backend
            if hasattr(inner, "close"):
                inner.close()

    def table(self, parents: dict) -> str:
        """The Markdown table of every cell in children.jsonl."""
        lines = ["| model / edit format / backend | children | parsed | passed the checks and trained | "
                 "trained, unlike the parent | beat the parent | same code as parent | "
                 "completion tokens per child | LLM s per child |",
                 "|---|---:|---|---|---|---|---:|---:|---:|"]
        for name in dict.fromkeys(r["cell"] for r in self.rows):
            rows = [r for r in self.rows if r["cell"] == name]
            ok = [r for r in rows if r["eval"].get("status") == "ok" and not r["same_as_parent"]]
            # the same stage-1 score as the parent (same training seed and test set) is a copy in behaviour:
            # the search's novelty archive rejects most of them (e.g. the parent with its docstring dropped)
            unlike = [r for r in ok if r["eval"]["score"] != parents[r["parent"]]["score"]]
            beat = [r for r in ok if parents[r["parent"]]["score"] is not None
                    and r["eval"]["score"] > parents[r["parent"]]["score"]]  # a failed parent counts as not beaten
            lines.append(f"| {name} | {len(rows)} | {wilson(sum(r['parsed'] for r in rows), len(rows))} | "
                         f"{wilson(len(ok), len(rows))} | {wilson(len(unlike), len(rows))} | "
                         f"{wilson(len(beat), len(rows))} | {sum(r['same_as_parent'] for r in rows)} | "
                         f"{statistics.fmean(r['completion_tokens'] for r in rows):.0f} | "
                         f"{statistics.fmean(r['llm_s'] for r in rows):.1f} |")
        return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    ap.add_argument("--formats", default="full,diff")
    ap.add_argument("--children", type=int, default=40, help="children per cell")
    ap.add_argument("--batch", type=int, default=8, help="children per generate call")
    ap.add_argument("--backend", choices=("vllm", "llamacpp"), default="vllm")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "llm_yield"))
    args = ap.parse_args()
    t0 = time.monotonic()
    bench = Bench(Path(args.out), args.backend)
    try:
        parents = bench.parents()
        print("[yield] parents: " + ", ".join(f"{n} {p['score']}" for n, p in parents.items()), flush=True)
        work = tasks(args.children)
        for model in args.models.split(","):
            for fmt in args.formats.split(","):
                bench.cell(model, fmt, work, args.batch, parents)
    finally:
        bench.executor.close()
    table = bench.table(parents)
    (Path(args.out) / "table.md").write_text(table + "\n")
    print(table)
    print(f"[yield] wall {time.monotonic() - t0:.0f} s this sitting")


if __name__ == "__main__":
    main()
