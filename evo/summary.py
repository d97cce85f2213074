"""What a run found: leaderboards, LLM yield and one genome's record, for `evo top` / `evo show`."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from archive.store import Archive

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ARCHIVE_FILE = "archive.sqlite"


def open_run(run_dir: Path) -> Archive:
    """The run's archive, read-only (safe while the run is still writing)."""
    path = Path(run_dir) / ARCHIVE_FILE
    if not path.exists():
        raise SystemExit(f"error: {run_dir} is not a run directory (no {ARCHIVE_FILE})")
    return Archive(path, readonly=True)


def stage_scores(archive: Archive, stage: int) -> dict[str, list[float]]:
    """genome id -> scores at `stage` (one per training seed), for the genomes whose every run at
    `stage` is ok (a genome that failed one seed has no score, whatever its others drew)."""
    runs: dict[str, list] = {}
    for ev in archive.evaluations(stage=stage):
        runs.setdefault(ev.genome_id, []).append(ev)
    return {gid: [e.score for e in evs] for gid, evs in runs.items() if all(e.ok for e in evs)}


def _mean(scores: list[float]) -> float:
    return sum(scores) / len(scores)


def seed_baseline(archive: Archive) -> dict[str, float | None]:
    """The best seed genome's mean score over its training seeds at each stage, measured in this run."""
    seeds = {g.id for g in archive.genomes(generation=0) if g.operator == "seed"}
    out = {}
    for stage in (1, 2):
        means = [_mean(s) for gid, s in stage_scores(archive, stage).items() if gid in seeds]
        out[f"stage{stage}"] = max(means) if means else None
    return out


def rank_correlation(archive: Archive) -> dict[str, float | int | None]:
    """Spearman rank correlation of the stage-1 and stage-2 means over the genomes trained at stage 2
    (a behavioural twin, whose stage-2 results are copies of another's, is left out and counted in
    "twins": it would count one function twice), with a two-sided permutation p-value (exact up to 7 genomes, 9,999 orders beyond): the t-approximation
    says p = 0 for any perfect ranking, even of 4 genomes, where 2 of the 24 orders are as extreme."""
    from scipy.stats import permutation_test, spearmanr

    s1, s2 = stage_scores(archive, 1), stage_scores(archive, 2)
    twins = {ev.genome_id for ev in archive.evaluations(stage=2) if (ev.metrics or {}).get("twin")}
    both = [gid for gid in s2 if gid in s1 and gid not in twins]
    none = {"spearman": None, "p_value": None, "n": len(both), "twins": len(twins & s2.keys())}
    if len(both) < 3:
        return none
    x, y = [_mean(s1[g]) for g in both], [_mean(s2[g]) for g in both]
    rho = spearmanr(x, y).statistic
    if math.isnan(rho):  # one side is constant
        return none
    test = permutation_test((x,), lambda a: spearmanr(a, y).statistic, permutation_type="pairings",
                            n_resamples=math.inf if len(both) <= 7 else 9999, rng=0)
    return {**none, "spearman": float(rho), "p_value": float(test.pvalue)}


def yield_stats(archive: Archive) -> dict[str, float]:
    """How useful the LLM was: children produced, parsed, passing the checks, beating their parent."""
    stage1 = {gid: _mean(s) for gid, s in stage_scores(archive, 1).items()}
    genomes = archive.genomes()
    llm = [g for g in genomes if g.operator.startswith("llm_")]
    # a resumed generation logs its parse failures again: count each (generation, slot) once
    unparsed = len({(e["data"].get("generation"), e["data"].get("slot"), e["message"])
                    for e in archive.events(kind="parse_failed")})
    passed = [g for g in llm if g.id in stage1]
    beat = [g for g in passed if g.parents and stage1[g.id] > max(stage1.get(p, float("-inf")) for p in g.parents)]
    seeds = [stage1[g.id] for g in genomes if g.operator == "seed" and g.id in stage1]
    produced = len(llm) + unparsed
    return {
        "llm_children": produced,
        "parsed": len(llm),
        "passed_checks": len(passed),
        "beat_parent": len(beat),
        "yield_pass": round(len(passed) / produced, 3) if produced else 0.0,
        "yield_beat": round(len(beat) / produced, 3) if produced else 0.0,
        "best_seed_stage1": max(seeds) if seeds else None,
        "best_llm_stage1": max((stage1[g.id] for g in passed), default=None),
    }


