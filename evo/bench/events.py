"""One row per charged evaluation of every run of a bench, read from the runs' archives.

A charged evaluation is one the run's budget counts: it ran in the sandbox for that run, or it was
answered from the bench's shared store (evo.bench.shared). Each row carries the run's cumulative
costs, the evaluated genome's stage-1 mean so far and the run's best-so-far: the best stage-1 mean
over genomes whose every stage-1 training so far is ok and that have the seeds the engine asks of
a genome before it may take the best place (racing.min_seeds; a seed genome: its baseline seeds),
so one lucky training draw does not count. Also its operator, parents and novelty.
Step-level costs (LLM tokens, wall seconds) are those at the end of the row's step. Rows are in a
fixed order (`charged`), so a bench replayed after kill -9 gives the same rows.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path

from archive.store import Archive
from evo.budget import trainings
from evo.config import parse_config
from evo.summary import ARCHIVE_FILE, stage_scores

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclasses.dataclass
class RunEvents:
    """A run's charged evaluations in order, its steps' cumulative costs and its seed baseline."""

    run: str
    strategy: str
    seed: int
    rows: list[dict]
    steps: list[dict]  # per checkpoint: step, evaluations, tokens, wall_s, llm_calls, best_so_far
    seed_best: float | None
    stage2_best: float | None  # the best stage-2 mean in the archive
    picked: str | None  # the genome the strategy ranks first at its last checkpoint
    picked_stage2: float | None  # its stage-2 mean (None without a complete stage 2)
    status: str
    seed_genomes: dict = dataclasses.field(default_factory=dict)  # seed genome name -> stage-1 mean (None: failed)

    def best_at(self, evaluations: float) -> float | None:
        """The best-so-far after the first `evaluations` charged evaluations (None before the first ok)."""
        best = None
        for r in self.rows:
            if r["evaluation"] > evaluations:
                break
            best = r["best_so_far"] if r["best_so_far"] is not None else best
        return best


def read_run(run_dir: Path, strategy: str, seed: int) -> RunEvents:
    """The events of one finished or interrupted run."""
    archive = Archive(run_dir / ARCHIVE_FILE, readonly=True)
    try:
        genomes = {g.id: g for g in archive.genomes()}
        step_total, novelty = {}, {}
        for step in range((archive.last_checkpoint() or 0) + 1):
            state = archive.checkpoint_state(step)
            if state is None:
                continue
            step_total[step] = state.get("total", {})
            for gid, m in state.get("members", {}).items():
                if "novelty" in (m.get("objectives") or {}):
                    novelty.setdefault(gid, m["objectives"]["novelty"])
        racing = parse_config(tomllib.loads(archive.get_meta("config"))).fitness.racing
        needed = {gid: min(racing.min_seeds, racing.baseline_seeds) if g.operator == "seed" else racing.min_seeds
                  for gid, g in genomes.items()}
        s1: dict[str, list] = {}
        rows, n, eval_s, best = [], 0, 0.0, None
        for ev in charged(archive, genomes):
            n += trainings(ev)
            eval_s += ev.wall_s
            g = genomes[ev.genome_id]
            if ev.stage == 1:
                s1.setdefault(ev.genome_id, []).append(ev.score if ev.ok else None)
                means = {gid: statistics.fmean(v) for gid, v in s1.items() if None not in v and len(v) >= needed[gid]}
                best = max(means.values()) if means else None
            scores = s1.get(ev.genome_id, [])
            total = step_total.get(g.generation, {})
            rows.append({
                "run": run_dir.name, "strategy": strategy, "seed": seed, "evaluation": n, "step": g.generation,
                "genome": g.id, "stage": ev.stage, "training_seed": ev.seed, "status": ev.status,
                "score": ev.score, "genome_mean": statistics.fmean(scores) if scores and None not in scores else None,
                "best_so_far": best, "operator": g.operator, "parents": list(g.parents),
                "novelty": novelty.get(g.id), "bench_reused": "bench_reused" in ev.metrics,
                "evaluation_s": round(eval_s, 3),
                "tokens_at_step_end": total.get("prompt_tokens", 0) + total.get("completion_tokens", 0),
                "wall_s_at_step_end": total.get("wall_s"), "llm_calls_at_step_end": total.get("llm_calls"),
            })
        steps = []
        for step, total in sorted(step_total.items()):
            upto = [r for r in rows if r["step"] <= step and r["best_so_far"] is not None][-1:]
            steps.append({"step": step, "evaluations": total.get("evaluations_stage1", 0)
                          + total.get("evaluations_stage2", 0),
                          "tokens": total.get("prompt_tokens", 0) + total.get("completion_tokens", 0),
                          "wall_s": total.get("wall_s", 0.0), "llm_calls": total.get("llm_calls", 0),
                          "llm_s": total.get("llm_s", 0.0), "best_so_far": upto[0]["best_so_far"] if upto else None})
        baseline = archive.get_meta("seed_baseline") or {}
        s2_means = {gid: statistics.fmean(v) for gid, v in stage_scores(archive, 2).items()}
        last = archive.last_checkpoint()
        members = (archive.checkpoint_state(last) or {}).get("members", {}) if last is not None else {}
        ranked = [gid for gid in archive.population(last) if (members.get(gid) or {}).get("score") is not None] \
            if last is not None else []
        picked = max(ranked, key=lambda gid: members[gid]["score"]) if ranked else None
        seed_genomes = {g.motivation: (statistics.fmean(s1[g.id]) if g.id in s1 and None not in s1[g.id] else None)
                        for g in genomes.values() if g.operator == "seed"}
        return RunEvents(run_dir.name, strategy, seed, rows, steps, baseline.get("stage1"),
                         max(s2_means.values()) if s2_means else None, picked, s2_means.get(picked),
                         archive.get_meta("status", "?"), seed_genomes)
    finally:
        archive.close()


def charged(archive: Archive, genomes: dict) -> list:
    """The run's charged evaluations in an order that does not depend on which worker finished first:
    by step, stage, the training seed's place in the config's seed order, then the genome's creation."""
    config = archive.get_meta("config")
    order = parse_config(tomllib.loads(config)).fitness.stage1_seeds() if config else []
    created = {gid: i for i, gid in enumerate(genomes)}
    evs = [ev for ev in archive.evaluations() if "launch" in ev.metrics and "reused_from" not in ev.metrics]
    return sorted(evs, key=lambda ev: (genomes[ev.genome_id].generation, ev.stage,
                                       order.index(ev.seed) if ev.seed in order else len(order) + ev.seed,
                                       created[ev.genome_id]))


def write_jsonl(runs: list[RunEvents], path: Path) -> None:
    """The bench's event log: one JSON object per charged evaluation, runs in matrix order."""
    with path.open("w") as f:
        for run in runs:
            for row in run.rows:
                f.write(json.dumps(row) + "\n")
