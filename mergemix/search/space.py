"""The simplex as an Optuna search space.

Each domain gets one parameter u_k in (0, 1]; the mixture is alpha_k = -log u_k / sum_j -log u_j. With the u_k
independent and uniform, -log u_k are i.i.d. Exp(1), so alpha ~ Dirichlet(1): uniform sampling of the parameters
covers the simplex uniformly, and every point of the simplex has a preimage (u_k = exp(-alpha_k))."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

LOW = 1e-9


def alpha_from_params(u: Sequence[float]) -> np.ndarray:
    x = -np.log(np.clip(np.asarray(u, dtype=float), LOW, 1.0))
    if x.sum() <= 0:  # every u_k == 1: the uniform point by continuity
        return np.full(len(x), 1.0 / len(x))
    return x / x.sum()


def params_from_alpha(alpha: Sequence[float], names: Sequence[str]) -> dict[str, float]:
    return {f"u_{n}": float(max(np.exp(-a), LOW)) for n, a in zip(names, alpha)}


def suggest_alpha(trial, names: Sequence[str]) -> np.ndarray:
    return alpha_from_params([trial.suggest_float(f"u_{n}", LOW, 1.0) for n in names])


def alpha_of_trial(params: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    return alpha_from_params([params[f"u_{n}"] for n in names])
