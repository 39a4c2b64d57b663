"""`mergemix validate`: do merged models rank mixtures the way models really trained on them do? (Table 2)

N mixtures (seeded by search_seed) are each trained from the base at the mixture budget once per training seed
(cached artifacts: a rerun, or a larger N, reuses every run already made) and evaluated; the merge at the same α
is scored through the search's evaluation cache (a merge already scored costs nothing). Merged vs trained and
trained seed vs trained seed (the noise ceiling) are compared with the rank metrics of `rank.py`, overall (U)
and per capability, for the benchmark metric in U, accuracy and the soft gold probability.
Writes validation.json, validation.md and validation.png into the run directory."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import numpy as np

from mergemix.analysis import rank
from mergemix.artifacts import write_atomic
from mergemix.errors import MergeMixError
from mergemix.log import log
from mergemix.simplex import grid, grid_size

if TYPE_CHECKING:
    from mergemix.pipeline import Pipeline

METRIC_NAMES = {"acc": "accuracy", "acc_norm": "length-normalised accuracy", "prob": "probability of gold"}


def check_config(cfg: dict) -> None:
    """Bad validation input fails here, before anything is trained."""
    v = cfg["validate"]  # numbers and the design: mergemix/schema.py
    seeds = list(v["seeds"] or [])
    if not seeds or len(set(seeds)) != len(seeds):
        raise MergeMixError(f"validate.seeds must be a non-empty list of distinct seeds, got {seeds}")


def sample_mixtures(k: int, n: int, design: str, seed: int) -> np.ndarray:
    """dirichlet: Dirichlet(1) draws, uniform over the simplex, drawn one by one so that the first n of a
    larger N are the same mixtures; grid: n points of the coarsest simplex grid that has n, in seeded order."""
    rng = np.random.default_rng(seed)
    if design == "dirichlet":
        return np.array([rng.dirichlet(np.ones(k)) for _ in range(n)])
    r = 1
    while grid_size(k, r) < n:
        r += 1
    return grid(k, r)[rng.permutation(grid_size(k, r))[:n]]


def series(result: dict, suite, metric: str) -> dict[str, float]:
    """U ("overall") and capability scores of an evaluation under `metric`, normalised against chance like
    the suite does (generation tasks keep their own metric). The normalisation is linear, so task means suffice.
    A calibrated merge (search.calibration) keeps its calibrated scores under the suite's own metric."""
    if "raw" in result and metric == suite.metric:
        return {"overall": result["U"], **result["capabilities"]}

    def task_score(t: str) -> float:
        task = suite.tasks[t]
        raw = result["tasks"][t][task.score_key if task.kind == "gen" else metric]
        return (raw - task.chance) / (1.0 - task.chance)

    caps = {c: float(np.mean([task_score(t) for t in ts])) for c, ts in suite.capabilities.items()}
    return {"overall": float(np.mean(list(caps.values()))), **caps}


def _columns(rows: list[dict]) -> dict[str, list[float]]:
    return {s: [r[s] for r in rows] for s in rows[0]}


def run(pipe: Pipeline) -> dict:
    from mergemix.search.run import objective_for

    v, names = pipe.cfg["validate"], pipe.domain_names
    alphas = sample_mixtures(len(names), int(v["n_mixtures"]), v["design"], pipe.search_seed)
    seeds = [pipe.search_seed + int(s) for s in v["seeds"]]
    objective = objective_for(pipe)  # the configured merge: scale and calibration included
    merged = [objective(a) for a in alphas]
    trained, paths = {s: [] for s in seeds}, {s: [] for s in seeds}
    for i, a in enumerate(alphas):
        ratios = dict(zip(names, map(float, a)))
        for s in seeds:
            t0 = time.time()
            paths[s].append(pipe.train_mixture(ratios, f"validate{i:02d}", seed=s))
            trained[s].append(pipe.evaluate_checkpoint(paths[s][-1]))
            mix = " ".join(f"{d}={w:.2f}" for d, w in ratios.items())
            log.info(
                f"validate: mixture {i + 1}/{len(alphas)} seed {s} ({mix}): trained U "
                f"{100 * trained[s][-1]['U']:.2f}, merged U {100 * merged[i]['U']:.2f} [{time.time() - t0:.1f}s]"
            )

    n_boot, primary = int(v["bootstrap"]), pipe.cfg["benchmarks"]["metric"]
    by_metric = {}
    for m in dict.fromkeys([primary, "acc", "prob"]):
        pred = _columns([series(r, pipe.suite, m) for r in merged])
        refs = {s: _columns([series(r, pipe.suite, m) for r in trained[s]]) for s in seeds}
        block = rank.compare(pred, list(refs.values()), n_boot, pipe.search_seed)
        # the noise ceiling: the first training seed as the predictor of the others
        block["noise_ceiling"] = (
            rank.compare(refs[seeds[0]], [refs[s] for s in seeds[1:]], n_boot, pipe.search_seed)
            if len(seeds) > 1
            else None
        )
        block["scores"] = {"merged": pred, "trained": {str(s): refs[s] for s in seeds}}
        by_metric[m] = block

    def raw(r: dict) -> dict:
        return {k: r[k] for k in ("U", "U_std", "capabilities", "capabilities_std", "tasks")}

    out = {
        "metric": primary,
        **{k: by_metric[primary][k] for k in (*rank.METRICS, "noise_ceiling")},
        "responsiveness": responsiveness(merged, trained),
        "by_metric": by_metric,
        "design": v["design"],
        "training_seeds": seeds,
        "bootstrap": n_boot,
        "top25_count": rank.top_count(len(alphas)),
        "mix_tokens": int(pipe.cfg["mix"]["tokens"]),
        "mixtures": [dict(zip(names, map(float, a))) for a in alphas],
        "raw": [
            {
                "merged": raw(merged[i]),
                "trained": {str(s): raw(trained[s][i]) for s in seeds},
                "checkpoints": {str(s): str(paths[s][i]) for s in seeds},
            }
            for i in range(len(alphas))
        ],
    }
    pipe.run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(pipe.run_dir / "validation.json", json.dumps(out, indent=2))
    write_atomic(pipe.run_dir / "validation.md", markdown(out))
    plot(
        pipe.run_dir / "validation.png", by_metric[primary]["scores"], by_metric[primary]["spearman"], primary
    )
    return out


