"""Plots of a function on the mixture simplex: K=2 a curve, K=3 a ternary heatmap (tricontourf on barycentric
coordinates), K>=4 one panel per pair of domains (i, j) over the triangle a_i + a_j <= 1, each point the maximum
over the other domains' weights (the best score reachable with those two weights)."""

from __future__ import annotations

import itertools

import numpy as np

SQRT3_2 = np.sqrt(3) / 2


def ternary(alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric -> plane: domain 0 at (0, 0), domain 1 at (1, 0), domain 2 at (1/2, sqrt(3)/2)."""
    a = np.atleast_2d(alphas)
    return a[:, 1] + 0.5 * a[:, 2], SQRT3_2 * a[:, 2]


def project(alphas: np.ndarray, values: np.ndarray, i: int, j: int, resolution: int):
    """Grid values projected on the (a_i, a_j) plane: the maximum over the points sharing those two weights."""
    key = np.rint(np.asarray(alphas)[:, [i, j]] * resolution).astype(int)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    best = np.full(len(uniq), -np.inf)
    np.maximum.at(best, inv.reshape(-1), np.asarray(values, dtype=float))
    return uniq / resolution, best


def _levels(v: np.ndarray) -> np.ndarray:
    """Colour levels just beyond the range: tricontourf leaves flat regions at exactly a bounding level blank
    (tree regressors have plateaus)."""
    lo, hi = float(np.min(v)), float(np.max(v))
    pad = max(1e-3 * (hi - lo), 1e-9 * max(1.0, abs(hi)))
    return np.linspace(lo - pad, hi + pad, 15)


def _mark(ax, xy_star, xy_spec) -> None:
    ax.plot(*xy_star, "*", ms=12, mfc="white", mec="black", label="α* (U)")
    if xy_spec is not None:
        ax.plot(*xy_spec, "^", ms=8, mfc="white", mec="red", label="specialist")


def plot(path, alphas: np.ndarray, values: dict[str, np.ndarray], names: list[str], resolution: int,
         alpha_star: np.ndarray, specialists: dict[str, np.ndarray]) -> None:
    import matplotlib.pyplot as plt

    k, objectives = len(names), list(values)
    views = list(itertools.combinations(range(k), 2)) if k >= 4 else [None]
    rows, cols = (len(objectives), len(views)) if k >= 4 else (1, len(objectives))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.1, top=0.9, hspace=0.45, wspace=0.35)
    for n, obj in enumerate(objectives):
        v, spec = 100 * np.asarray(values[obj]), specialists.get(obj)
        levels = _levels(v)
        row_axes = axes[n] if k >= 4 else [axes[0][n]]
        for ax, view in zip(row_axes, views):
            if k == 2:
                order = np.argsort(alphas[:, 0])
                ax.plot(alphas[order, 0], v[order], "-")
                ax.axvline(alpha_star[0], color="black", ls=":", label="α* (U)")
                if spec is not None:
                    ax.axvline(spec[0], color="red", ls="--", label="specialist")
                ax.set_xlabel(f"α ({names[0]}; {names[1]} = 1 − α)", fontsize=8)
                cs = None
            elif k == 3:
                x, y = ternary(alphas)
                cs = ax.tricontourf(x, y, v, levels=levels, cmap="viridis")
                ax.plot([0, 1, 0.5, 0], [0, 0, SQRT3_2, 0], "k-", lw=0.8)
                for name, (px, py), ha in zip(names, [(0, 0), (1, 0), (0.5, SQRT3_2)], ("right", "left", "center")):
                    ax.annotate(name, (px, py), xytext=(0, -10 if py == 0 else 4), textcoords="offset points",
                                ha=ha, fontsize=8)
                _mark(ax, ternary(alpha_star), None if spec is None else ternary(spec))
                ax.set_aspect("equal")
                ax.axis("off")
            else:
                i, j = view
                xy, best = project(alphas, v, i, j, resolution)
                cs = ax.tricontourf(xy[:, 0], xy[:, 1], best, levels=levels, cmap="viridis")
                ax.plot([0, 1, 0, 0], [0, 0, 1, 0], "k-", lw=0.8)
                _mark(ax, alpha_star[[i, j]], None if spec is None else spec[[i, j]])
                ax.set_xlabel(f"α {names[i]}", fontsize=8)
                ax.set_ylabel(f"α {names[j]}", fontsize=8)
                ax.set_xticks([0, 0.5, 1])
                ax.set_yticks([0, 0.5, 1])
                ax.set_aspect("equal")
            ax.set_title(obj if k < 4 else f"{obj}: max over the rest", fontsize=9)
        if cs is not None:
            what = "U" if obj == "U" else f"{obj} score"
            fig.colorbar(cs, ax=list(row_axes), shrink=0.8, format="%.1f").set_label(
                f"{what} (x100 above chance)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper right")
    view = {2: "along the edge", 3: "over the simplex"}.get(k, "projected on each pair of domains (max over the rest)")
    fig.suptitle(f"U and capability scores {view}; α* (star) and specialists (triangles)", fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)
