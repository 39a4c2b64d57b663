"""Strategy comparison: each job finds a mixture with one strategy (a merge back-end or a training baseline),
trains it at the mid-training budget, and writes result.json; `aggregate` turns a sweep of jobs into
comparison.{json,md} and a best-so-far-vs-cost plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mergemix.artifacts import write_atomic

if TYPE_CHECKING:
    from mergemix.pipeline import Pipeline


def run_strategy(pipe: Pipeline) -> dict:
    from mergemix.search.baselines import baseline_mixture, proxy_study_path

    cfg, names = pipe.cfg, pipe.domain_names
    kind = cfg["baseline"]["kind"]
    if kind == "none":
        search = pipe.search_result
        alpha, cost = search["alpha_star"], search["cost"]
        with open(pipe.search_dir / "cost_curve.csv") as fh:
            curve = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    else:
        spec = {**cfg["search"], **cfg["baseline"], "baseline": kind}
        alpha, cost = baseline_mixture(
            pipe, spec, pipe.search_seed, proxy_study_path(pipe, spec, pipe.search_seed)
        )
        curve = cost.pop("curve", [])
    total = sum(float(alpha[n]) for n in names)
    alpha = {n: float(alpha[n]) / total for n in names}  # rounding in files may leave the sum 1e-6 off
    label = (
        cfg["strategy"] if kind == "none" else kind
    )  # what ran: a baseline chosen directly is not "surrogate"
    trained = pipe.evaluate_checkpoint(pipe.train_mixture(alpha, label))
    result = {
        "strategy": label,
        "seed": pipe.search_seed,
        "alpha": alpha,
        "U": trained["U"],
        "U_std": trained["U_std"],
        "capabilities": trained["capabilities"],
        "cost": cost,
        "curve": curve,
    }
    write_atomic(pipe.run_dir / "result.json", json.dumps(result, indent=2, default=float))
    if cfg["logger"].get("kind") == "wandb":
        log_to_wandb(
            cfg["logger"],
            result,
            group=pipe.tracker.group,
            out_dir=pipe.run_dir,
            identity=pipe.tracker.identity,
        )
    return result


CURVE_KEYS = {
    "utility": "U",
    "best_so_far": "best_U",
    "evaluations": "cost/evaluations",
    "flops": "cost/flops",
    "train_tokens": "cost/train_tokens",
    "wall_s": "cost/wall_s",
}  # a curve point's keys, as tracked


def tracked_point(point: dict) -> dict:
    """A search-curve point in the runs' vocabulary: U, best_U, alpha/<domain>, score/<capability>, cost/*."""
    out = {}
    for k, v in point.items():
        k = "score/" + k.removeprefix("capability/") if k.startswith("capability/") else k
        out[CURVE_KEYS.get(k, k if "/" in k else "search/" + k)] = v
    return out


def log_to_wandb(
    logger_cfg: dict, result: dict, group: str, out_dir: Path, identity: dict | None = None
) -> Path:
    """One W&B run per (strategy, seed), job type `compare`, in its job's group: every trial's alpha, scores, U
    and cumulative cost as a step; the trained U, scores, mixture and search cost in the summary, under the names
    stage runs use (U, score/*, mixture/*, cost/*), so one table or chart holds both. Returns the run's local
    directory."""
    from mergemix.loggers import flat, open_run

    config = {**(identity or {}), "strategy": result["strategy"], "search_seed": result["seed"]}
    with open_run(
        {**logger_cfg, "kind": "wandb"},
        out_dir,
        group,
        f"{result['strategy']}-seed{result['seed']}",
        "compare",
        config,
    ) as run:
        run.history_only("alpha/*")  # a trial's mixture; the chosen one is mixture/*
        for point in result["curve"]:
            run.log(tracked_point(point), step=int(point["evaluations"]))
        run.summary(
            {
                "U": result["U"],
                "U_std": result.get("U_std"),
                **flat("score", result["capabilities"]),
                **flat("mixture", result["alpha"]),
                **flat("cost", {k: v for k, v in result["cost"].items() if isinstance(v, (int, float))}),
            }
        )
        return Path(run.run.dir).parent


