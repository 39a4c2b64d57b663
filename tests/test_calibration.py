"""The embedded testbed must be informative: experts lift their own capability, capabilities trade off, and the
found mixture beats the token-proportional one when both are trained."""

import csv

import numpy as np
import pytest

from mergemix.stages.report import calibration

CAPS = {"a": ["ta"], "b": ["tb"]}


def _row(a_items, b_items):
    a, b = np.asarray(a_items, float), np.asarray(b_items, float)
    return {
        "capabilities": {"a": a.mean(), "b": b.mean()},
        "U": (a.mean() + b.mean()) / 2,
        "items": {"ta": a.tolist(), "tb": b.tolist()},
    }


def _seeds(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x", "y", "U"])
        w.writerows(rows)
    return path


def test_calibration_detects_clear_gains_and_interior_optimum(tmp_path):
    rng = np.random.default_rng(0)
    base_a, base_b = rng.random(400), rng.random(400)
    rows = {
        "base": _row(base_a, base_b),
        "expert:x": _row(base_a + 0.2, base_b - 0.1),  # clear gain on its capability
        "expert:y": _row(base_a, base_b + rng.normal(0, 0.3, 400) * 0.05),
    }  # noise only
    seeds = _seeds(tmp_path / "s.csv", [[1, 0, 0.30], [0, 1, 0.25], [0.5, 0.5, 0.40]])
    merged = [_row(base_a + 0.01 * i, base_b) for i in range(3)]
    cal = calibration(rows, {"a": "x", "b": "y"}, CAPS, seeds, ["x", "y"], merged)
    assert cal["expert_gains"]["a"]["clear"] and not cal["expert_gains"]["b"]["clear"]
    assert not cal["all_experts_clear"]
    assert cal["tradeoff"]["best_is_interior"]
    vertex_best = _seeds(tmp_path / "v.csv", [[1, 0, 0.50], [0, 1, 0.25], [0.5, 0.5, 0.40]])
    assert not calibration(rows, {"a": "x"}, CAPS, vertex_best, ["x", "y"], merged)["tradeoff"][
        "best_is_interior"
    ]


def test_responsiveness_weighs_the_merges_spread_against_their_paired_item_noise():
    """Merges that shift every item of `a` a little move beyond the paired noise although far less than one model's
    item std; merges that differ only by item noise on `b` do not; U is judged the same way."""
    from mergemix.stages.report import merged_noise, responsiveness, u_check

    rng = np.random.default_rng(0)
    items_a, items_b = rng.random(800), rng.random(800)
    merged = [_row(items_a + 0.002 * i, items_b + rng.normal(0, 0.01, 800)) for i in range(12)]
    noise = merged_noise(merged, CAPS)
    resp = responsiveness(merged, noise)
    one_model_std = items_a.std() / np.sqrt(800)
    assert resp["a"]["merged_spread_std"] < one_model_std  # unpaired, it would look flat
    assert resp["a"]["responsive"] and resp["a"]["ratio"] > 10
    assert not resp["b"]["responsive"] and resp["b"]["ratio"] < 2
    lgbm = {"n_estimators": 20, "num_leaves": 3, "min_data_in_leaf": 1, "min_data_in_bin": 1, "verbose": -1}
    check = u_check(merged, noise, rng.dirichlet(np.ones(2), 12), lgbm, 0)
    assert check["ratio"] > 2 and check["item_noise_std"] == pytest.approx(noise["U"])
    assert u_check([], {}, [], lgbm, 0)["ratio"] is None


@pytest.mark.slow
def test_demo_testbed_is_calibrated(tmp_path):
    """The full demo configuration (~10 min on 2 cores)."""
    from conftest import micro_cfg  # noqa: F401 - ensures env defaults

    from mergemix.cli import _quiet, compose, to_plain
    from mergemix.pipeline import Pipeline

    _quiet()
    cfg = to_plain(compose(["logger=none", f"paths.root={tmp_path}", f"paths.run_dir={tmp_path}/run"]))
    s = Pipeline(cfg, tmp_path / "run").run()
    cal = s["calibration"]
    assert cal["all_experts_clear"], cal["expert_gains"]
    assert cal["tradeoff"]["best_is_interior"], cal["tradeoff"]
    assert max(s["alpha_star"].values()) < 0.95
    assert s["mergemix_vs_uniform"]["U_diff"] > 0, s["mergemix_vs_uniform"]


def test_tradeoff_reads_weights_when_a_capability_shares_a_domains_name(tmp_path):
    from mergemix.search.run import write_trials
    from mergemix.stages.report import tradeoff

    def res(code, math, u):
        return {"capabilities": {"code": code, "math": math}, "U": u, "U_std": 0.0}

    history = [(np.array([1.0, 0.0]), res(0.9, 0.0, 0.45)), (np.array([0.5, 0.5]), res(0.6, 0.6, 0.60))]
    write_trials(tmp_path / "seeds.csv", history, ["code", "math"], ["code", "math"])
    t = tradeoff(tmp_path / "seeds.csv", ["code", "math"])
    assert t["best_vertex_U"] == pytest.approx(0.45) and t["best_interior_U"] == pytest.approx(0.60)
    assert t["best_is_interior"]
