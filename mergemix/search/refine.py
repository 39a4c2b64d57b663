"""Refine: MergeMix's merged surrogate corrected by a few trained runs (`strategy=refine`).

Merges rank mixtures well but compress some domains' trained gains more than others', so the merged optimum can
stop short of the trained one. Refine keeps everything the merges gave (seed merges, regressors, alpha*) and spends
`baseline.budget` trained runs (`trial_tokens`, default the full `mix.tokens` horizon) to learn the difference:

    run 1    at MergeMix's alpha*
    run i    at the corrected surrogate's optimum among mixtures at least `min_distance` (total variation) from
             every trained run so far: each run tests the correction where it would move the answer
    answer   the corrected surrogate's optimum, or the best trained run where it scored above that optimum's
             prediction (retrained, like any other strategy's mixture)

Corrections (`correction`), each per capability c, fitted on the trained runs' residuals trained_c - merged_c:

    tilt   residual_c(alpha) = r_c + v_c . (alpha - mean alpha): a Bayesian linear model whose constant is free and
           whose slopes have a prior std of the capability's merged range over the simplex (a correction as large as
           the merged signal itself) against the trained runs' item noise; it tilts each capability's landscape
           towards the domains whose trained gains the merges under-state
    gain   trained_c = a_c + b_c . merged_c: the merged gains rescaled (b_c, prior 1 with std 1) and shifted (a_c)

With one trained run both reduce to a constant offset (the optimum stays put, so run 2 explores); docs/DECISIONS.md
says which is the default and why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mergemix.errors import MergeMixError
from mergemix.search.surrogate import Surrogate, candidates, out_of_fold, result_utility, utility

CORRECTIONS = ("tilt", "gain")


def fit_correction(
    kind: str,
    alphas: np.ndarray,
    merged: np.ndarray,
    trained: np.ndarray,
    noise: np.ndarray,
    scale: np.ndarray,
):
    """A function (alphas [M, K], merged predictions [M, C]) -> corrected predictions [M, C], fitted on n trained
    runs: their mixtures `alphas` [n, K], merged predictions there `merged` [n, C], trained scores `trained` [n, C],
    item noise per capability `noise` [C] and merged range per capability `scale` [C]."""
    resid = trained - merged
    if kind == "tilt":
        center = alphas.mean(axis=0)
        x = alphas - center
        slopes = []
        for c in range(resid.shape[1]):
            lam = (noise[c] / max(scale[c], 1e-12)) ** 2  # noise variance over the slopes' prior variance
            r = resid[:, c] - resid[:, c].mean()
            slopes.append(np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ r))
        offset, slopes = resid.mean(axis=0), np.array(slopes)  # [C], [C, K]
        return lambda a, m: m + offset + (np.atleast_2d(a) - center) @ slopes.T
    if kind == "gain":
        mc = merged - merged.mean(axis=0)
        tc = trained - trained.mean(axis=0)
        lam = noise**2  # prior b ~ N(1, 1): noise variance over a unit prior variance
        b = ((mc * tc).sum(axis=0) + lam) / ((mc**2).sum(axis=0) + lam)
        a = trained.mean(axis=0) - b * merged.mean(axis=0)
        return lambda _a, m: a + b * m
    raise MergeMixError(f"unknown refine correction '{kind}' (choose from {', '.join(CORRECTIONS)})")


class Refiner:
    """The merged surrogate over a fixed candidate set, and the trained runs that correct it."""

    def __init__(
        self,
        alphas: np.ndarray,
        merged: Mapping[str, Sequence[float]],
        cfg: Mapping,
        seed: int,
        correction: str = "tilt",
        min_distance: float = 0.2,
    ):
        self.caps, self.cfg, self.kind = sorted(merged), cfg, correction
        self.min_distance = float(min_distance)
        surrogate = Surrogate(cfg["lgbm"], seed).fit(alphas, {c: merged[c] for c in self.caps})
        self.cand = candidates(alphas.shape[1], int(cfg["n_candidates"]), seed, extra=alphas)
        pred = surrogate.predict(self.cand)
        self.pred = np.column_stack([pred[c] for c in self.caps])  # [M, C]
        self.scale = self.pred.max(axis=0) - self.pred.min(axis=0)
        self.surrogate_error = _cv_rmse(alphas, merged, self.caps, cfg["lgbm"], seed)
        self._surrogate = surrogate
        self.runs: list[tuple[np.ndarray, dict]] = []

    def add(self, alpha: np.ndarray, result: Mapping) -> None:
        self.runs.append((np.asarray(alpha, dtype=float), dict(result)))

    def corrected(self) -> np.ndarray:
        """Predicted capability scores [M, C] of every candidate, corrected by the trained runs so far."""
        if not self.runs:
            return self.pred
        alphas = np.array([a for a, _ in self.runs])
        at = self._surrogate.predict(alphas)
        merged = np.column_stack([at[c] for c in self.caps])
        trained = np.array([[r["capabilities"][c] for c in self.caps] for _, r in self.runs])
        # a residual's noise: the trained run's item noise and the surrogate's own error (out of fold)
        item = np.mean([[r["capabilities_std"][c] ** 2 for c in self.caps] for _, r in self.runs], axis=0)
        noise = np.sqrt(item + self.surrogate_error**2)
        fn = fit_correction(self.kind, alphas, merged, trained, noise, self.scale)
        return fn(self.cand, self.pred)

    def propose(self, explore: bool) -> tuple[np.ndarray, dict[str, float]]:
        """The corrected optimum (mean of the top-k candidates) and its predicted scores; `explore`: only among
        candidates at least min_distance (total variation) from every trained run (all of them if none is)."""
        pred = self.corrected()
        u = utility(dict(zip(self.caps, pred.T)), self.cfg["objective"])
        if (
            self.runs
        ):  # trust region: a correction fitted on a few runs holds near them, not across the simplex
            dist = _tv(self.cand, np.array([a for a, _ in self.runs])).min(1)
            u = np.where(dist <= 2 * self.min_distance, u, -np.inf)
        top = np.argsort(-u, kind="stable")[: int(self.cfg["top_k"])]
        if explore and self.runs:
            far = (dist >= self.min_distance) & np.isfinite(u)
            if (
                far.any()
            ):  # the top-k far candidates near the best of them (a ring's mean would fall back inside)
                top = np.argsort(-np.where(far, u, -np.inf), kind="stable")[: int(self.cfg["top_k"])]
                top = top[far[top] & (_tv(self.cand[top], self.cand[top[:1]])[:, 0] <= self.min_distance / 2)]
        alpha = self.cand[top].mean(axis=0)
        scores = {c: float(v) for c, v in zip(self.caps, pred[top].mean(axis=0))}
        scores["U"] = float(utility(scores, self.cfg["objective"]))
        return alpha / alpha.sum(), scores

    def answer(self) -> tuple[np.ndarray, dict[str, float], str]:
        """The corrected optimum, or the best trained run where it scored above that optimum's prediction (the
        correction could not express it); the third value says which."""
        alpha, predicted = self.propose(explore=False)
        best_alpha, best = max(self.runs, key=lambda r: result_utility(r[1], self.cfg["objective"]))
        if result_utility(best, self.cfg["objective"]) > predicted["U"]:
            return (
                best_alpha / best_alpha.sum(),
                {**best["capabilities"], "U": float(best["U"])},
                "best trained run",
            )
        return alpha, predicted, "corrected optimum"


def _cv_rmse(alphas: np.ndarray, merged: Mapping, caps: list[str], lgbm: Mapping, seed: int) -> np.ndarray:
    """The surrogate's out-of-fold RMSE per capability on the seed merges [C]."""
    pred = out_of_fold(alphas, {c: merged[c] for c in caps}, lgbm, seed)
    return np.array([np.sqrt(np.mean((pred[c] - np.asarray(merged[c])) ** 2)) for c in caps])


