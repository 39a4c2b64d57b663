import json

import numpy as np
import pytest
from conftest import assert_cli_error, micro_cfg
from scipy.stats import kendalltau, spearmanr

from mergemix.analysis import rank
from mergemix.analysis.validate import sample_mixtures


# ------------------------------------------------------------------------------------------ rank metrics ---
def test_point_metrics_match_scipy_and_known_values():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    assert rank.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert rank.kendall(x, y) == pytest.approx(kendalltau(x, y).statistic)
    assert rank.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank.kendall([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank.recovery([1, 2, 3], [2, 4, 6]) == pytest.approx(0.5)


def test_top25_uses_the_references_best_quarter():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=12), rng.normal(size=12)
    top = np.argsort(-y)[:3]
    assert rank.top25_spearman(x, y) == pytest.approx(spearmanr(x[top], y[top]).statistic)
    assert np.isnan(rank.top25_spearman(x[:8], y[:8]))  # 2 mixtures in the top quarter: undefined


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_batched_metrics_equal_scipy_row_by_row_with_ties():
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, size=(50, 12)).astype(float), rng.integers(0, 5, size=(50, 12)).astype(float)
    for name, (fn, rows_fn) in rank.METRICS.items():
        with np.errstate(all="ignore"):
            batched = rows_fn(x, y)
        expected = [fn(a, b) for a, b in zip(x, y)]
        np.testing.assert_allclose(batched, expected, rtol=1e-10, atol=1e-12, err_msg=name)


def test_bootstrap_interval_contains_point_and_is_seeded():
    rng = np.random.default_rng(3)
    trained = rng.normal(size=30)
    pred = {"overall": trained + 0.5 * rng.normal(size=30), "math": rng.normal(size=30)}
    ref = {"overall": trained, "math": pred["math"] + rng.normal(size=30)}
    a = rank.compare(pred, [ref], n_boot=500, seed=7)
    for metric, block in a.items():
        lo, hi = block["interval"]["overall"]
        assert lo <= block["overall"] <= hi, metric
        assert lo < hi
    assert a == rank.compare(pred, [ref], n_boot=500, seed=7)
    assert a["spearman"]["interval"] != rank.compare(pred, [ref], n_boot=500, seed=8)["spearman"]["interval"]
    assert a["spearman"]["overall"] == pytest.approx(spearmanr(pred["overall"], ref["overall"]).statistic)


def test_bootstrap_intervals_keep_the_numbers_of_the_hand_written_bootstrap():
    """Two references, ties and an all-undefined series: scipy's paired bootstrap gives the intervals that the
    hand-written one (seeded index resamples, row-wise tau-b, finite percentiles) gave on these inputs."""
    rng = np.random.default_rng(3)
    trained = rng.normal(size=16)
    pred = {"overall": trained + 0.5 * rng.normal(size=16), "math": rng.integers(0, 3, 16).astype(float)}
    refs = [
        {"overall": trained, "math": rng.integers(0, 3, 16).astype(float)},
        {"overall": trained + 0.3 * rng.normal(size=16), "math": rng.integers(0, 3, 16).astype(float)},
    ]
    before = {
        "spearman": ([0.589252305323242, 0.9895611453662183], [-0.5649036604417147, 0.0781962013402164]),
        "kendall": ([0.44018720555417806, 0.956156213928434], [-0.5451490752312654, 0.0741082701804625]),
        "top25_spearman": ([0.43250000000000016, 1.0], [None, None]),
        "capability_recovery": (
            [-9.60825755365318, 6.633601442700563],
            [0.4420547385620915, 1.2578800366300367],
        ),
    }
    out = rank.compare(pred, refs, n_boot=300, seed=7)
    for metric, (overall, math) in before.items():
        assert out[metric]["interval"]["overall"] == pytest.approx(overall, rel=1e-12), metric
        got = out[metric]["interval"]["capabilities"]["math"]
        assert got == (pytest.approx(math, rel=1e-12) if math[0] is not None else math), metric