def _fmt(scores: list[float] | None) -> str:
    if not scores:
        return "-"
    mean = sum(scores) / len(scores)
    if len(scores) == 1:
        return f"{mean:.4f}"
    spread = (sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) ** 0.5
    return f"{mean:.4f}±{spread:.4f} (n={len(scores)})"


def _delta(scores: list[float] | None, baseline: float | None) -> str:
    if not scores or baseline is None:
        return "-"
    return f"{_mean(scores) - baseline:+.4f}"


def print_top(run_dir: Path, n: int = 20) -> None:
    """Print the stage-1 leaderboard with stage-2 scores, params, operator and parents, then the yield."""
    archive = open_run(run_dir)
    s1, s2 = stage_scores(archive, 1), stage_scores(archive, 2)
    params = {ev.genome_id: ev.params for ev in archive.evaluations(stage=1, status="ok")}
    genomes = {g.id: g for g in archive.genomes()}
    ranked = sorted(s1, key=lambda gid: (-_mean(s1[gid]), -_mean(s2.get(gid, [0]))))[:n]
    table = Table(title=f"{run_dir} — top {len(ranked)} by mean stage-1 score, mean ± SD (n seeds) "
                        f"(status: {archive.get_meta('status')})")
    base = seed_baseline(archive)
    for column in ("#", "genome", "gen", "operator", "parents", "stage 1", "vs seeds", "stage 2", "vs seeds",
                   "params", "motivation"):
        table.add_column(column)
    for rank, gid in enumerate(ranked, 1):
        g = genomes[gid]
        table.add_row(str(rank), gid, str(g.generation), g.operator, ",".join(g.parents) or "-",
                      _fmt(s1[gid]), _delta(s1[gid], base["stage1"]), _fmt(s2.get(gid)),
                      _delta(s2.get(gid), base["stage2"]), f"{params.get(gid) or 0:,}", g.motivation[:50])
    console = Console(width=200)
    console.print(table)
    stats = yield_stats(archive)
    console.print(f"LLM children: {stats['llm_children']}, parsed: {stats['parsed']}, passed checks: "
                  f"{stats['passed_checks']} ({stats['yield_pass']:.0%}), beat their parent: "
                  f"{stats['beat_parent']} ({stats['yield_beat']:.0%})")
    console.print(f"best stage-1: LLM-made {stats['best_llm_stage1']}, seeds {stats['best_seed_stage1']}")
    corr = rank_correlation(archive)
    rho = "n/a" if corr["spearman"] is None else f"{corr['spearman']:.3f} (p={corr['p_value']:.3g})"
    console.print(f"seed baseline: stage 1 {base['stage1']}, stage 2 {base['stage2']}; Spearman stage 1 vs "
                  f"stage 2 over {corr['n']} genomes trained at stage 2: {rho}"
                  + (f" ({corr['twins']} behavioural twins with copied results left out)" if corr["twins"] else ""))
    failures = [ev for ev in archive.evaluations(stage=1) if not ev.ok]
    console.print(f"rejected or failed evaluations: {len(failures)}; LLM calls: {archive.llm_stats()}")
    last = archive.last_checkpoint()
    state = archive.checkpoint_state(last) if last is not None else None
    if state and "total" in state:
        t = state["total"]
        console.print(f"spent after step {last}: {t['steps']} steps, {t['evaluations_stage1']} stage-1 and "
                      f"{t['evaluations_stage2']} stage-2 evaluations ({t['evaluation_s']:.0f} s), {t['llm_calls']} "
                      f"LLM requests ({t['llm_cached']} cached, {t.get('llm_s', 0.0):.0f} s), "
                      f"{t['prompt_tokens'] + t['completion_tokens']:,} tokens, {t['wall_s']:.0f} s wall; stopped: {archive.get_meta('stop_reason') or '-'}")


