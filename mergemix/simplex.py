"""Mixtures as points on the probability simplex: validation, grids and random designs (canonical order)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mergemix.errors import MergeMixError

TOL = 1e-6
DIGITS = 12  # weights are kept to 12 decimals: one mixture reached by different float paths has one cache key


def check_weights(
    weights: Sequence[float] | Mapping[str, float], names: Sequence[str], what: str = "weights"
) -> dict[str, float]:
    """Validate a mixture and return it as {domain: weight} in canonical form: sorted, rounded to DIGITS decimals."""
    names = list(names)
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise MergeMixError(f"{what} name unknown domains {unknown}; known: {sorted(names)}")
        missing = sorted(set(names) - set(weights))
        if missing:
            raise MergeMixError(
                f"{what} miss domains {missing}; give a weight (0 allowed) for each of {sorted(names)}"
            )
        values = [weights[n] for n in names]
    elif isinstance(weights, str) or not isinstance(weights, Sequence):
        raise MergeMixError(f"{what} must be {{domain: weight, ...}} or a list of weights, got {weights!r}")
    else:
        values = list(weights)
        if len(values) != len(names):
            raise MergeMixError(
                f"{what} have {len(values)} entries but there are {len(names)} domains {names}"
            )
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise MergeMixError(f"{what} must be numbers, got {values}") from exc
    if not np.all(np.isfinite(arr)):
        raise MergeMixError(f"{what} must be finite, got {values}")
    if any(isinstance(v, (str, bytes, bool)) for v in values):  # numpy reads '0.5' as a number
        raise MergeMixError(f"{what} must be numbers, got {values}")
    if np.any(arr < 0):
        raise MergeMixError(f"{what} must be non-negative, got {values}")
    if abs(arr.sum() - 1.0) > TOL:
        raise MergeMixError(f"{what} must sum to 1 (within {TOL:g}), got sum {arr.sum():.6g}")
    return {n: round(float(v), DIGITS) for n, v in sorted(zip(names, arr))}


def _compositions(k: int, left: int) -> list[tuple[int, ...]]:
    """Every k-tuple of non-negative integers with sum <= left, in lexicographic order."""
    if k == 0:
        return [()]
    return [(c, *rest) for c in range(left + 1) for rest in _compositions(k - 1, left - c)]


def grid(k: int, resolution: int) -> np.ndarray:
    """All points with coordinates in {0, 1/r, ..., 1} summing to 1: C(r+k-1, k-1) rows, in the order of
    itertools.product over the first k-1 coordinates; built in time proportional to the rows (K = 32 too)."""
    pts = _compositions(k - 1, resolution)
    return np.array([[*c, resolution - sum(c)] for c in pts], dtype=float).reshape(-1, k) / resolution


def grid_size(k: int, resolution: int) -> int:
    return math.comb(resolution + k - 1, k - 1)


def finest_resolution(k: int, max_points: int) -> int:
    """The finest simplex grid with at most max_points points (at least resolution 1)."""
    r = 1
    while grid_size(k, r + 1) <= max_points:
        r += 1
    return r


def dirichlet(rng: np.random.Generator, center: np.ndarray, concentration: float, n: int) -> np.ndarray:
    """Samples around `center` (RegMix-style prior); concentration -> inf collapses onto the center."""
    alpha = np.maximum(np.asarray(center, dtype=float) * concentration, 1e-3)
    return rng.dirichlet(alpha, n)


def token_proportional(token_counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(token_counts.values())
    return {d: token_counts[d] / total for d in sorted(token_counts)}
