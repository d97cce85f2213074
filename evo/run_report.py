"""`evo report RUN_DIR`: one run as a self-contained HTML page (RUN_DIR/report.html).

Best score over evaluations and over wall time, the lineage (operator and directive on each edge,
the code diff parent -> child on click), LLM yield per operator and directive, the analyst's latest
notes and tallies, stage 1 against stage 2, the Pareto front of multi-objective runs, and the provenance.
"""
from __future__ import annotations

import difflib
import html
import json
import statistics
import sys
from pathlib import Path

from evo.bench.events import read_run
from evo.bench.provenance import provenance
from evo.report_html import Markup, figure, img, page, table_html
from evo.summary import open_run, pareto_front, stage_scores
from operators.analyst import TABLES, Analysis

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def write_run_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report.html; returns its path."""
    archive = open_run(run_dir)
    try:
        config = archive.get_meta("config") or ""
        raw = tomllib.loads(config) if config else {}
        strategy = raw.get("search", {}).get("strategy", "?")
        events = read_run(run_dir, strategy, raw.get("run", {}).get("seed", 0))
        genomes = archive.genomes()
        s1 = {g: statistics.fmean(v) for g, v in stage_scores(archive, 1).items()}
        s2 = {g: statistics.fmean(v) for g, v in stage_scores(archive, 2).items()}
        origins = {g.id: archive.origin(g.id) or {} for g in genomes}
        sections = [
            ("Summary", _summary(archive, strategy, events, s1)),
            ("Best score", _progress(events)),
            ("Lineage", _lineage(genomes, origins, s1, s2)),
            ("Yield per operator and directive", _yield(genomes, origins, s1)),
            ("Analyst", _analyst(archive)),
            ("Stage 1 against stage 2", _stages(s1, s2)),
        ]
        objectives, front = pareto_front(archive)
        if strategy in ("nsga2",) or raw.get("search", {}).get("islands", {}).get("strategy") == "nsga2":
            sections.append(("Pareto front", _pareto(objectives, front)))
        prov = provenance([config], [raw.get("run", {}).get("seed", 0)],
                          [raw["llm"]["model"]] if raw.get("operators", {}).get("kind", "llm") != "classic" else [])
        sections.append(("Provenance", table_html(["fact", "value"], [[k, json.dumps(v) if isinstance(v, (dict, list))
                                                                        else v] for k, v in prov.items()])))
    finally:
        archive.close()
    out = run_dir / "report.html"
    out.write_text(page(f"evo report: {run_dir.name}", "".join(f"<h2>{h}</h2>{b}" for h, b in sections)))
    return out


def _summary(archive, strategy: str, events, s1: dict) -> str:
    best = max(s1.items(), key=lambda kv: kv[1]) if s1 else None
    rows = [["strategy", strategy], ["status", archive.get_meta("status")], ["stopped", archive.get_meta("stop_reason")],
            ["genomes", archive.count_genomes()], ["charged evaluations", len(events.rows)],
            ["best stage-1 mean", f"{best[1]:.4f} ({best[0]})" if best else None], ["best seed", events.seed_best]]
    return table_html(["", ""], rows)


def _progress(events) -> str:
    out = []
    for xkey, label, points in (("evaluation", "charged evaluations", events.rows),
                                ("wall_s", "wall seconds (end of step)", events.steps)):
        fig, ax = figure()
        xs = [p[xkey] for p in points if p["best_so_far"] is not None]
        ys = [p["best_so_far"] for p in points if p["best_so_far"] is not None]
        ax.step(xs, ys, where="post")
        if xkey == "evaluation":
            ok = [(p["evaluation"], p["score"]) for p in points if p["score"] is not None and p["stage"] == 1]
            ax.plot([p[0] for p in ok], [p[1] for p in ok], ".", alpha=0.4, label="one training run")
            ax.legend(fontsize="small")
        ax.set_xlabel(label)
        ax.set_ylabel("best stage-1 mean")
        out.append(img(fig, f"best score over {label}"))
    return "".join(out)


def _lineage(genomes, origins: dict, s1: dict, s2: dict) -> str:
    by_id = {g.id: g for g in genomes}
    fig, ax = figure()
    colours = {}
    for g in genomes:
        if g.id not in s1:
            continue
        for p in g.parents:
            if p in s1:
                line, = ax.plot([by_id[p].generation, g.generation], [s1[p], s1[g.id]], "-", alpha=0.5,
                                color=colours.get(g.operator), label=None if g.operator in colours else g.operator)
                colours.setdefault(g.operator, line.get_color())
        ax.plot(g.generation, s1[g.id], "o", color=colours.get(g.operator, "black"), ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("stage-1 mean")
    if colours:
        ax.legend(fontsize="small")
    rows = []
    for g in genomes:
        parent = by_id.get(g.parents[0]) if g.parents else None
        diff = "".join(difflib.unified_diff(parent.code.splitlines(True), g.code.splitlines(True), parent.id, g.id)) \
            if parent else g.code
        what = "diff parent → child" if parent else "code"
        rows.append([g.id, g.generation, g.operator, str(origins[g.id].get("directive") or "–")[:80],
                     ", ".join(g.parents) or "–", s1.get(g.id), s2.get(g.id),
                     Markup(f"<details><summary>{what}</summary><pre>{html.escape(diff)}</pre></details>")])
    return img(fig, "lineage: stage-1 mean by step, lines from parent to child") + table_html(
        ["genome", "step", "operator", "directive", "parents", "stage 1", "stage 2", "code"], rows)


def _yield(genomes, origins: dict, s1: dict) -> str:
    groups: dict[tuple[str, str], list] = {}
    for g in genomes:
        if g.operator == "seed":
            continue
        groups.setdefault((g.operator, str(origins[g.id].get("directive") or "–")[:60]), []).append(g)
    rows = []
    for (op, directive), gs in sorted(groups.items()):
        passed = [g for g in gs if g.id in s1]
        gains = [s1[g.id] - max(s1.get(p, float("nan")) for p in g.parents) for g in passed
                 if g.parents and all(p in s1 for p in g.parents)]
        rows.append([op, directive, len(gs), len(passed), sum(x > 0 for x in gains),
                     statistics.fmean(gains) if gains else None])
    return table_html(["operator", "directive", "children", "passed checks", "beat parent", "mean gain vs parent"], rows)


def _analyst(archive) -> str:
    """The latest step analysis (operators.analyst): its gist, as prompts read it, and its cumulative
    tally per directive, operator and edit format."""
    latest = archive.step_analyses(limit=1)
    if not latest:
        return "<p>No step analysed.</p>"
    analysis = Analysis.from_dict(latest[0]["data"])
    out = [f"<p>After step {analysis.step} (cumulative over steps {analysis.first_step}-{analysis.step}); "
           f"the notes later prompts read:</p><pre>{html.escape(analysis.gist or '(none)')}</pre>"]
    for table in TABLES:
        rows = [[key or "–", g.children, g.passed, g.pass_rate, g.repaired, g.mean_delta,
                 f"{g.best.delta:+.4f} {g.best.motivation}" if g.best else None,
                 f"{g.top_failure[0]} ({g.top_failure[1]}x)" if g.failures else None]
                for key, g in analysis.total[table].items()]
        out.append(table_html([table.replace("_", " "), "children", "scored", "pass rate", "scored after repair",
                               "mean change vs parent", "best child", "most common failure"], rows))
    return "".join(out)


def _stages(s1: dict, s2: dict) -> str:
    both = [g for g in s2 if g in s1]
    fig, ax = figure()
    ax.plot([s1[g] for g in both], [s2[g] for g in both], "o")
    ax.set_xlabel("stage-1 mean")
    ax.set_ylabel("stage-2 mean")
    ax.set_title(f"{len(both)} genomes with both stages")
    return img(fig, "stage 1 against stage 2")


def _pareto(objectives: list, front: list[dict]) -> str:
    names = [n for n, _ in objectives]
    x, y = (names + ["params"])[:2] if len(names) >= 2 else ("score", "params")
    fig, ax = figure()
    ax.plot([r.get(y, float("nan")) for r in front], [r.get(x, float("nan")) for r in front], "o")
    ax.set_xlabel(y)
    ax.set_ylabel(x)
    rows = [[r["id"]] + [r.get(n) for n in names] for r in front]
    return img(fig, "Pareto front") + table_html(["genome"] + names, rows)
