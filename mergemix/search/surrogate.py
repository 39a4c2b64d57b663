"""The learned surrogate: one LightGBM regressor per capability, alpha -> capability score, and a fine search
of the utility over the simplex on the regressors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mergemix.log import log
from mergemix.simplex import grid, grid_size


def utility(caps: Mapping[str, np.ndarray | float], objective: str | Sequence[str] = "macro"):
    """U: macro-average of the (chance-normalised) capability scores, one capability (a specialist mixture), or
    the macro-average of a list of capabilities (e.g. leaving out those that do not respond to the mixture)."""
    if objective == "macro":
        return np.mean([np.asarray(v) for v in caps.values()], axis=0)
    if isinstance(objective, str):
        return np.asarray(caps[objective])
    return np.mean([np.asarray(caps[c]) for c in objective], axis=0)


def result_utility(result: Mapping, objective: str | Sequence[str] = "macro") -> float:
    """The search objective of one evaluated model: its U, one capability's score, or a list's macro-average."""
    return result["U"] if objective == "macro" else float(utility(result["capabilities"], objective))


def objective_std(result: Mapping, objective: str | Sequence[str] = "macro") -> float:
    """The item-bootstrap std of the objective (for a list: its capabilities' stds combined as independent)."""
    if objective == "macro":
        return float(result["U_std"])
    if isinstance(objective, str):
        return float(result["capabilities_std"][objective])
    return float(np.sqrt(sum(result["capabilities_std"][c] ** 2 for c in objective)) / len(objective))


class Surrogate:
    def __init__(self, lgbm_params: Mapping, seed: int = 0):
        self.params, self.seed = dict(lgbm_params), seed
        self.models: dict[str, object] = {}

    def fit(self, alphas: np.ndarray, scores: Mapping[str, Sequence[float]]) -> Surrogate:
        import lightgbm as lgb

        params = {
            "objective": "regression",
            "seed": self.seed,
            "deterministic": True,
            "num_threads": 1,
            **self.params,
        }
        rounds = int(params.pop("n_estimators", 100))
        for cap, y in scores.items():
            data = lgb.Dataset(
                np.asarray(alphas, dtype=float),
                np.asarray(y, dtype=float),
                params={"min_data_in_bin": params.get("min_data_in_bin", 1), "verbose": -1},
            )
            self.models[cap] = lgb.train(params, data, num_boost_round=rounds)
        return self

    def predict(self, alphas: np.ndarray) -> dict[str, np.ndarray]:
        return {cap: m.predict(np.atleast_2d(alphas)) for cap, m in self.models.items()}


def out_of_fold(
    alphas: np.ndarray, scores: Mapping[str, Sequence[float]], lgbm: Mapping, seed: int, folds: int = 5
) -> dict[str, np.ndarray]:
    """Each point's prediction by a surrogate fitted without its fold (folds of a seeded permutation)."""
    alphas = np.asarray(alphas, dtype=float)
    idx = np.random.default_rng(seed).permutation(len(alphas))
    ys = {c: np.asarray(y, dtype=float) for c, y in scores.items()}
    pred = {c: np.zeros_like(y) for c, y in ys.items()}
    for f in range(min(folds, len(alphas))):
        test = idx[f::folds]
        train = np.setdiff1d(idx, test)
        fold = (
            Surrogate(lgbm, seed)
            .fit(alphas[train], {c: y[train] for c, y in ys.items()})
            .predict(alphas[test])
        )
        for c in ys:
            pred[c][test] = fold[c]
    return pred


def candidates(k: int, n: int, seed: int, extra: np.ndarray | None = None) -> np.ndarray:
    """Uniform (Dirichlet(1)) samples plus the finest grid that fits in n/10 points, plus `extra`."""
    rng = np.random.default_rng(seed)
    r = 2
    while grid_size(k, r + 1) <= n // 10:
        r += 1
    parts = [rng.dirichlet(np.ones(k), n), grid(k, r)]
    if extra is not None:
        parts.append(extra)
    return np.vstack(parts)


def fine_search(
    surrogate: Surrogate,
    k: int,
    n: int,
    top_k: int,
    seed: int,
    objective: str = "macro",
    extra: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """alpha* = mean of the top-k candidates by predicted utility (tree models give plateaus; averaging picks
    the plateau's centre, as RegMix does). Returns alpha* and the regressors' prediction there."""
    cand = candidates(k, n, seed, extra)
    if top_k > len(cand):
        log.warning(
            f"search.top_k {top_k} exceeds the {len(cand)} candidates: capped at {len(cand)} (alpha* is "
            "their mean)"
        )
        top_k = len(cand)
    u = utility(surrogate.predict(cand), objective)
    top = cand[np.argsort(-u, kind="stable")[:top_k]]
    alpha = top.mean(axis=0)
    alpha = alpha / alpha.sum()
    pred = {c: float(v[0]) for c, v in surrogate.predict(alpha).items()}
    return alpha, pred
