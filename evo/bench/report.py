"""The bench report: report/index.html (self-contained), report/report.md (the same tables),
report/events.jsonl (one row per charged evaluation) and report/ioh/ (IOHprofiler layout).

Reads only the bench folder (matrix.json and the runs' archives), so it can be rebuilt at any time
with `evo report BENCH_FOLDER`, also from a bench still running (its unfinished runs are flagged).
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from evo.bench import stats
from evo.bench.events import RunEvents, read_run, tomllib, write_jsonl
from evo.bench.ioh_export import write_ioh
from evo.bench.provenance import provenance
from evo.report_html import Markup, figure, img, page, table_html, table_md

CURRENCY_LABEL = {"evaluations": "charged evaluations", "wall_s": "wall seconds (end of step)",
                  "llm_tokens": "LLM tokens (end of step)"}


def write_bench_report(folder: Path) -> Path:
    """Write the report of the bench in `folder`; returns the report folder."""
    info = json.loads((folder / "matrix.json").read_text())
    runs = [read_run(folder / "runs" / r["name"], r["strategy"], r["seed"]) for r in info["runs"]
            if (folder / "runs" / r["name"] / "archive.sqlite").exists()]
    out = folder / "report"
    out.mkdir(exist_ok=True)
    write_jsonl(runs, out / "events.jsonl")
    write_ioh(runs, out / "ioh")
    sections = build(info, runs)
    title = f"evo bench: {Path(info['source']).name}"
    (out / "index.html").write_text(page(title, "".join(f"<h2>{h}</h2>{html}" for h, html, _ in sections)))
    (out / "report.md").write_text(f"# {title}\n\n" + "\n\n".join(f"## {h}\n\n{md}" for h, _, md in sections) + "\n")
    return out


def build(info: dict, runs: list[RunEvents]) -> list[tuple[str, str, str]]:
    """The report's sections: (heading, HTML, Markdown)."""
    budget, currency, strategies = info["budget"], info["currency"], info["strategies"]
    by = {s: [r for r in runs if r.strategy == s] for s in strategies}
    by = {s: rs for s, rs in by.items() if rs}
    finals = {s: stats.final_scores(rs, budget, currency, info["seeds"]) for s, rs in by.items()}
    sections = [summary(info, runs, by, finals), checklist(info, runs, by)]
    sections.append(final_table(finals, by))
    sections.append(anytime_section(by, info))
    if currency == "evaluations":
        sections.append(targets_section(by, budget))
    sections.append(pairwise_section(finals))
    if info.get("sweep"):
        sections.append(sweep_section(info["sweep"], finals))
    sections.append(noise_section(runs))
    sections.append(seeds_section(runs, info["seeds"]))
    sections.append(runs_section(runs, budget, currency))
    prov = provenance(list(info["configs"].values()), info["seeds"], info.get("models", []))
    start = info.get("provenance_at_start", {})
    rows = [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in prov.items()]
    rows += [[f"{k} (bench started)", json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in start.items()
             if k in ("commit", "packages") and v != prov.get(k)]
    sections.append(("Provenance", table_html(["fact", "value"], rows), table_md(["fact", "value"], rows)))
    return sections


def summary(info: dict, runs: list[RunEvents], by: dict, finals: dict) -> tuple[str, str, str]:
    unfinished = [r.run for r in runs if r.status != "finished"]
    missing = len(info["runs"]) - len(runs)
    n_seeds = len(info["seeds"])
    text = (f"{len(by)} strategies × {n_seeds} paired seed{'s' * (n_seeds > 1)}, budget {info['budget']} "
            f"{info['currency']} per run; score: the best stage-1 mean (MQAR accuracy or the task's score) a run "
            f"holds when its budget is spent. Every other cost is recorded (see Runs).")
    if unfinished or missing:
        text += f" Not finished: {', '.join(unfinished) or '–'}; not started: {missing}."
    notes = "".join(f"<li>{n}</li>" for n in info.get("notes", []))
    return "Summary", f"<p>{text}</p>" + (f"<ul>{notes}</ul>" if notes else ""), text + "".join(
        f"\n- {n}" for n in info.get("notes", []))


def checklist(info: dict, runs: list[RunEvents], by: dict) -> tuple[str, str, str]:
    """The NAS best-practice checklist (Lindauer & Hutter 2020), filled in from the bench itself."""
    n_seeds = len(info["seeds"])
    used = [r.rows[-1]["evaluation"] if r.rows else 0 for r in runs]
    equal = info["currency"] != "evaluations" or all(u >= info["budget"] for u in used)
    items = [
        ("random-search baseline in the matrix", "random" in by),
        ("at least 5 paired seeds per strategy", n_seeds >= 5),
        (f"equal budget in one currency ({info['currency']}) reached by every run", equal),
        ("end-to-end cost reported (wall seconds, LLM tokens, evaluation seconds per run)", True),
        ("same fitness settings, data and test sets for every strategy (paired secrets, one fitness protocol)",
         same_fitness(info["configs"])),
        ("ablation baselines (aging evolution, classic operator)", "aging" in by and ("classic" in by or any(
            "operators" in c and 'kind = "classic"' in c for c in info["configs"].values()))),
        ("code and configs recorded (commit, config hash: see Provenance)", True),
        ("every run finished", all(r.status == "finished" for r in runs) and len(runs) == len(info["runs"])),
    ]
    if n_seeds < 6:
        gives = f"{n_seeds} seeds give" if n_seeds > 1 else "1 seed gives"
        items.append((f"≥ 6 seeds, so the rank test can reach p < 0.05 as well as the t-test ({gives} "
                      f"a smallest two-sided Wilcoxon p of {2 / 2 ** n_seeds:.3f})", False))
    rows = [[Markup(f'<span class="{"ok" if ok else "flag"}">{"yes" if ok else "MISSING"}</span>'), what]
            for what, ok in items]
    return ("NAS best-practice checklist", table_html(["", "item"], rows),
            table_md(["", "item"], [["yes" if ok else "MISSING", what] for what, ok in items]))


def same_fitness(configs: dict[str, str]) -> bool:
    """Whether every strategy's run config has the same [fitness] apart from where evaluations run."""
    def fitness(text: str) -> dict:
        f = tomllib.loads(text).get("fitness", {})
        return {k: v for k, v in f.items() if k not in ("workers", "executor", "ray_address", "gpus_per_eval")}

    return len({json.dumps(fitness(c), sort_keys=True) for c in configs.values()}) <= 1


def final_table(finals: dict, by: dict) -> tuple[str, str, str]:
    iqm = stats.iqm_interval(finals)
    header = ["strategy", "runs", "IQM", "95% CI low", "95% CI high", "mean", "min", "max"]
    rows = []
    for s, v in finals.items():
        ok = v[~np.isnan(v)]
        point, lo, hi = iqm.get(s, (math.nan,) * 3)
        rows.append([s, len(ok), point, lo, hi, float(ok.mean()) if len(ok) else None,
                     float(ok.min()) if len(ok) else None, float(ok.max()) if len(ok) else None])
    fig, ax = figure()
    names = [r[0] for r in rows]
    ax.errorbar([r[2] for r in rows], range(len(rows)), xerr=[[max(0, r[2] - r[3]) for r in rows],
                                                              [max(0, r[4] - r[2]) for r in rows]], fmt="o", capsize=4)
    for i, s in enumerate(names):
        ax.plot(finals[s], [i] * len(finals[s]), "x", color="grey", alpha=0.7)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("final best stage-1 score (IQM, 95% stratified-bootstrap CI; x: runs)")
    text = "Interquartile mean of the runs' final scores with rliable's stratified-bootstrap interval."
    return ("Final score at the budget", f"<p>{text}</p>" + table_html(header, rows) + img(fig, "final IQM per strategy"),
            text + "\n\n" + table_md(header, rows))


def anytime_section(by: dict, info: dict) -> tuple[str, str, str]:
    plots, md = [], []
    limits = {"evaluations": info["budget"] if info["currency"] == "evaluations" else max(
        (r.rows[-1]["evaluation"] for rs in by.values() for r in rs if r.rows), default=1)}
    for cur in ("wall_s", "llm_tokens"):
        key = "wall_s" if cur == "wall_s" else "tokens"
        ends = [r.steps[-1][key] for rs in by.values() for r in rs if r.steps]
        if ends and max(ends) > 0:
            limits[cur] = info["budget"] if info["currency"] == cur else float(np.median(ends))
    for cur, limit in limits.items():
        fig, ax = figure()
        for s, rs in by.items():
            grid, curves = stats.anytime(rs, cur, limit)
            mean, lo, hi = stats.band(curves)
            line, = ax.step(grid, mean, where="post", label=s)
            ax.fill_between(grid, lo, hi, step="post", alpha=0.2, color=line.get_color())
        ax.set_xlabel(CURRENCY_LABEL[cur])
        ax.set_ylabel("best-so-far stage-1 score")
        ax.legend(fontsize="small")
        plots.append(img(fig, f"anytime best-so-far against {cur}"))
        md.append(f"- against {CURRENCY_LABEL[cur]} up to {limit:g}: see index.html")
    if "random" in by and len(by) > 1:
        fig, ax = figure()
        for s, rs in by.items():
            if s != "random":
                grid, diffs = stats.paired_difference(rs, by["random"], "evaluations", limits["evaluations"])
                mean, lo, hi = stats.band(diffs)
                line, = ax.step(grid, mean, where="post", label=s)
                ax.fill_between(grid, lo, hi, step="post", alpha=0.2, color=line.get_color())
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel(CURRENCY_LABEL["evaluations"])
        ax.set_ylabel("best-so-far minus random search's, same seed")
        ax.legend(fontsize="small")
        plots.append(img(fig, "paired difference to random search against evaluations"))
        md.append("- paired difference to random search against evaluations: see index.html")
    text = ("Mean best-so-far over the paired seeds with a 95% percentile-bootstrap band; the last plot takes "
            "random search's best-so-far on the same seed away first, which removes the seed-to-seed spread. "
            "Against wall seconds, runs later in a paired seed look faster: they reuse evaluations the bench "
            "already ran.")
    return "Anytime performance", f"<p>{text}</p>" + "".join(plots), text + "\n" + "\n".join(md)


def targets_section(by: dict, budget: float) -> tuple[str, str, str]:
    fig, ax = figure()
    header = ["strategy"] + [f"runs reaching +{int(f * 100)}% of the gap" if f else "runs beating the best seed"
                             for f in stats.TARGET_FRACTIONS] + ["ECDF area"]
    rows = []
    for s, rs in by.items():
        grid, share, area = stats.ecdf(rs, budget)
        ax.step(grid, share, where="post", label=f"{s} (area {area:.3f})")
        times = np.array([stats.runtimes(r, budget) for r in rs])
        rows.append([s] + [f"{int(np.isfinite(times[:, j]).sum())}/{len(rs)}" for j in range(times.shape[1])] + [area])
    ax.set_xlabel("charged evaluations")
    ax.set_ylabel("share of (run, target) pairs reached")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    text = ("Fixed targets tied to the best seed genome's score s of each paired seed: beat s, then close 10%, "
            "25% and 50% of the gap from s to 1. ECDF of the evaluations needed, and its area (1 = every target at "
            "the first evaluation).")
    return ("Fixed-target runtimes", f"<p>{text}</p>" + table_html(header, rows) + img(fig, "fixed-target ECDF"),
            text + "\n\n" + table_md(header, rows))


def pairwise_section(finals: dict) -> tuple[str, str, str]:
    rows = stats.pairwise(finals)
    header = ["A", "B", "seeds", "mean A−B", "95% CI low", "95% CI high", "t-test Holm p", "Wilcoxon Holm p", "A12",
              "verdict"]
    table = [[r["a"], r["b"], r["n"], r["mean_diff"], r["low"], r["high"], r.get("p_t_holm"), r.get("p_holm"),
              r["a12"], f"A {r['verdict']}" if r["verdict"] != "no difference detected" else r["verdict"]]
             for r in rows]
    text = ("Paired by seed. The verdict says better or worse only where the 95% bootstrap interval of the mean "
            "paired difference excludes zero and the paired t-test, Holm-corrected over all pairs, gives p < 0.05; "
            "Wilcoxon's signed-rank p (Holm-corrected) is shown beside it. A12 is the probability that a run of A "
            "beats a run of B.")
    return "Pairwise comparisons", f"<p>{text}</p>" + table_html(header, table), text + "\n\n" + table_md(header, table)


def sweep_section(sweep: dict, finals: dict) -> tuple[str, str, str]:
    labels = [s for s in finals if s.startswith(sweep["strategy"] + ".")]
    iqm = stats.iqm_interval({s: finals[s] for s in labels})
    rows = [[s.split("=", 1)[1], *iqm.get(s, (math.nan,) * 3)] for s in labels]
    fig, ax = figure()
    x = range(len(rows))
    ax.errorbar(list(x), [r[1] for r in rows], yerr=[[max(0, r[1] - r[2]) for r in rows],
                                                      [max(0, r[3] - r[1]) for r in rows]], fmt="o-", capsize=4)
    ax.set_xticks(list(x), [r[0] for r in rows])
    ax.set_xlabel(sweep["key"])
    ax.set_ylabel("final IQM (95% CI)")
    header = [sweep["key"], "IQM", "95% CI low", "95% CI high"]
    return (f"Sweep of {sweep['key']}", table_html(header, rows) + img(fig, "sweep"), table_md(header, rows))


def noise_section(runs: list[RunEvents]) -> tuple[str, str, str]:
    """How noisy the evaluator is: SD over training seeds of the top genomes, stage-1 vs stage-2 ranks,
    and selection regret."""
    s1: dict[str, list[float]] = {}
    s2: dict[str, list[float]] = {}
    seen = set()
    for run in runs:
        for r in run.rows:  # a genome trained once is listed by every run that reused it: count it once
            once = (run.seed, r["genome"], r["stage"], r["training_seed"])
            if r["status"] == "ok" and once not in seen:
                seen.add(once)
                (s1 if r["stage"] == 1 else s2).setdefault(f"{run.seed}:{r['genome']}", []).append(r["score"])
    repeated = sorted(((statistics.fmean(v), statistics.stdev(v), len(v), k) for k, v in s1.items() if len(v) >= 2),
                      reverse=True)[:10]
    rows = [[k.split(":", 1)[1], k.split(":", 1)[0], mean, sd, n] for mean, sd, n, k in repeated]
    pairs = [(statistics.fmean(s1[k]), statistics.fmean(v)) for k, v in s2.items() if k in s1]
    rho, n = stats.spearman(pairs)
    regrets = [r.stage2_best - r.picked_stage2 for r in runs if r.stage2_best is not None and r.picked_stage2 is not None]
    text = (f"Stage-1 → stage-2 Spearman: {'n/a' if rho is None else f'{rho:.3f}'} over {n} genomes with both. "
            f"Selection regret (best stage-2 mean in the run's archive minus that of the genome the strategy ranks "
            f"first): " + (f"mean {statistics.fmean(regrets):.3f} over {len(regrets)} runs" if regrets else
                           "n/a (no run holds a stage-2 result for its pick)") + ".")
    header = ["genome", "paired seed", "stage-1 mean", "SD over training seeds", "n"]
    intro = "The ten best genomes trained on more than one training seed (racing, seed baseline):"
    return ("Evaluator noise", f"<p>{text}</p><p>{intro}</p>" + table_html(header, rows),
            text + "\n\n" + intro + "\n\n" + table_md(header, rows))


def seeds_section(runs: list[RunEvents], seeds: list[int]) -> tuple[str, str, str]:
    """The seed genomes' stage-1 means per paired seed: does the stage separate them?"""
    first = {r.seed: r for r in reversed(runs)}
    names = list(dict.fromkeys(n for r in runs for n in r.seed_genomes))
    rows = []
    for name in names:
        vals = [first[k].seed_genomes.get(name) if k in first else None for k in seeds]
        ok = [v for v in vals if v is not None]
        rows.append([name, *vals, statistics.fmean(ok) if ok else None,
                     statistics.stdev(ok) if len(ok) > 1 else None])
    header = ["seed genome", *[f"seed {k}" for k in seeds], "mean", "SD over paired seeds"]
    text = ("Stage-1 mean of each seed genome (over its baseline training seeds) under each paired seed's secret; "
            "– is a genome the checks rejected (e.g. by the complexity limit) or that failed.")
    return "Seed genomes", f"<p>{text}</p>" + table_html(header, rows), text + "\n\n" + table_md(header, rows)


def runs_section(runs: list[RunEvents], budget: float, currency: str) -> tuple[str, str, str]:
    header = ["run", "status", "final", "charged evaluations", "reused from the bench", "evaluation s", "wall s",
              "LLM calls", "LLM tokens", "LLM s", "LLM s per call (child or repair)", "best seed"]
    rows = []
    for r in runs:
        last = r.steps[-1] if r.steps else {}
        final = stats.final_scores([r], budget, currency, [r.seed])[0]
        rows.append([r.run, r.status, final, r.rows[-1]["evaluation"] if r.rows else 0,
                     sum(x["bench_reused"] for x in r.rows), r.rows[-1]["evaluation_s"] if r.rows else 0.0,
                     last.get("wall_s"), last.get("llm_calls"), last.get("tokens"), last.get("llm_s"),
                     last["llm_s"] / last["llm_calls"] if last.get("llm_calls") else None, r.seed_best])
    return "Runs", table_html(header, rows), table_md(header, rows)