def test_dirichlet_design_extends_without_changing_earlier_mixtures():
    small, large = sample_mixtures(4, 5, "dirichlet", 0), sample_mixtures(4, 9, "dirichlet", 0)
    np.testing.assert_array_equal(small, large[:5])
    grid = sample_mixtures(4, 12, "grid", 0)
    assert len({tuple(p) for p in grid}) == 12 and np.allclose(grid.sum(1), 1)
    assert np.allclose(grid * 3, np.round(grid * 3))  # the resolution-3 grid (10 < 12 <= 20 points)


# ------------------------------------------------------------------------------------------ the stage ---
def test_validate_end_to_end_and_reuse(micro_root, tmp_path, monkeypatch, capsys):
    from mergemix.cli import execute

    overrides = ("validate.n_mixtures=4", "validate.seeds=[0,1]", "validate.bootstrap=200")
    cfg = micro_cfg(micro_root, *overrides, f"paths.run_dir={tmp_path}/first")
    execute("validate", cfg)
    progress = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("validate: mixture")]
    assert len(progress) == 8  # one line per trained mixture and seed
    run = tmp_path / "first"
    for f in ("validation.json", "validation.md", "validation.png"):
        assert (run / f).is_file(), f
    v = json.loads((run / "validation.json").read_text())
    caps = {"code", "instruct", "language", "math"}
    for key in ("spearman", "kendall", "top25_spearman", "capability_recovery"):
        for block in (v[key], v["noise_ceiling"][key]):
            assert set(block) == {"overall", "capabilities", "interval"}
            assert set(block["capabilities"]) == caps and set(block["interval"]["capabilities"]) == caps
    scores = v["by_metric"]["prob"][
        "scores"
    ]  # U's ρ: merged vs each seed's trained U, averaged over the seeds
    rho = np.mean(
        [spearmanr(scores["merged"]["overall"], t["overall"]).statistic for t in scores["trained"].values()]
    )
    assert v["spearman"]["overall"] == pytest.approx(rho)
    assert v["top25_spearman"]["overall"] is None  # 4 mixtures: the top quarter is one mixture
    assert set(v["by_metric"]) == {"prob", "acc"} and v["metric"] == "prob"
    assert len(v["mixtures"]) == 4 and len(v["raw"]) == 4
    ckpts = [tuple(r["checkpoints"].values()) for r in v["raw"]]
    assert all(len(set(c)) == 2 for c in ckpts)  # the two seeds are two different runs
    # the soft scores of the metric in U reproduce the suite's own capability scores
    merged = v["by_metric"]["prob"]["scores"]["merged"]
    assert merged["math"][0] == pytest.approx(v["raw"][0]["merged"]["capabilities"]["math"])
    assert merged["overall"][2] == pytest.approx(v["raw"][2]["merged"]["U"])

    from mergemix import training
    from mergemix.benchmarks import suite

    def boom(*a, **k):
        raise AssertionError("a second validation must reuse every trained and evaluated model")

    monkeypatch.setattr(training, "train_causal_lm", boom)
    monkeypatch.setattr(suite.Suite, "evaluate", boom)
    cfg = micro_cfg(micro_root, *overrides, f"paths.run_dir={tmp_path}/second")
    execute("validate", cfg)
    again = json.loads((tmp_path / "second" / "validation.json").read_text())
    assert again["raw"] == v["raw"] and again["spearman"] == v["spearman"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("validate.n_mixtures=2", "validate.n_mixtures must be an integer of at least 3"),
        ("mix.tokens=0", "mix.tokens must be a positive integer"),
    ],
)
def test_bad_validation_input_is_one_clear_error(override, message, tmp_path, monkeypatch, capsys):
    assert_cli_error("validate", override, message, tmp_path, monkeypatch, capsys)
