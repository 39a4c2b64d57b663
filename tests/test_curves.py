import json

import numpy as np
import pytest
from conftest import assert_cli_error, micro_cfg
from scipy.stats import spearmanr

CAPS = {"code", "instruct", "language", "math"}


def test_curves_end_to_end_and_reuse(micro_root, tmp_path, monkeypatch, capsys):
    from mergemix.cli import execute
    from mergemix.pipeline import Pipeline
    from mergemix.search.evalcache import EvalCache, alpha_key

    overrides = ("curves.alphas=[0.75,0.25,0.5]", "curves.seeds=[0]")
    cfg = micro_cfg(micro_root, *overrides, f"paths.run_dir={tmp_path}/first")
    execute("curves", cfg)
    progress = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("curves: ")]
    assert len(progress) == 3  # one trained mixture per alpha and seed
    run = tmp_path / "first"
    for f in ("curves.json", "curves.md", "curves.png"):
        assert (run / f).is_file(), f
    c = json.loads((run / "curves.json").read_text())
    assert c["domains"] == ["code", "math"] and c["alphas"] == [
        0.25,
        0.5,
        0.75,
    ]  # default domains, sorted alphas
    assert c["mixtures"][0] == {"code": 0.25, "math": 0.75, "prose": 0.0, "sft": 0.0}
    assert set(c["merged"]) == {"overall", *CAPS} and all(len(v) == 3 for v in c["merged"].values())
    trained = c["trained"]["0"]
    for s in ["overall", *CAPS]:
        rho = c["spearman"]["overall"] if s == "overall" else c["spearman"]["capabilities"][s]
        expected = spearmanr(c["merged"][s], trained[s]).statistic
        if rho is None:  # all scores tied
            assert np.isnan(expected)
        else:
            assert rho == pytest.approx(expected)
    # the merge at alpha is the search's evaluation-cache entry for (alpha, 1 - alpha, 0, 0)
    pipe = Pipeline(cfg, tmp_path / "first")
    cached = EvalCache(pipe.merge_cache_path).entries[alpha_key([0.5, 0.5, 0.0, 0.0])]
    assert c["merged"]["overall"][1] == pytest.approx(cached["U"])
    assert c["merged"]["math"][1] == pytest.approx(cached["capabilities"]["math"])
    # the trained mixture is the run any other command would train for the same mixture and seed
    path = pipe.train_mixture({"code": 0.5, "math": 0.5, "prose": 0.0, "sft": 0.0}, "other label", seed=0)
    assert c["raw"][1]["checkpoints"]["0"] == str(path)

    from mergemix import training
    from mergemix.benchmarks import suite

    def boom(*a, **k):
        raise AssertionError("a second curve must reuse every trained and evaluated model")

    monkeypatch.setattr(training, "train_causal_lm", boom)
    monkeypatch.setattr(suite.Suite, "evaluate", boom)
    execute("curves", micro_cfg(micro_root, *overrides, f"paths.run_dir={tmp_path}/second"))
    assert json.loads((tmp_path / "second" / "curves.json").read_text())["raw"] == c["raw"]
    # the reversed edge without training: the same merges read backwards, no rank correlation
    execute(
        "curves",
        micro_cfg(
            micro_root,
            *overrides,
            "curves.domains=[math,code]",
            "curves.train=false",
            f"paths.run_dir={tmp_path}/reversed",
        ),
    )
    rev = json.loads((tmp_path / "reversed" / "curves.json").read_text())
    assert rev["merged"]["overall"] == c["merged"]["overall"][::-1]
    assert rev["spearman"] is None and rev["trained"] == {}


@pytest.mark.parametrize(
    "override, message",
    [
        ("curves.domains=[code,nope]", "curves.domains names unknown domains ['nope']"),
        ("curves.domains=[code,code]", "curves.domains must be two different domains"),
        ("curves.domains=[code]", "curves.domains must name two domains"),
        ("curves.alphas=[0.2,0.5]", "curves.alphas must hold at least 3 distinct values"),
        ("curves.alphas=[0.0,0.5,0.9]", "curves.alphas must lie strictly inside (0, 1)"),
        ("curves.alphas=[0.2,0.5,1.5]", "curves.alphas must lie strictly inside (0, 1)"),
    ],
)
def test_bad_curve_input_is_one_clear_error(override, message, tmp_path, monkeypatch, capsys):
    assert_cli_error("curves", override, message, tmp_path, monkeypatch, capsys)