def responsiveness(merged: list[dict], trained: dict[int, list[dict]]) -> dict:
    """Per capability: its spread across the mixtures (std, merged and trained) against its item noise (mean
    bootstrap std). A capability whose trained spread is within its noise does not respond to the mixture: it
    cannot be ranked, by merges or by anything else, and only adds noise to U."""
    out = {}
    runs = [r for rs in trained.values() for r in rs]
    for c in merged[0]["capabilities"]:
        noise = float(np.mean([r["capabilities_std"][c] for r in runs]))
        t_spread = float(np.mean([np.std([r["capabilities"][c] for r in rs]) for rs in trained.values()]))
        m_spread = float(np.std([r["capabilities"][c] for r in merged]))
        out[c] = {
            "trained_spread_std": t_spread,
            "merged_spread_std": m_spread,
            "item_noise_std": noise,
            "responsive": bool(t_spread > noise),
        }
    return out


def _f(x, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def _at(block: dict, metric: str, s: str) -> tuple:
    """(value, interval) of one metric for series s ("overall" or a capability)."""
    b = block[metric]
    return (
        (b["overall"], b["interval"]["overall"])
        if s == "overall"
        else (b["capabilities"][s], b["interval"]["capabilities"][s])
    )


def _ci(value_interval: tuple) -> str:
    v, (lo, hi) = value_interval
    return f"{_f(v)} [{_f(lo)}, {_f(hi)}]"


def markdown(out: dict) -> str:
    seeds = out["training_seeds"]
    lines = [
        (
            f"Rank consistency of merged vs trained models over {len(out['mixtures'])} mixtures ({out['design']}, "
            f"{out['mix_tokens']:,} training tokens each, training seeds {seeds}): merged vs each seed, averaged; "
            f"noise ceiling = seed {seeds[0]} vs the other seeds; [95% bootstrap interval over mixtures]; "
            f"top 25% = the reference's best {out['top25_count']}."
        )
    ]
    for m, b in out["by_metric"].items():
        lines += [
            "",
            f"### {METRIC_NAMES.get(m, m)} (`{m}`){' — in U' if m == out['metric'] else ''}",
            "",
            "| | ρ [CI] | τ | top-25% ρ | recovery | noise-ceiling ρ [CI] |",
            "|---|---|---|---|---|---|",
        ]
        nc = b["noise_ceiling"]
        for s in ["overall", *b["spearman"]["capabilities"]]:
            ceiling = "—" if nc is None else _ci(_at(nc, "spearman", s))
            lines.append(
                f"| {'overall (U)' if s == 'overall' else s} | {_ci(_at(b, 'spearman', s))} | "
                f"{_f(_at(b, 'kendall', s)[0])} | {_f(_at(b, 'top25_spearman', s)[0])} | "
                f"{_f(_at(b, 'capability_recovery', s)[0])} | {ceiling} |"
            )
    resp = out.get("responsiveness") or {}
    if resp:
        lines += [
            "",
            (
                "Spread across the mixtures (std, x100) against item noise: a capability whose trained "
                "spread is within its noise does not respond to the mixture."
            ),
            "",
            "| capability | trained spread | merged spread | item noise | responds |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c} | {100 * r['trained_spread_std']:.2f} | {100 * r['merged_spread_std']:.2f} | "
            f"{100 * r['item_noise_std']:.2f} | {'yes' if r['responsive'] else 'NO'} |"
            for c, r in resp.items()
        ]
    return "\n".join(lines) + "\n"


def plot(path, scores: dict, rho: dict, metric: str) -> None:
    import matplotlib.pyplot as plt

    fig = draw(scores, rho, metric)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw(scores: dict, rho: dict, metric: str):
    """validation.png: merged vs trained score of every mixture, per capability and U, one marker per training
    seed, Spearman ρ in each panel's title. Returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(scores["merged"])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, s in zip(axes[0], panels):
        y = 100 * np.asarray(scores["merged"][s])
        for (seed, ref), marker in zip(scores["trained"].items(), "os^vD"):
            ax.scatter(100 * np.asarray(ref[s]), y, marker=marker, s=18, alpha=0.8, label=f"seed {seed}")
        r = rho["overall"] if s == "overall" else rho["capabilities"][s]
        ax.set_title(f"{'U' if s == 'overall' else s}: ρ = {_f(r)}", fontsize=9)
        ax.set_xlabel("trained (x100)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"merged (x100, {metric})", fontsize=8)
    axes[0][0].legend(fontsize=7, title="training seed", title_fontsize=7)
    fig.suptitle(
        f"Rank consistency: merged vs really trained mixtures ({len(y)} mixtures, Spearman ρ)", fontsize=10
    )
    fig.tight_layout()
    return fig
