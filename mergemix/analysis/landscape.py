"""`mergemix landscape`: U and each capability over the mixture simplex, and the specialist mixtures.

source=surrogate: the search's seed merges (seeds.csv) refit with the search's own LightGBM settings and seed
(search/surrogate.py; for the surrogate back-end this reproduces its regressors and its alpha*), predicted on a
fine simplex grid: no new merge. source=merge: real merges on a coarse grid, through the evaluation cache.
Specialists: each capability's argmax on its regressor, by the search's own fine search with that capability as
the objective (what `search.objective=<capability>` runs), next to the macro alpha*.
Writes landscape.json, landscape.md and landscape.png (K=2: curves; K=3: ternary heatmaps; K>=4: one panel per
pair of domains, each point the maximum over the other domains' weights) into the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mergemix.analysis.landscape_plot import plot
from mergemix.artifacts import write_atomic
from mergemix.errors import MergeMixError
from mergemix.log import log
from mergemix.search.run import read_trials
from mergemix.search.surrogate import Surrogate, fine_search, utility
from mergemix.simplex import finest_resolution, grid

if TYPE_CHECKING:
    from mergemix.pipeline import Pipeline

MAX_SURROGATE_POINTS = 10_000  # the default fine grid: predictions are cheap, the plot stays readable
MIN_SEEDS = 3


def check_config(cfg: dict) -> None:
    """Bad landscape input fails here, before anything is built."""
    if len(cfg["domains"]["sources"]) < 2:
        raise MergeMixError("landscape needs at least two configured domains")


def resolution(cfg: dict, k: int) -> int:
    """landscape.resolution, or by default the finest grid of 10,000 points (surrogate) or of at most
    search.budget points (merge: as many new merges as the search itself spent, at most)."""
    ls = cfg["landscape"]
    if ls["resolution"] is not None:
        return int(ls["resolution"])
    return finest_resolution(
        k, MAX_SURROGATE_POINTS if ls["source"] == "surrogate" else int(cfg["search"]["budget"])
    )


def read_seeds(path: Path, names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The search's evaluated merges: alphas [N, K] and capability scores."""
    alphas, columns = read_trials(path, names)
    return alphas, {c: v for c, v in columns.items() if c not in ("U", "U_std")}


def fit_surrogate(pipe: Pipeline) -> tuple[Surrogate, np.ndarray]:
    """The search's regressors refit on its seed merges, with its LightGBM settings and seed."""
    alphas, scores = read_seeds(pipe.search_dir / "seeds.csv", pipe.domain_names)
    if len(alphas) < MIN_SEEDS:
        raise MergeMixError(
            f"the search (back-end '{pipe.cfg['search']['backend']}') left {len(alphas)} seed "
            f"merges; the landscape's surrogates need at least {MIN_SEEDS}: use another back-end, "
            f"or landscape.source=merge landscape.specialists=false"
        )
    return Surrogate(pipe.cfg["search"]["lgbm"], pipe.search_seed).fit(alphas, scores), alphas


def _predicted(surrogate: Surrogate, alpha) -> dict[str, float]:
    pred = {c: float(v[0]) for c, v in surrogate.predict(np.asarray(alpha, dtype=float)).items()}
    return {**pred, "U": float(utility(pred))}


def specialists(pipe: Pipeline, surrogate: Surrogate, seed_alphas: np.ndarray) -> dict[str, dict]:
    """{objective: {"mixture", "predicted"}}: the search's fine search on the regressors with U ("U") or one
    capability as the objective."""
    s, names = pipe.cfg["search"], pipe.domain_names
    out = {}
    for name, objective in [("U", "macro"), *((c, c) for c in sorted(surrogate.models))]:
        alpha, _ = fine_search(
            surrogate,
            len(names),
            int(s["n_candidates"]),
            int(s["top_k"]),
            pipe.search_seed,
            objective,
            extra=seed_alphas,
        )
        out[name] = {
            "mixture": dict(zip(names, map(float, alpha))),
            "predicted": _predicted(surrogate, alpha),
        }
    return out


def merged_values(pipe: Pipeline, points: np.ndarray) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    from mergemix.search.evalcache import EvalCache
    from mergemix.search.run import MergeObjective

    objective = MergeObjective(pipe, EvalCache(pipe.merge_cache_path))
    results = [objective(a) for a in tqdm(points, desc="landscape: grid merges", unit="merge")]
    caps = sorted(results[0]["capabilities"])
    return {
        "U": np.array([r["U"] for r in results]),
        **{c: np.array([r["capabilities"][c] for r in results]) for c in caps},
    }


