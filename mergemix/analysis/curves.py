"""`mergemix curves`: the two-domain study (paper Sec. 4.2). Along the edge of the simplex between domains a and b,
the merge theta_base + alpha (theta_a - theta_base) + (1 - alpha)(theta_b - theta_base) is scored through the
search's evaluation cache, and the mixture lambda = alpha (weight alpha on a, 1 - alpha on b) is trained from the
base for mix.tokens per training seed (cached like `validate`'s runs: the same mixture and seed is one run).
Writes curves.json (every score, Spearman rho of merged vs trained along the curve per capability), curves.md and
curves.png (one panel per capability and U) into the run directory."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from mergemix.analysis import rank
from mergemix.artifacts import write_atomic
from mergemix.errors import MergeMixError
from mergemix.log import log

if TYPE_CHECKING:
    from mergemix.pipeline import Pipeline


def curve_domains(cfg: dict) -> list[str]:
    """The two domains of the curve (default: the first two configured, in canonical order), checked."""
    names, chosen = sorted(cfg["domains"]["sources"]), cfg["curves"]["domains"]
    if chosen is None:
        if len(names) < 2:
            raise MergeMixError(f"curves needs two configured domains, got {names}")
        return names[:2]
    if not isinstance(chosen, list) or len(chosen) != 2:
        raise MergeMixError(
            f"curves.domains must name two domains, e.g. [{', '.join(names[:2])}], got {chosen}"
        )
    unknown = [d for d in chosen if d not in names]
    if unknown:
        raise MergeMixError(f"curves.domains names unknown domains {unknown}; configured: {names}")
    if chosen[0] == chosen[1]:
        raise MergeMixError(f"curves.domains must be two different domains, got {chosen}")
    return list(chosen)


def check_config(cfg: dict) -> None:
    """Bad curve input fails here, before anything is built or trained."""
    c = cfg["curves"]
    curve_domains(cfg)
    alphas = list(c["alphas"] or [])
    outside = [a for a in alphas if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1]
    if outside:
        raise MergeMixError(
            f"curves.alphas must lie strictly inside (0, 1) (the ends are the experts), got {outside}"
        )
    if len(set(alphas)) < rank.MIN_TOP:
        raise MergeMixError(
            f"curves.alphas must hold at least {rank.MIN_TOP} distinct values (a rank correlation "
            f"along the curve needs 3 points), got {alphas}"
        )
    if len(set(alphas)) != len(alphas):
        raise MergeMixError(f"curves.alphas must be distinct, got {alphas}")
    seeds = list(c["seeds"] or [])
    if c["train"] and (not seeds or len(set(seeds)) != len(seeds)):
        raise MergeMixError(f"curves.seeds must be a non-empty list of distinct seeds, got {seeds}")
    if c["train"] and int(cfg["mix"]["tokens"]) <= 0:
        raise MergeMixError(
            f"mix.tokens (the budget each curve mixture is trained for) must be positive, "
            f"got {cfg['mix']['tokens']}"
        )


def _scores(result: dict) -> dict[str, float]:
    return {"overall": result["U"], **result["capabilities"]}


def _columns(rows: list[dict]) -> dict[str, list[float]]:
    return {s: [r[s] for r in rows] for s in rows[0]}


def run(pipe: Pipeline) -> dict:
    from mergemix.search.evalcache import EvalCache
    from mergemix.search.run import MergeObjective

    c, names = pipe.cfg["curves"], pipe.domain_names
    a, b = curve_domains(pipe.cfg)
    alphas = sorted(float(x) for x in c["alphas"])
    mixtures = [
        {n: round(x, 12) if n == a else round(1 - x, 12) if n == b else 0.0 for n in names} for x in alphas
    ]
    objective = MergeObjective(pipe, EvalCache(pipe.merge_cache_path))
    merged = [objective([m[n] for n in names]) for m in mixtures]
    seeds = [pipe.search_seed + int(s) for s in c["seeds"]] if c["train"] else []
    trained, paths = {s: [] for s in seeds}, {s: [] for s in seeds}
    for i, m in enumerate(mixtures):
        for s in seeds:
            paths[s].append(pipe.train_mixture(m, f"curve{i:02d}", seed=s))
            trained[s].append(pipe.evaluate_checkpoint(paths[s][-1]))
            log.info(
                f"curves: {a}={alphas[i]:.2f} {b}={1 - alphas[i]:.2f} seed {s}: trained U "
                f"{100 * trained[s][-1]['U']:.2f}, merged U {100 * merged[i]['U']:.2f}"
            )

    pred = _columns([_scores(r) for r in merged])
    refs = {s: _columns([_scores(r) for r in trained[s]]) for s in seeds}
    rho = None
    if seeds:  # averaged over the training seeds; no bootstrap over 3-9 points
        rho = {
            k: v
            for k, v in rank.compare(pred, list(refs.values()), 0, pipe.search_seed)["spearman"].items()
            if k != "interval"
        }

    def raw(r: dict) -> dict:
        return {k: r[k] for k in ("U", "U_std", "capabilities", "capabilities_std")}

    out = {
        "domains": [a, b],
        "alphas": alphas,
        "metric": pipe.cfg["benchmarks"]["metric"],
        "mix_tokens": int(pipe.cfg["mix"]["tokens"]) if seeds else None,
        "training_seeds": seeds,
        "mixtures": mixtures,
        "merged": pred,
        "trained": {str(s): refs[s] for s in seeds},
        "spearman": rho,
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
    write_atomic(pipe.run_dir / "curves.json", json.dumps(out, indent=2))
    write_atomic(pipe.run_dir / "curves.md", markdown(out))
    plot(pipe.run_dir / "curves.png", out)
    return out


def _label(s: str) -> str:
    return "U" if s == "overall" else s


def _rho(out: dict, s: str) -> float | None:
    r = out["spearman"]
    return None if r is None else r["overall"] if s == "overall" else r["capabilities"][s]


def _f(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def markdown(out: dict) -> str:
    a, b = out["domains"]
    series, seeds = list(out["merged"]), list(out["trained"])
    mean_trained = (
        {s: np.mean([out["trained"][k][s] for k in seeds], axis=0) for s in series} if seeds else {}
    )
    what = (
        (
            f"trained = mixture lambda = alpha from the base for {out['mix_tokens']:,} tokens, mean over training "
            f"seeds {out['training_seeds']}"
        )
        if seeds
        else "not trained (curves.train=false)"
    )
    lines = [
        (
            f"Two-domain curve {a}-{b}: merge = base + alpha tau_{a} + (1 - alpha) tau_{b}; {what}. "
            f"Scores x100 (`{out['metric']}`), merged / trained."
        ),
        "",
        "| alpha | " + " | ".join(_label(s) for s in series) + " |",
        "|---|" + "---|" * len(series),
    ]
    for i, x in enumerate(out["alphas"]):
        cells = [
            f"{100 * out['merged'][s][i]:.2f}" + (f" / {100 * mean_trained[s][i]:.2f}" if seeds else "")
            for s in series
        ]
        lines.append(f"| {x:.2f} | " + " | ".join(cells) + " |")
    if seeds:
        lines.append("| Spearman rho | " + " | ".join(_f(_rho(out, s)) for s in series) + " |")
    return "\n".join(lines) + "\n"


def plot(path, out: dict) -> None:
    import matplotlib.pyplot as plt

    a, b = out["domains"]
    series, x = list(out["merged"]), np.asarray(out["alphas"])
    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 3.2), squeeze=False)
    for ax, s in zip(axes[0], series):
        ax.plot(x, 100 * np.asarray(out["merged"][s]), "o-", label="merged")
        for (seed, ref), marker in zip(out["trained"].items(), "sD^vx"):
            ax.plot(x, 100 * np.asarray(ref[s]), marker=marker, ls="--", label=f"trained (seed {seed})")
        rho = _rho(out, s)
        ax.set_title(_label(s) + ("" if rho is None else f": ρ = {rho:.2f}"), fontsize=9)
        ax.set_xlabel(f"α ({a}; {b} = 1 − α)", fontsize=8)
    axes[0][0].set_ylabel(f"score x100 ({out['metric']})", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Merged vs trained along the {a}-{b} edge", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
