"""What a run found: leaderboards, LLM yield and one genome's record, for `evo top` / `evo show`."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from archive.store import Archive

ARCHIVE_FILE = "archive.sqlite"


def open_run(run_dir: Path) -> Archive:
    """The run's archive, read-only (safe while the run is still writing)."""
    path = Path(run_dir) / ARCHIVE_FILE
    if not path.exists():
        raise SystemExit(f"error: {run_dir} is not a run directory (no {ARCHIVE_FILE})")
    return Archive(path, readonly=True)


def stage_scores(archive: Archive, stage: int) -> dict[str, list[float]]:
    """genome id -> ok scores at `stage` (one per training seed)."""
    scores: dict[str, list[float]] = {}
    for ev in archive.evaluations(stage=stage, status="ok"):
        scores.setdefault(ev.genome_id, []).append(ev.score)
    return scores


def yield_stats(archive: Archive) -> dict[str, float]:
    """How useful the LLM was: children produced, parsed, passing the checks, beating their parent."""
    stage1 = {gid: max(s) for gid, s in stage_scores(archive, 1).items()}
    genomes = archive.genomes()
    llm = [g for g in genomes if g.operator.startswith("llm_")]
    unparsed = len(archive.events(kind="parse_failed"))
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


def print_top(run_dir: Path, n: int = 20) -> None:
    """Print the stage-1 leaderboard with stage-2 scores, params, operator and parents, then the yield."""
    archive = open_run(run_dir)
    s1, s2 = stage_scores(archive, 1), stage_scores(archive, 2)
    params = {ev.genome_id: ev.params for ev in archive.evaluations(stage=1, status="ok")}
    genomes = {g.id: g for g in archive.genomes()}
    ranked = sorted(s1, key=lambda gid: (-max(s1[gid]), -(sum(s2.get(gid, [0])) / len(s2.get(gid, [0])))))[:n]
    table = Table(title=f"{run_dir} — top {len(ranked)} by stage-1 score (status: {archive.get_meta('status')})")
    for column in ("#", "genome", "gen", "operator", "parents", "stage 1", "stage 2", "params", "motivation"):
        table.add_column(column)
    for rank, gid in enumerate(ranked, 1):
        g = genomes[gid]
        table.add_row(str(rank), gid, str(g.generation), g.operator, ",".join(g.parents) or "-",
                      _fmt(s1[gid]), _fmt(s2.get(gid)), f"{params.get(gid) or 0:,}", g.motivation[:50])
    console = Console(width=200)
    console.print(table)
    stats = yield_stats(archive)
    console.print(f"LLM children: {stats['llm_children']}, parsed: {stats['parsed']}, passed checks: "
                  f"{stats['passed_checks']} ({stats['yield_pass']:.0%}), beat their parent: "
                  f"{stats['beat_parent']} ({stats['yield_beat']:.0%})")
    console.print(f"best stage-1: LLM-made {stats['best_llm_stage1']}, seeds {stats['best_seed_stage1']}")
    failures = [ev for ev in archive.evaluations(stage=1) if not ev.ok]
    console.print(f"rejected or failed evaluations: {len(failures)}; LLM calls: {archive.llm_stats()}")


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
