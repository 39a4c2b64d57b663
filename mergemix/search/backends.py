"""Search back-ends over the simplex. Each takes `evaluate(alpha) -> result` (merge + benchmarks, cached) and
`utility(result) -> float`, spends at most `budget` evaluations, and returns its proposed alpha*.

    surrogate  the paper's method: seed merges -> LightGBM per capability -> fine search on the regressors
    optuna     Optuna samplers (tpe, cmaes, gp, qmc, random) over the simplex parameterisation of space.py
    grid       an exhaustive simplex grid (small K)
    iterative  DeMix-style rounds: refit the surrogate, resample around the predicted optimum, repeat
    gradient   alpha = softmax(z) learned through a differentiable merge (gradient.py)"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from mergemix.errors import MergeMixError
from mergemix.registry import Registry
from mergemix.search.design import seed_mixtures
from mergemix.search.gradient import gradient_search
from mergemix.search.optuna_backend import optuna_search
from mergemix.search.surrogate import Surrogate, fine_search
from mergemix.search.surrogate import utility as surrogate_utility
from mergemix.search.types import Evaluate, Outcome
from mergemix.simplex import dirichlet, finest_resolution, grid


def _evaluate_all(evaluate: Evaluate, alphas: np.ndarray, desc: str, cfg: Mapping) -> list[dict]:
    """Every merge of a batch known in advance, in order; with search.n_workers > 1 local workers evaluate it into
    the shared cache first (fanout.py)."""
    workers = int(cfg.get("n_workers", 1))
    if workers > 1:
        if not hasattr(evaluate, "prefill"):
            raise MergeMixError("search.n_workers > 1 needs the search's shared evaluation cache")
        evaluate.prefill(alphas, workers)
    return [evaluate(a) for a in tqdm(alphas, desc=desc, unit="merge")]


def _fit_and_search(alphas: np.ndarray, results: list[dict], cfg: Mapping, seed: int) -> Outcome:
    caps = sorted(results[0]["capabilities"])
    surrogate = Surrogate(cfg["lgbm"], seed).fit(
        alphas, {c: [r["capabilities"][c] for r in results] for c in caps}
    )
    alpha, predicted = fine_search(
        surrogate,
        alphas.shape[1],
        int(cfg["n_candidates"]),
        int(cfg["top_k"]),
        seed,
        cfg["objective"],
        extra=alphas,
    )
    predicted["U"] = float(surrogate_utility(predicted, cfg["objective"]))
    return Outcome(alpha, predicted, {"alphas": alphas, "results": results})


def surrogate_design(names: Sequence[str], cfg: Mapping, seed: int, priors: list[dict]) -> np.ndarray:
    """The N seed mixtures: a coarse grid with the vertices, then Dirichlet samples around the priors."""
    return seed_mixtures(
        names,
        int(cfg["budget"]),
        int(cfg["grid_resolution"]),
        priors,
        float(cfg["prior_concentration"]),
        seed,
    )


def surrogate(
    evaluate: Evaluate,
    names: Sequence[str],
    cfg: Mapping,
    seed: int,
    priors: list[dict],
    util: Callable[[dict], float],
) -> Outcome:
    seeds = surrogate_design(names, cfg, seed, priors)
    return _fit_and_search(seeds, _evaluate_all(evaluate, seeds, "search: seed merges", cfg), cfg, seed)


def _round_sizes(budget: int) -> list[int]:
    sizes = [budget // 2]
    while sum(sizes) < budget:
        sizes.append(max(1, min(sizes[-1] // 2, budget - sum(sizes))))
    return sizes


def first_round(names: Sequence[str], cfg: Mapping, seed: int, priors: list[dict]) -> np.ndarray:
    """The iterative search's first round (the later rounds depend on its results)."""
    return surrogate_design(names, {**cfg, "budget": _round_sizes(int(cfg["budget"]))[0]}, seed, priors)


def iterative(
    evaluate: Evaluate,
    names: Sequence[str],
    cfg: Mapping,
    seed: int,
    priors: list[dict],
    util: Callable[[dict], float],
) -> Outcome:
    """Rounds of sizes budget/2, budget/4, ... (DeMix: 64+32+16): each round samples around the optimum that the
    surrogate refitted on everything so far predicts."""
    sizes, rng = _round_sizes(int(cfg["budget"])), np.random.default_rng(seed)
    alphas = first_round(names, cfg, seed, priors)
    results = _evaluate_all(evaluate, alphas, "search: round 1", cfg)
    for r, size in enumerate(sizes[1:], 2):
        center = _fit_and_search(alphas, results, cfg, seed + r).alpha
        new = dirichlet(rng, center, float(cfg["round_concentration"]) * len(names), size)
        results += _evaluate_all(evaluate, new, f"search: round {r}", cfg)
        alphas = np.vstack([alphas, new])
    out = _fit_and_search(alphas, results, cfg, seed)
    out.info["rounds"] = sizes
    return out


def grid_design(
    names: Sequence[str], cfg: Mapping, seed: int = 0, priors: list[dict] | None = None
) -> np.ndarray:
    """The finest simplex grid within the budget."""
    return grid(len(names), finest_resolution(len(names), int(cfg["budget"])))


def grid_search(
    evaluate: Evaluate,
    names: Sequence[str],
    cfg: Mapping,
    seed: int,
    priors: list[dict],
    util: Callable[[dict], float],
) -> Outcome:
    """The finest grid within the budget; alpha* is its best point."""
    points, r = grid_design(names, cfg), finest_resolution(len(names), int(cfg["budget"]))
    results = _evaluate_all(evaluate, points, f"search: grid r={r}", cfg)
    best = int(np.argmax([util(x) for x in results]))
    return Outcome(points[best], None, {"alphas": points, "results": results, "resolution": r})


BACKENDS = Registry(
    "search back-end",
    {
        "surrogate": surrogate,
        "iterative": iterative,
        "grid": grid_search,
        "optuna": optuna_search,
        "gradient": gradient_search,
    },
)
# the merges a back-end evaluates before it looks at any result: what a joined worker can evaluate (join.py)
DESIGNS = {"surrogate": surrogate_design, "iterative": first_round, "grid": grid_design}


def get_backend(name: str):
    return BACKENDS.get(name)