def run(pipe: Pipeline) -> dict:
    ls, names = pipe.cfg["landscape"], pipe.domain_names
    r = resolution(pipe.cfg, len(names))
    points = grid(len(names), r)
    alpha_star = np.array([pipe.alpha_star[n] for n in names])
    alpha_star = alpha_star / alpha_star.sum()  # stored rounded to 6 decimals
    surrogate = seed_alphas = None
    if ls["source"] == "surrogate" or ls["specialists"]:
        surrogate, seed_alphas = fit_surrogate(pipe)
    if ls["source"] == "surrogate":
        pred = surrogate.predict(points)
        values = {"U": utility(pred), **{c: pred[c] for c in sorted(pred)}}
    else:
        log.info(f"landscape: {len(points)} merges at resolution 1/{r}")
        values = merged_values(pipe, points)
    best = {o: int(np.argmax(v)) for o, v in values.items()}
    out = {
        "domains": names,
        "source": ls["source"],
        "resolution": r,
        "n_points": len(points),
        "metric": pipe.cfg["benchmarks"]["metric"],
        "projection": "max over the other domains' weights",
        "alpha_star": dict(zip(names, map(float, alpha_star))),
        "alpha_star_verified": pipe.search_result["verified"],
        "alpha_star_predicted": _predicted(surrogate, alpha_star) if surrogate else None,
        "summary": {
            o: {
                "min": float(v.min()),
                "max": float(v.max()),
                "argmax": dict(zip(names, map(float, points[best[o]]))),
            }
            for o, v in values.items()
        },
        "specialists": specialists(pipe, surrogate, seed_alphas) if ls["specialists"] else None,
        "grid": {
            "alphas": np.round(points, 6).tolist(),
            "values": {o: np.round(v, 6).tolist() for o, v in values.items()},
        },
    }
    pipe.run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(pipe.run_dir / "landscape.json", json.dumps(out, indent=2))
    write_atomic(pipe.run_dir / "landscape.md", markdown(out))
    plot(
        pipe.run_dir / "landscape.png",
        points,
        values,
        names,
        r,
        alpha_star,
        {o: np.array([s["mixture"][n] for n in names]) for o, s in (out["specialists"] or {}).items()},
    )
    return out


def _mix(m: dict[str, float]) -> str:
    return " ".join(f"{d}={w:.2f}" for d, w in m.items())


def markdown(out: dict) -> str:
    k = len(out["domains"])
    src = (
        "the search's LightGBM regressors refit on its seed merges (no new merge)"
        if out["source"] == "surrogate"
        else "real merges"
    )
    proj = (
        " Figure: one panel per pair of domains, each point the maximum over the other domains' weights."
        if k >= 4
        else ""
    )
    lines = [
        (
            f"Landscape over the simplex of {', '.join(out['domains'])} from {src}: grid step 1/{out['resolution']}"
            f" ({out['n_points']} points), scores x100 (`{out['metric']}`).{proj}"
        ),
        "",
        "| objective | min | max | argmax on the grid |",
        "|---|---|---|---|",
    ]
    for o, s in out["summary"].items():
        lines.append(f"| {o} | {100 * s['min']:.2f} | {100 * s['max']:.2f} | {_mix(s['argmax'])} |")
    spec = out["specialists"]
    if spec:
        caps = [c for c in spec if c != "U"]
        lines += [
            "",
            (
                "Specialist mixtures: each objective's argmax on the regressors (the search's fine search with "
                "that objective); predicted scores x100 at each mixture."
            ),
            "",
            "| objective | mixture | " + " | ".join(caps) + " | U |",
            "|---|---|" + "---|" * (len(caps) + 1),
        ]
        rows = [("U: alpha* (search)", out["alpha_star"], out["alpha_star_predicted"])]
        rows += [
            (o if o != "U" else "U: regressors' argmax", s["mixture"], s["predicted"])
            for o, s in spec.items()
        ]
        for label, mix, pred in rows:
            lines.append(
                f"| {label} | {_mix(mix)} | "
                + " | ".join(f"{100 * pred[c]:.2f}" for c in caps)
                + f" | {100 * pred['U']:.2f} |"
            )
    v = out["alpha_star_verified"]
    lines += ["", f"alpha* verified by a real merge: U {100 * v['U']:.2f} ± {100 * v['U_std']:.2f}."]
    return "\n".join(lines) + "\n"
