"""Refine: the merged surrogate corrected by a few trained runs (mergemix/search/refine.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mergemix.errors import MergeMixError
from mergemix.search.refine import Refiner, fit_correction
from mergemix.search.surrogate import utility

SEARCH = {
    "lgbm": {
        "n_estimators": 100,
        "learning_rate": 0.1,
        "num_leaves": 7,
        "min_data_in_leaf": 2,
        "min_data_in_bin": 1,
        "verbose": -1,
    },
    "n_candidates": 4000,
    "top_k": 20,
    "objective": "macro",
}


def test_tilt_recovers_a_linear_residual_and_gain_an_affine_map():
    rng = np.random.default_rng(0)
    alphas = rng.dirichlet(np.ones(3), 12)
    merged = rng.normal(0.3, 0.05, (12, 2))
    w = np.array([[0.1, -0.05, 0.0], [0.0, 0.2, -0.1]])  # [C, K]
    trained = merged + 0.02 + alphas @ w.T
    fn = fit_correction("tilt", alphas, merged, trained, noise=np.full(2, 1e-4), scale=np.full(2, 1.0))
    new_a, new_m = rng.dirichlet(np.ones(3), 5), rng.normal(0.3, 0.05, (5, 2))
    np.testing.assert_allclose(fn(new_a, new_m), new_m + 0.02 + new_a @ w.T, atol=1e-3)

    a, b = np.array([0.01, -0.02]), np.array([2.0, 0.5])
    fn = fit_correction("gain", alphas, merged, a + b * merged, noise=np.full(2, 1e-4), scale=np.ones(2))
    np.testing.assert_allclose(fn(new_a, new_m), a + b * new_m, atol=1e-3)
    with pytest.raises(MergeMixError, match="unknown refine correction"):
        fit_correction("cubic", alphas, merged, trained, np.ones(2), np.ones(2))


@pytest.mark.parametrize("kind", ["tilt", "gain"])
def test_one_trained_run_shifts_every_candidate_alike(kind):
    """One run cannot tell a slope from noise: the correction is its constant residual, the optimum stays put."""
    alphas, merged = np.array([[0.2, 0.3, 0.5]]), np.array([[0.30, 0.40]])
    trained = np.array([[0.35, 0.38]])
    fn = fit_correction(kind, alphas, merged, trained, noise=np.full(2, 0.01), scale=np.full(2, 0.2))
    cand = np.random.default_rng(1).dirichlet(np.ones(3), 50)
    m = np.random.default_rng(2).normal(0.3, 0.05, (50, 2))
    np.testing.assert_allclose(fn(cand, m) - m, np.tile(trained - merged, (50, 1)), atol=1e-12)


def _landscape(alphas: np.ndarray, peak: np.ndarray) -> dict[str, np.ndarray]:
    """Two capabilities whose sum peaks at `peak`."""
    d = ((alphas - peak) ** 2).sum(-1)
    return {"a": 0.5 - d + 0.1 * alphas[:, 0], "b": 0.5 - d - 0.1 * alphas[:, 0]}


@pytest.mark.parametrize("kind", ["tilt", "gain"])
def test_refine_moves_towards_the_trained_optimum_it_is_shown(kind):
    """Merges put the optimum at sft-light `merged_peak`; trained runs peak further along domain 2. Three trained
    runs of a noiseless oracle must move the answer towards the trained peak and raise its trained U."""
    rng = np.random.default_rng(0)
    seeds = np.vstack([np.eye(3), rng.dirichlet(np.ones(3), 37)])
    merged_peak, trained_peak = np.array([0.4, 0.3, 0.3]), np.array([0.15, 0.15, 0.7])
    merged = _landscape(seeds, merged_peak)

    def trained(alpha):
        caps = {c: float(v[0]) for c, v in _landscape(np.atleast_2d(alpha), trained_peak).items()}
        return {"capabilities": caps, "capabilities_std": {c: 0.002 for c in caps}, "U": float(utility(caps))}

    refiner = Refiner(seeds, merged, SEARCH, seed=0, correction=kind, min_distance=0.2)
    start, _ = refiner.propose(explore=False)
    alpha = start
    for i in range(3):
        refiner.add(alpha, trained(alpha))
        alpha, _ = refiner.propose(explore=True)
        if i == 0:  # the second run explores away from the first (the mean of candidates each >= 0.2 away)
            assert 0.5 * np.abs(alpha - start).sum() >= 0.15
    final, predicted, _ = refiner.answer()
    assert np.isclose(final.sum(), 1) and (final >= 0).all()

    def true_u(a):
        return float(utility(trained(a)["capabilities"]))

    assert true_u(final) > true_u(start) + 0.01
    assert np.abs(final - trained_peak).sum() < np.abs(start - trained_peak).sum()
    assert {"a", "b", "U"} == set(predicted)


def test_refine_on_the_micro_pipeline_charges_the_merges_and_its_runs(micro_run):
    from mergemix.search.baselines import baseline_mixture
    from mergemix.search.cost import trained_tokens
    from mergemix.search.refine import refine

    pipe, _ = micro_run
    cfg = {"budget": 2, "trial_tokens": 4096, "correction": "tilt", "min_distance": 0.2}
    alpha, obj, info = refine(pipe, cfg, pipe.search_seed)
    star = pipe.search_result["alpha_star"]
    assert info["runs"][0] == pytest.approx(
        {n: star[n] / sum(star.values()) for n in pipe.domain_names}, abs=1e-6
    )
    tv = 0.5 * sum(abs(info["runs"][1][n] - info["runs"][0][n]) for n in pipe.domain_names)
    assert tv >= 0.1  # the second run explores away from alpha*
    search_cost = pipe.search_result["cost"]
    assert obj.ledger.train_tokens == search_cost["train_tokens"] + 2 * trained_tokens(
        4096, pipe.cfg["model"]
    )
    assert obj.ledger.eval_tokens > search_cost["eval_tokens"] and obj.ledger.flops > search_cost["flops"]
    assert (
        np.isclose(alpha.sum(), 1)
        and (alpha >= 0).all()
        and info["answer"] in ("corrected optimum", "best trained run")
    )
    # the registered strategy gives the same mixture from the cached runs
    mixture, cost = baseline_mixture(pipe, {**cfg, "baseline": "refine"}, pipe.search_seed, None)
    assert mixture == pytest.approx(dict(zip(pipe.domain_names, alpha)))
    assert cost["train_tokens"] == obj.ledger.train_tokens