def _tv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Total-variation distances [len(a), len(b)] between mixtures."""
    return 0.5 * np.abs(a[:, None, :] - b[None]).sum(-1)


def refine(pipe, cfg: Mapping, seed: int):
    """Refine MergeMix's search (`pipe.search_result`, built if missing) with `cfg["budget"]` trained runs;
    returns (mixture, the trained runs' objective with the whole cost in its ledger, what was learnt)."""
    from mergemix.search.baselines import ProxyObjective
    from mergemix.search.run import read_trials

    names, search = pipe.domain_names, pipe.search_result
    alphas, cols = read_trials(pipe.search_dir / "seeds.csv", names)
    s = pipe.cfg["search"]
    spec = {**cfg, "trial_tokens": int(cfg.get("trial_tokens") or pipe.cfg["mix"]["tokens"])}
    obj = ProxyObjective(pipe, spec, s["objective"])
    cost = search["cost"]  # the merges' search: its experts and evaluations
    obj.ledger.train(int(cost["train_tokens"]))
    obj.ledger.eval_tokens += int(cost["eval_tokens"])
    obj.ledger.evaluations += int(cost["evaluations"])
    refiner = Refiner(
        alphas,
        {c: v for c, v in cols.items() if c not in ("U", "U_std")},
        s,
        seed,
        cfg.get("correction") or "tilt",
        float(cfg.get("min_distance", 0.2)),
    )
    alpha = np.array([search["alpha_star"][n] for n in names], dtype=float)
    for _ in range(int(cfg["budget"])):
        refiner.add(alpha, obj(alpha))
        alpha, _ = refiner.propose(explore=True)
    alpha, predicted, source = refiner.answer()
    info = {
        "correction": refiner.kind,
        "answer": source,
        "runs": [dict(zip(names, map(float, a / a.sum()))) for a, _ in refiner.runs],
        "trained_U": [float(r["U"]) for _, r in refiner.runs],
        "predicted": predicted,
        "merged_alpha_star": dict(search["alpha_star"]),
    }
    return alpha, obj, info