def aggregate(sweep_dir: Path) -> dict:
    results = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("*/result.json"))]
    by = {}
    for r in results:
        by.setdefault(r["strategy"], []).append(r)
    proxy_tokens = np.mean([r["cost"]["train_tokens"] for r in by.get("proxy", [])] or [np.nan])
    table = {}
    for s, rs in sorted(by.items()):
        u = np.array([r["U"] for r in rs])
        tokens = float(np.mean([r["cost"]["train_tokens"] for r in rs]))
        table[s] = {
            "seeds": [r["seed"] for r in rs],
            "U_mean": float(u.mean()),
            "U_std": float(u.std()),
            "train_tokens": tokens,
            "flops": float(np.mean([r["cost"]["flops"] for r in rs])),
            "evaluations": float(np.mean([r["cost"]["evaluations"] for r in rs])),
            "wall_s": float(np.mean([r["cost"]["wall_s"] for r in rs])),
            "cost_ratio_to_proxy": tokens / proxy_tokens if np.isfinite(proxy_tokens) and tokens else None,
        }
    write_atomic(Path(sweep_dir) / "comparison.json", json.dumps(table, indent=2))
    lines = [
        "Trained U of each strategy's mixture (x100 above chance, mean ± std over seeds) and its search cost.",
        "",
        "| strategy | seeds | trained U | training tokens | FLOPs | evaluations | tokens / proxy search |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, t in sorted(table.items(), key=lambda kv: -kv[1]["U_mean"]):
        ratio = "—" if t["cost_ratio_to_proxy"] is None else f"{t['cost_ratio_to_proxy']:.3f}"
        lines.append(
            f"| {s} | {len(t['seeds'])} | {100 * t['U_mean']:.2f} ± {100 * t['U_std']:.2f} | "
            f"{t['train_tokens']:.3g} | {t['flops']:.3g} | {t['evaluations']:.0f} | {ratio} |"
        )
    write_atomic(Path(sweep_dir) / "comparison.md", "\n".join(lines) + "\n")
    _plot_curves(Path(sweep_dir) / "cost_curves.png", by)
    return table


def _plot_curves(path: Path, by: dict) -> None:
    import matplotlib.pyplot as plt

    fig = draw_curves(by)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seed_band(runs: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best-so-far U (x100) of each seed's curve on the FLOPs of all of them (a step function, NaN before a seed's
    first trial): (flops, mean, min, max) over the seeds."""
    curves = [r["curve"] for r in runs if r["curve"]]
    x = np.unique([c["flops"] for curve in curves for c in curve])
    ys = []
    for curve in curves:
        fx, fy = np.array([c["flops"] for c in curve]), np.array([100 * c["best_so_far"] for c in curve])
        i = np.searchsorted(fx, x, side="right") - 1
        ys.append(np.where(i >= 0, fy[np.clip(i, 0, None)], np.nan))
    y = np.array(ys)
    return x, np.nanmean(y, axis=0), np.nanmin(y, axis=0), np.nanmax(y, axis=0)


def draw_curves(by: dict):
    """Best-so-far objective vs cumulative FLOPs: merge searches (merged U) and proxy searches (U of small trained
    proxies) in separate panels, as their objectives differ; per strategy the mean over seeds and a band from the
    lowest to the highest seed. Returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator

    proxies = {"proxy", "regmix"}  # training baselines: their objective is a proxy run's U
    panels = [
        ("merge searches: best merged U so far", [s for s in sorted(by) if s not in proxies]),
        ("proxy searches: best proxy-trained U so far", [s for s in sorted(by) if s in proxies]),
    ]
    panels = [(t, ss) for t, ss in panels if any(r["curve"] for s in ss for r in by[s])]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.2), squeeze=False)
    for ax, (title, strategies) in zip(axes[0], panels):
        for s in strategies:
            n = sum(1 for r in by[s] if r["curve"])
            if not n:
                continue
            x, mean, lo, hi = seed_band(by[s])
            colour = f"C{sorted(by).index(s)}"
            label = f"{s} (mean of {n} seeds, band: min–max)" if n > 1 else f"{s} (1 seed)"
            ax.step(x, mean, where="post", color=colour, lw=1.6, label=label)
            if n > 1:
                ax.fill_between(x, lo, hi, step="post", color=colour, alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(numticks=6))
        ax.set_xlabel("cumulative compute (FLOPs, training + evaluation; log scale)")
        ax.set_ylabel("best-so-far U (x100 above chance)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Search objective vs compute, per strategy over its seeds")
    fig.tight_layout()
    return fig
