"""Plots of a function on the mixture simplex: K=2 a curve, K=3 a ternary heatmap (tricontourf on barycentric
coordinates). K>=4: U on one panel per pair of domains (i, j) over the triangle a_i + a_j <= 1, each point the
maximum over the other domains' weights (the best U reachable with those two weights); below, one panel per
objective with its profile along each domain's weight (the best score reachable at that weight), so that each
capability is one readable panel instead of a row of K(K-1)/2."""

from __future__ import annotations

import itertools

import numpy as np

SQRT3_2 = np.sqrt(3) / 2


def ternary(alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric -> plane: domain 0 at (0, 0), domain 1 at (1, 0), domain 2 at (1/2, sqrt(3)/2)."""
    a = np.atleast_2d(alphas)
    return a[:, 1] + 0.5 * a[:, 2], SQRT3_2 * a[:, 2]


def project(alphas: np.ndarray, values: np.ndarray, *dims: int, resolution: int):
    """Grid values projected on the weights of `dims`: (the distinct weight tuples, the maximum of `values` over
    the points sharing each)."""
    key = np.rint(np.asarray(alphas)[:, list(dims)] * resolution).astype(int)
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


def plot(
    path,
    alphas: np.ndarray,
    values: dict[str, np.ndarray],
    names: list[str],
    resolution: int,
    alpha_star: np.ndarray,
    specialists: dict[str, np.ndarray],
) -> None:
    import matplotlib.pyplot as plt

    k = len(names)
    if k >= 4:
        return _plot_many(path, alphas, values, names, resolution, alpha_star, specialists)
    objectives = list(values)
    fig, axes = plt.subplots(1, len(objectives), figsize=(3.3 * len(objectives), 3.0), squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.18, top=0.8, wspace=0.35)
    for ax, obj in zip(axes[0], objectives):
        v, spec = 100 * np.asarray(values[obj]), specialists.get(obj)
        if k == 2:
            order = np.argsort(alphas[:, 0])
            ax.plot(alphas[order, 0], v[order], "-")
            ax.axvline(alpha_star[0], color="black", ls=":", label="α* (U)")
            if spec is not None:
                ax.axvline(spec[0], color="red", ls="--", label="specialist")
            ax.set_xlabel(f"α ({names[0]}; {names[1]} = 1 − α)", fontsize=8)
            ax.set_ylabel(f"{_what(obj)} (x100 above chance)", fontsize=8)
        else:
            x, y = ternary(alphas)
            cs = ax.tricontourf(x, y, v, levels=_levels(v), cmap="viridis")
            ax.plot([0, 1, 0.5, 0], [0, 0, SQRT3_2, 0], "k-", lw=0.8)
            for name, (px, py), ha in zip(
                names, [(0, 0), (1, 0), (0.5, SQRT3_2)], ("right", "left", "center")
            ):
                ax.annotate(
                    name,
                    (px, py),
                    xytext=(0, -10 if py == 0 else 4),
                    textcoords="offset points",
                    ha=ha,
                    fontsize=8,
                )
            _mark(ax, ternary(alpha_star), None if spec is None else ternary(spec))
            ax.set_aspect("equal")
            ax.axis("off")
            fig.colorbar(cs, ax=ax, shrink=0.8, format="%.1f").set_label(
                f"{_what(obj)} (x100 above chance)", fontsize=8
            )
        ax.set_title(obj, fontsize=9, pad=14 if k == 3 else 6)
    axes[0][0].legend(fontsize=7, loc="upper right")
    view = "along the edge" if k == 2 else "over the simplex"
    fig.suptitle(f"U and capability scores {view}; α* (star) and specialists (triangles)", fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _what(obj: str) -> str:
    return "U" if obj == "U" else f"{obj} score"


def _plot_many(path, alphas, values, names, resolution, alpha_star, specialists) -> None:
    """K >= 4: U over every pair of domains (top row), each objective's profiles along every domain (bottom)."""
    import matplotlib.pyplot as plt

    pairs, objectives = list(itertools.combinations(range(len(names)), 2)), list(values)
    cols = max(len(pairs), len(objectives))
    fig = plt.figure(figsize=(3.0 * cols, 6.6))
    grid = fig.add_gridspec(2, cols, hspace=0.45, wspace=0.35, left=0.05, right=0.93, bottom=0.14, top=0.88)
    u, spec = 100 * np.asarray(values["U"]), specialists.get("U")
    levels = _levels(u)
    top = [fig.add_subplot(grid[0, c]) for c in range(len(pairs))]
    for ax, (i, j) in zip(top, pairs):
        xy, best = project(alphas, u, i, j, resolution=resolution)
        cs = ax.tricontourf(xy[:, 0], xy[:, 1], best, levels=levels, cmap="viridis")
        ax.plot([0, 1, 0, 0], [0, 0, 1, 0], "k-", lw=0.8)
        _mark(ax, alpha_star[[i, j]], None if spec is None else spec[[i, j]])
        ax.set_xlabel(f"α {names[i]}", fontsize=8)
        ax.set_ylabel(f"α {names[j]}", fontsize=8)
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
        ax.set_aspect("equal")
        ax.set_title(f"U: α {names[i]} vs α {names[j]}", fontsize=9)
    top[0].legend(fontsize=7, loc="upper right")
    fig.colorbar(cs, ax=top, shrink=0.8, format="%.1f").set_label(
        "best U at these two weights (x100 above chance)", fontsize=8
    )
    colours = plt.get_cmap("tab10")
    for c, obj in enumerate(objectives):
        ax = fig.add_subplot(grid[1, c])
        for d, name in enumerate(names):
            x, best = project(alphas, 100 * np.asarray(values[obj]), d, resolution=resolution)
            ax.plot(x[:, 0], best, "-", color=colours(d), lw=1.4, label=name)
            ax.axvline(alpha_star[d], color=colours(d), ls=":", lw=0.8)
        ax.set_xlabel("weight of the domain", fontsize=8)
        ax.set_ylabel(f"best {_what(obj)} (x100 above chance)", fontsize=8)
        ax.set_title(f"{obj}: profile along each domain", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.axes[-1].legend(
        fontsize=7,
        title="domain (dotted: its α*)",
        title_fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.02, 0.5),
    )
    fig.suptitle(
        "Landscape: U over each pair of domains (max over the rest); α* (star), U's specialist (triangle); "
        "below, every objective's best score along each domain's weight",
        fontsize=10,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
