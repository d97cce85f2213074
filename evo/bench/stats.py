"""The bench's statistics: anytime curves with bootstrap bands, fixed-target runtimes and their ECDFs,
final interquartile means with stratified-bootstrap intervals (rliable), and paired pairwise
comparisons (bootstrap interval of the mean paired difference, Wilcoxon signed-rank with Holm's
correction, Vargha–Delaney A12).
"""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
from scipy import stats

from evo.bench.events import RunEvents

TARGET_FRACTIONS = (0.0, 0.1, 0.25, 0.5)  # of the way from the best seed's score to 1
CONFIDENCE = 0.95
REPS = 2000


def step_curve(xs: list[float], ys: list[float | None], grid: np.ndarray) -> np.ndarray:
    """The last y at or before each grid point (NaN before the first)."""
    out = np.full(len(grid), np.nan)
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None]
    j, last = 0, np.nan
    for i, g in enumerate(grid):
        while j < len(pairs) and pairs[j][0] <= g:
            last = pairs[j][1]
            j += 1
        out[i] = last
    return out


def band(curves: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs (rows) per grid column and its 95% percentile-bootstrap interval."""
    with warnings.catch_warnings():  # a grid column before any run has a score is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(curves, axis=0)
    lo, hi = mean.copy(), mean.copy()
    if curves.shape[0] >= 2:
        for j in range(curves.shape[1]):
            col = curves[:, j][~np.isnan(curves[:, j])]
            if len(col) >= 2 and np.ptp(col) > 1e-9:
                ci = stats.bootstrap((col,), np.mean, confidence_level=CONFIDENCE, n_resamples=REPS,
                                     method="percentile", random_state=seed).confidence_interval
                lo[j], hi[j] = ci.low, ci.high
    return mean, lo, hi


def anytime(runs: list[RunEvents], currency: str, limit: float, points: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(grid, runs × grid best-so-far) against a currency: evaluations (per evaluation), or the
    step-end wall seconds / LLM tokens, up to `limit`."""
    if currency == "evaluations":
        grid = np.arange(1, int(limit) + 1, dtype=float)
        curves = [step_curve([r["evaluation"] for r in run.rows], [r["best_so_far"] for r in run.rows], grid)
                  for run in runs]
    else:
        key = {"wall_s": "wall_s", "llm_tokens": "tokens"}[currency]
        grid = np.linspace(0, limit, points)
        curves = [step_curve([s[key] for s in run.steps], [s["best_so_far"] for s in run.steps], grid) for run in runs]
    return grid, np.array(curves) if curves else np.zeros((0, len(grid)))


def paired_difference(runs: list[RunEvents], reference: list[RunEvents], currency: str,
                      limit: float) -> tuple[np.ndarray, np.ndarray]:
    """(grid, seeds × grid) best-so-far of `runs` minus that of `reference` on the same paired seed."""
    grid, mine = anytime(runs, currency, limit)
    _, theirs = anytime(reference, currency, limit)
    ref = {r.seed: theirs[i] for i, r in enumerate(reference)}
    diffs = [mine[i] - ref[r.seed] for i, r in enumerate(runs) if r.seed in ref]
    return grid, np.array(diffs) if diffs else np.zeros((0, len(grid)))


def final_scores(runs: list[RunEvents], budget: float, currency: str, seeds: list[int]) -> np.ndarray:
    """Each paired seed's best-so-far at the budget, NaN for a seed without a run (evaluations: after
    exactly `budget` charged evaluations; otherwise at the last step that ended within the budget)."""
    out = np.full(len(seeds), np.nan)
    for run in runs:
        if currency == "evaluations":
            value = run.best_at(budget)
        else:
            key = {"wall_s": "wall_s", "llm_tokens": "tokens"}[currency]
            within = [s["best_so_far"] for s in run.steps if s[key] <= budget and s["best_so_far"] is not None]
            value = within[-1] if within else None
        if value is not None and run.seed in seeds:
            out[seeds.index(run.seed)] = value
    return out


def targets(seed_best: float) -> list[float]:
    """Fixed targets tied to the best seed genome's score: beat it, then close 10/25/50% of the gap to 1."""
    return [seed_best + f * (1.0 - seed_best) for f in TARGET_FRACTIONS]


def runtimes(run: RunEvents, budget: float) -> list[float]:
    """Charged evaluations until the best-so-far first exceeds each target (inf if not within budget)."""
    if run.seed_best is None:
        return [math.inf] * len(TARGET_FRACTIONS)
    out = []
    for t in targets(run.seed_best):
        hit = next((r["evaluation"] for r in run.rows if r["evaluation"] <= budget
                    and r["best_so_far"] is not None and r["best_so_far"] > t + 1e-12), math.inf)
        out.append(float(hit))
    return out


def ecdf(runs: list[RunEvents], budget: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(grid of evaluations, share of (run, target) pairs reached by each, area under the ECDF in [0, 1])."""
    grid = np.arange(1, int(budget) + 1, dtype=float)
    times = np.array([t for run in runs for t in runtimes(run, budget)]) if runs else np.array([math.inf])
    share = np.array([(times <= g).mean() for g in grid])
    return grid, share, float(share.mean()) if len(share) else 0.0


def iqm_interval(finals: dict[str, np.ndarray], seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Interquartile mean of the final scores per strategy with rliable's 95% stratified-bootstrap interval."""
    from rliable import library as rly
    from rliable import metrics

    data = {k: v[~np.isnan(v)].reshape(-1, 1) for k, v in finals.items() if (~np.isnan(v)).sum() >= 1}
    np.random.seed(seed)  # rliable draws from numpy's global generator
    point, interval = rly.get_interval_estimates(data, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=REPS)
    return {k: (float(point[k][0]), float(interval[k][0][0]), float(interval[k][1][0])) for k in data}


def a12(a: np.ndarray, b: np.ndarray) -> float:
    """Vargha–Delaney A12: the probability that a run of `a` beats a run of `b` (ties count half)."""
    gt = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    return float(gt / (len(a) * len(b)))


def pairwise(finals: dict[str, np.ndarray], seed: int = 0) -> list[dict]:
    """Every pair of strategies compared on the paired seeds both have: the mean paired difference with its
    95% bootstrap interval, the paired t-test's and Wilcoxon's p (each Holm-corrected over the pairs), A12,
    and a verdict: better/worse only when the interval excludes zero and the Holm-corrected t-test
    gives p < 0.05 (Wilcoxon cannot go below p = 0.0625 with five seeds)."""
    from statsmodels.stats.multitest import multipletests

    rows = []
    for a, b in itertools.combinations(finals, 2):
        ok = ~np.isnan(finals[a]) & ~np.isnan(finals[b])
        x, y = finals[a][ok], finals[b][ok]
        d = x - y
        row = {"a": a, "b": b, "n": int(ok.sum()), "mean_diff": float(d.mean()) if len(d) else math.nan,
               "low": math.nan, "high": math.nan, "p_t": 1.0, "p": 1.0, "a12": a12(x, y) if len(d) else math.nan}
        if len(d) >= 2 and np.ptp(d) > 1e-9:
            ci = stats.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=REPS,
                                 method="percentile", random_state=seed).confidence_interval
            row["low"], row["high"] = float(ci.low), float(ci.high)
            row["p_t"] = float(stats.ttest_rel(x, y).pvalue)
            row["p"] = float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
        elif len(d) >= 2:  # the same difference on every seed: no spread to test against
            row["low"] = row["high"] = float(d[0])
        rows.append(row)
    if rows:
        holm_t = multipletests([r["p_t"] for r in rows], method="holm")[1]
        holm_w = multipletests([r["p"] for r in rows], method="holm")[1]
        for r, pt, pw in zip(rows, holm_t, holm_w):
            r["p_t_holm"], r["p_holm"] = float(pt), float(pw)
            shown = r["n"] >= 3 and pt < 0.05 and (r["low"] > 0 or r["high"] < 0)
            r["verdict"] = ("better" if r["low"] > 0 else "worse") if shown else "no difference detected"
    return rows


def spearman(pairs: list[tuple[float, float]]) -> tuple[float | None, int]:
    """Spearman's rho of (stage 1, stage 2) means, and n (None under 3 pairs)."""
    if len(pairs) < 3:
        return None, len(pairs)
    rho = stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return (None if np.isnan(rho) else float(rho)), len(pairs)
