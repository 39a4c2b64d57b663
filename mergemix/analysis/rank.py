"""Rank consistency between a predictor of mixture quality (merged models) and a reference (trained models).

Every metric compares two score vectors over the same mixtures: Spearman ρ, Kendall τ (τ-b), ρ over the
reference's top 25% of mixtures, and capability recovery Σ predicted / Σ reference (DeMix's metrics). Point
values come from scipy; the bootstrap uses row-batched equivalents (tested equal to scipy), since a thousand
resamples × metrics × capabilities one scipy call at a time take minutes. `compare` averages each metric over
several references (one per training seed) and adds a percentile bootstrap interval over mixtures."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau, rankdata, spearmanr

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


# ---------------------------------------------------------------------- the same, one value per row ---
def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson_rows(rankdata(x, axis=1), rankdata(y, axis=1))


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """τ-b: Σ sign(Δx)·sign(Δy) over pairs, over the square root of the untied pair counts of x and y."""
    sx, sy = np.sign(x[:, :, None] - x[:, None, :]), np.sign(y[:, :, None] - y[:, None, :])
    return (sx * sy).sum((1, 2)) / np.sqrt((sx * sx).sum((1, 2)) * (sy * sy).sum((1, 2)))


def top25_spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    k = top_count(y.shape[1])
    if k < MIN_TOP:
        return np.full(len(y), np.nan)
    top = np.argsort(-y, axis=1, kind="stable")[:, :k]
    return spearman_rows(np.take_along_axis(x, top, 1), np.take_along_axis(y, top, 1))


def recovery_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x.sum(1) / y.sum(1)


METRICS = {"spearman": (spearman, spearman_rows), "kendall": (kendall, kendall_rows),
           "top25_spearman": (top25_spearman, top25_spearman_rows),
           "capability_recovery": (recovery, recovery_rows)}


# ----------------------------------------------------------------------------------------- bootstrap ---
def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """n_boot resamples of n mixtures with replacement, from one seeded generator."""
    return np.random.default_rng(seed).integers(0, n, size=(max(0, n_boot), n))


def interval(rows_fn, x, refs: Sequence, boot: np.ndarray) -> list[float | None]:
    """Percentile (2.5, 97.5) interval of `rows_fn` averaged over refs, mixtures resampled by the rows of
    `boot`. Resamples where the statistic is undefined (all-tied scores) are left out."""
    if not len(boot):
        return [None, None]
    x = np.asarray(x, float)
    with np.errstate(all="ignore"):
        stats = np.mean([rows_fn(x[boot], np.asarray(r, float)[boot]) for r in refs], axis=0)
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return [None, None]
    return [float(v) for v in np.percentile(stats, [2.5, 97.5])]


def _point(fn, x, refs) -> float | None:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # all-tied scores: scipy warns and returns NaN
        value = float(np.mean([fn(x, r) for r in refs]))
    return value if np.isfinite(value) else None


def compare(pred: dict[str, Sequence[float]], refs: Sequence[dict[str, Sequence[float]]], n_boot: int,
            seed: int) -> dict:
    """Every metric for every series ("overall" and each capability) of `pred` against each reference in
    `refs`, averaged over the references, with a bootstrap interval (the same resamples throughout):
    {metric: {"overall": v, "capabilities": {c: v}, "interval": {"overall": [lo, hi], "capabilities": ...}}}.
    Undefined values are None."""
    n = len(pred["overall"])
    boot = bootstrap_indices(n, n_boot, seed)
    series = ["overall", *(k for k in pred if k != "overall")]
    out = {}
    for name, (fn, rows_fn) in METRICS.items():
        point = {s: _point(fn, pred[s], [r[s] for r in refs]) for s in series}
        ci = {s: interval(rows_fn, pred[s], [r[s] for r in refs], boot) for s in series}
        out[name] = {"overall": point["overall"], "capabilities": {s: point[s] for s in series[1:]},
                     "interval": {"overall": ci["overall"], "capabilities": {s: ci[s] for s in series[1:]}}}
    return out
