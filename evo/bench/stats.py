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
            if len(col) >= 2 and np.ptp(col) > 0:
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


def final_scores(runs: list[RunEvents], budget: float, currency: str) -> np.ndarray:
    """Each run's best-so-far at the budget (evaluations: after exactly `budget` charged evaluations;
    otherwise at the last step that ended within the budget)."""
    out = []
    for run in runs:
        if currency == "evaluations":
            out.append(run.best_at(budget))
        else:
            key = {"wall_s": "wall_s", "llm_tokens": "tokens"}[currency]
            within = [s["best_so_far"] for s in run.steps if s[key] <= budget and s["best_so_far"] is not None]
            out.append(within[-1] if within else None)
    return np.array([np.nan if v is None else v for v in out], dtype=float)


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


def pairwise(finals: dict[str, np.ndarray], seeds: list[int], seed: int = 0) -> list[dict]:
    """Every pair of strategies compared on the seeds both finished: the mean paired difference with its
    95% bootstrap interval, Wilcoxon's p (Holm-corrected over the pairs), A12, and a verdict that says
    better/worse only when the interval excludes zero."""
    from statsmodels.stats.multitest import multipletests

    rows = []
    for a, b in itertools.combinations(finals, 2):
        ok = ~np.isnan(finals[a]) & ~np.isnan(finals[b])
        x, y = finals[a][ok], finals[b][ok]
        d = x - y
        row = {"a": a, "b": b, "n": int(ok.sum()), "mean_diff": float(d.mean()) if len(d) else math.nan,
               "low": math.nan, "high": math.nan, "p": 1.0, "a12": a12(x, y) if len(d) else math.nan}
        if len(d) >= 2:
            if np.ptp(d) > 0:
                ci = stats.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=REPS,
                                     method="percentile", random_state=seed).confidence_interval
                row["low"], row["high"] = float(ci.low), float(ci.high)
            else:
                row["low"] = row["high"] = float(d[0])
            if np.any(d != 0):
                row["p"] = float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
        rows.append(row)
    if rows:
        holm = multipletests([r["p"] for r in rows], method="holm")[1]
        for r, p in zip(rows, holm):
            r["p_holm"] = float(p)
            excludes = r["n"] >= 2 and (r["low"] > 0 or r["high"] < 0)
            r["verdict"] = ("better" if r["low"] > 0 else "worse") if excludes else "no difference detected"
    return rows


def spearman(pairs: list[tuple[float, float]]) -> tuple[float | None, int]:
    """Spearman's rho of (stage 1, stage 2) means, and n (None under 3 pairs)."""
    if len(pairs) < 3:
        return None, len(pairs)
    rho = stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return (None if np.isnan(rho) else float(rho)), len(pairs)