def pareto_front(archive: Archive) -> tuple[list[tuple[str, str]], list[dict]]:
    """(objectives with directions, front members) at the last checkpoint: the front an nsga2 run keeps
    (the union of the islands' fronts, filtered), else the genomes of the checkpoint's population that
    no other one dominates on (score max, params min). A member: {"id", "score", objective: value}."""
    last = archive.last_checkpoint()
    state = (archive.checkpoint_state(last) or {}) if last is not None else {}
    members = state.get("members", {})
    strategy = state.get("strategy", {})
    stored = [gid for s in [strategy, *strategy.get("islands", [])] for gid in s.get("pareto", [])]
    objectives = [("score", "max"), ("params", "min")]
    config = archive.get_meta("config")
    if stored and config:
        from evo.config import parse_config

        search = parse_config(tomllib.loads(config)).search
        table = search.islands.nsga2 if search.strategy == "islands" else search.nsga2
        objectives = [(o.name, o.direction) for o in table.objectives]
    ids = list(dict.fromkeys(stored or archive.population(last) if last is not None else []))
    rows = [{"id": gid, "score": members[gid]["score"], **members[gid]["objectives"]} for gid in ids
            if gid in members and members[gid]["score"] is not None]

    def signed(row: dict) -> tuple[float, ...]:
        return tuple(row.get(n, float("-inf") if d == "max" else float("inf")) * (1 if d == "max" else -1)
                     for n, d in objectives)

    front = [r for r in rows if not any(dominates(signed(o), signed(r)) for o in rows)]
    return objectives, sorted(front, key=lambda r: -r["score"])


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """a is at least as good as b everywhere and better somewhere (every objective maximised)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def print_pareto(run_dir: Path) -> None:
    """Print the Pareto front of the run's last checkpoint."""
    archive = open_run(run_dir)
    objectives, front = pareto_front(archive)
    genomes = {g.id: g for g in archive.genomes()}
    table = Table(title=f"{run_dir} — Pareto front on " + ", ".join(f"{n} ({d})" for n, d in objectives))
    for column in ("genome", "step", "operator", *(n for n, _ in objectives)):
        table.add_column(column)
    for row in front:
        g = genomes[row["id"]]
        table.add_row(row["id"], str(g.generation), g.operator,
                      *(f"{row[n]:.4g}" if n in row else "-" for n, _ in objectives))
    Console(width=200).print(table)


def print_genome(run_dir: Path, genome_id: str) -> None:
    """Print one genome: lineage, motivation, every evaluation and the code."""
    archive = open_run(run_dir)
    genome = archive.genome(genome_id)
    if genome is None:
        raise SystemExit(f"error: no genome {genome_id!r} in {run_dir}")
    console = Console(width=200)
    console.print(f"[bold]{genome.id}[/bold] generation {genome.generation}, operator {genome.operator}, "
                  f"parents {', '.join(genome.parents) or '-'}")
    console.print(f"motivation: {genome.motivation or '-'}")
    console.print(f"origin: {archive.origin(genome.id)}")
    for ev in archive.evaluations(genome_id=genome.id):
        detail = f"score {ev.score:.4f}" if ev.ok else ev.reason
        console.print(f"stage {ev.stage} seed {ev.seed}: {ev.status} {detail} params={ev.params} "
                      f"wall={ev.wall_s:.1f}s")
    console.print(Syntax(genome.code, "python", line_numbers=True))
