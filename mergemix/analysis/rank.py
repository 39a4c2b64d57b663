"""Rank consistency between a predictor of mixture quality (merged models) and a reference (trained models).

Every metric compares two score vectors over the same mixtures: Spearman ρ, Kendall τ (τ-b), ρ over the
reference's top 25% of mixtures, and capability recovery Σ predicted / Σ reference (DeMix's metrics). Point
values come from scipy, and so do the bootstrap's: one scipy call per metric over all resamples (`axis=1`).
`compare` averages each metric over several references (one per training seed) and adds a percentile bootstrap
interval over mixtures (scipy.stats.bootstrap, paired)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import bootstrap, kendalltau, pearsonr, rankdata, spearmanr

MIN_TOP = 3  # a rank correlation over fewer points is not informative (2 points give only ±1)


def top_count(n: int) -> int:
    return math.ceil(n / 4)


# ------------------------------------------------------------------------------------ point values (scipy) ---
def spearman(x, y) -> float:
    return float(spearmanr(x, y).statistic)


def kendall(x, y) -> float:
    return float(kendalltau(x, y).statistic)


def top25_spearman(x, y) -> float:
    """ρ over the mixtures in the top 25% of the reference y; NaN when that is fewer than 3 mixtures."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    k = top_count(len(y))
    if k < MIN_TOP:
        return float("nan")
    top = np.argsort(-y, kind="stable")[:k]
    return spearman(x[top], y[top])


def recovery(x, y) -> float:
    """Σ predicted / Σ reference: how much of the reference's score level the predictor reaches."""
    total = float(np.sum(y))
    return float(np.sum(x)) / total if total != 0 else float("nan")


# ------------------------------------------------------------------- the same, one value per row (scipy) ---
def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return pearsonr(rankdata(x, axis=1), rankdata(y, axis=1), axis=1).statistic


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """τ-b per row (the asymptotic p-value skips scipy's exact one, which is not used)."""
    return kendalltau(x, y, axis=1, method="asymptotic").statistic


def top25_spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    k = top_count(y.shape[1])
    if k < MIN_TOP:
        return np.full(len(y), np.nan)
    top = np.argsort(-y, axis=1, kind="stable")[:, :k]
    return spearman_rows(np.take_along_axis(x, top, 1), np.take_along_axis(y, top, 1))


def recovery_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x.sum(1) / y.sum(1)


METRICS = {
    "spearman": (spearman, spearman_rows),
    "kendall": (kendall, kendall_rows),
    "top25_spearman": (top25_spearman, top25_spearman_rows),
    "capability_recovery": (recovery, recovery_rows),
}


# ----------------------------------------------------------------------------------------- bootstrap ---
def interval(rows_fn, x, refs: Sequence, n_boot: int, seed: int) -> list[float | None]:
    """Percentile (2.5, 97.5) interval of `rows_fn` averaged over refs, over n_boot resamples of the mixtures
    (paired: x and every reference resampled alike; the same resamples for every call with this seed). Resamples
    where the statistic is undefined (all-tied scores) are left out."""
    if n_boot <= 0:
        return [None, None]

    def stat(x, *refs, axis=-1):
        return np.mean([rows_fn(x, r) for r in refs], axis=0)

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # all-tied resamples: scipy warns, the statistic is NaN
        res = bootstrap(
            (np.asarray(x, float), *(np.asarray(r, float) for r in refs)),
            stat,
            n_resamples=n_boot,
            paired=True,
            vectorized=True,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    stats = res.bootstrap_distribution[np.isfinite(res.bootstrap_distribution)]
    if not len(stats):
        return [None, None]
    return [float(v) for v in np.percentile(stats, [2.5, 97.5])]


def _point(fn, x, refs) -> float | None:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # all-tied scores: scipy warns and returns NaN
        value = float(np.mean([fn(x, r) for r in refs]))
    return value if np.isfinite(value) else None


def compare(
    pred: dict[str, Sequence[float]], refs: Sequence[dict[str, Sequence[float]]], n_boot: int, seed: int
) -> dict:
    """Every metric for every series ("overall" and each capability) of `pred` against each reference in
    `refs`, averaged over the references, with a bootstrap interval (the same resamples throughout):
    {metric: {"overall": v, "capabilities": {c: v}, "interval": {"overall": [lo, hi], "capabilities": ...}}}.
    Undefined values are None."""
    series = ["overall", *(k for k in pred if k != "overall")]
    out = {}
    for name, (fn, rows_fn) in METRICS.items():
        point = {s: _point(fn, pred[s], [r[s] for r in refs]) for s in series}
        ci = {s: interval(rows_fn, pred[s], [r[s] for r in refs], n_boot, seed) for s in series}
        out[name] = {
            "overall": point["overall"],
            "capabilities": {s: point[s] for s in series[1:]},
            "interval": {"overall": ci["overall"], "capabilities": {s: ci[s] for s in series[1:]}},
        }
    return out
