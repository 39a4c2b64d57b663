"""Seed design: a coarse simplex grid (vertices included) plus Dirichlet samples around prior mixtures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mergemix.simplex import dirichlet, grid, grid_size


def seed_mixtures(
    names: Sequence[str],
    n: int,
    resolution: int,
    priors: Sequence[Mapping[str, float]],
    concentration: float,
    seed: int,
) -> np.ndarray:
    """n distinct mixtures: the finest grid of at most `resolution` that uses <= n/2 points, the uniform point
    and each prior, then Dirichlet samples alternating around the priors and the uniform point."""
    k = len(names)
    r = max(1, resolution)
    while r > 1 and grid_size(k, r) > n // 2:
        r -= 1
    centers = [np.full(k, 1.0 / k)] + [np.array([p[d] for d in names], dtype=float) for p in priors]
    points = list(grid(k, r)) + centers
    rng = np.random.default_rng(seed)
    i = 0
    while len(points) < 4 * n:
        points.extend(dirichlet(rng, centers[i % len(centers)], concentration * k, 1))
        i += 1
    out, seen = [], set()
    for p in points:
        key = tuple(np.round(p, 4))
        if key not in seen:
            seen.add(key)
            out.append(np.asarray(p) / np.sum(p))
        if len(out) == n:
            break
    return np.array(out)
