import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_cli_error, micro_cfg

from mergemix.analysis import landscape
from mergemix.analysis.landscape_plot import plot, project, ternary
from mergemix.errors import MergeMixError
from mergemix.simplex import finest_resolution, grid, grid_size

CAPS = ["code", "instruct", "language", "math"]


# ------------------------------------------------------------------------------------------- geometry ---
def test_projection_is_the_maximum_over_the_other_domains():
    pts = grid(4, 4)
    xy, best = project(
        pts, pts[:, 2], 0, 1, resolution=4
    )  # the best a_2 given (a_0, a_1): all the rest on domain 2
    np.testing.assert_allclose(best, 1 - xy.sum(axis=1))
    assert len(xy) == grid_size(3, 4)  # every (a_0, a_1) with a_0 + a_1 <= 1 on the grid
    xy, best = project(pts, -pts[:, 3], 2, 3, resolution=4)  # the best -a_3 given (a_2, a_3) is -a_3 itself
    np.testing.assert_allclose(best, -xy[:, 1])


def test_ternary_maps_vertices_to_the_triangle():
    x, y = ternary(np.vstack([np.eye(3), np.full(3, 1 / 3)]))
    np.testing.assert_allclose(x, [0, 1, 0.5, 0.5])
    np.testing.assert_allclose(y, [0, 0, np.sqrt(3) / 2, np.sqrt(3) / 6])


@pytest.mark.parametrize("k, n", [(3, 1), (3, 10), (4, 12), (4, 10_000), (5, 200)])
def test_finest_resolution_fits_the_point_budget(k, n):
    r = finest_resolution(k, n)
    assert r >= 1 and (grid_size(k, r) <= n or r == 1) and grid_size(k, r + 1) > n


@pytest.mark.parametrize("k", [2, 3])
def test_plots_for_two_and_three_domains(k, tmp_path):
    pts = grid(k, 5)
    values = {"U": pts[:, 0] - pts[:, -1] ** 2, "cap": np.full(len(pts), 0.3)}  # a constant one too
    plot(
        tmp_path / "p.png",
        pts,
        values,
        [f"d{i}" for i in range(k)],
        5,
        np.full(k, 1 / k),
        {"cap": np.eye(k)[0]},
    )
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "p.png")
    assert image.shape[:2] == (300, 660)  # one panel per objective: 2 x 3.3 in by 3.0 in at 100 dpi
    coloured = (np.ptp(image[..., :3], axis=-1) > 0.1).mean()  # text and frames are grey: the data are not
    assert coloured > (0.1 if k == 3 else 0.005), coloured  # filled ternary contours (3 domains), curves (2)


def test_seeds_are_read_by_position_when_capabilities_share_domain_names(tmp_path):
    (tmp_path / "seeds.csv").write_text(
        "code,math,code,math,U,U_std\n1.0,0.0,0.3,0.1,0.2,0.01\n0.5,0.5,0.4,0.2,0.3,0.01\n"
    )
    alphas, scores = landscape.read_seeds(tmp_path / "seeds.csv", ["code", "math"])
    np.testing.assert_array_equal(alphas, [[1.0, 0.0], [0.5, 0.5]])
    assert list(scores) == ["code", "math"]
    np.testing.assert_array_equal(scores["code"], [0.3, 0.4])


def test_too_few_seed_merges_is_one_clear_error(tmp_path):
    (tmp_path / "seeds.csv").write_text("a,b,cap,U,U_std\n")  # the gradient back-end evaluates only alpha*
    pipe = SimpleNamespace(
        search_dir=tmp_path,
        domain_names=["a", "b"],
        search_seed=0,
        cfg={"search": {"backend": "gradient", "lgbm": {}}},
    )
    with pytest.raises(MergeMixError, match="left 0 seed merges"):
        landscape.fit_surrogate(pipe)


# ------------------------------------------------------------------------------------------ the stage ---
def _no_new_merges(monkeypatch):
    from mergemix.benchmarks import suite
    from mergemix.merging import ExpertBank

    def boom(*a, **k):
        raise AssertionError("merged or evaluated a model")

    monkeypatch.setattr(suite.Suite, "evaluate", boom)
    monkeypatch.setattr(ExpertBank, "merge_into", boom)


def test_surrogate_landscape_reuses_the_search_without_new_merges(
    micro_run, micro_root, tmp_path, monkeypatch
):
    from mergemix.cli import execute

    pipe, summary = micro_run
    cache = pipe.merge_cache_path
    before = cache.read_bytes()
    _no_new_merges(monkeypatch)
    execute("landscape", micro_cfg(micro_root, "landscape.resolution=6", f"paths.run_dir={tmp_path}"))
    assert cache.read_bytes() == before  # the evaluation cache did not grow
    for f in ("landscape.json", "landscape.md", "landscape.png"):
        assert (tmp_path / f).is_file(), f
    out = json.loads((tmp_path / "landscape.json").read_text())
    assert out["n_points"] == grid_size(4, 6) and len(out["grid"]["alphas"]) == grid_size(4, 6)
    values = {o: np.asarray(v) for o, v in out["grid"]["values"].items()}
    assert list(values) == ["U", *CAPS]
    np.testing.assert_allclose(values["U"], np.mean([values[c] for c in CAPS], axis=0), atol=2e-6)
    for o, s in out["summary"].items():
        assert s["max"] == pytest.approx(values[o].max(), abs=1e-6)
    spec = out["specialists"]
    assert list(spec) == ["U", *CAPS]
    # the same regressors and fine search as the search itself: its alpha* comes back as the U argmax
    for d, w in summary["alpha_star"].items():
        assert spec["U"]["mixture"][d] == pytest.approx(w, abs=2e-6)
    for s in spec.values():
        w = np.array(list(s["mixture"].values()))
        assert np.all(w >= 0) and w.sum() == pytest.approx(1)
        assert s["predicted"]["U"] == pytest.approx(np.mean([s["predicted"][c] for c in CAPS]))
    md = (tmp_path / "landscape.md").read_text()
    assert "maximum over the other domains" in md
    assert all(f"| {c} |" in md for c in CAPS)


def test_merge_landscape_scores_grid_merges_through_the_cache(micro_run, micro_root, tmp_path, monkeypatch):
    from mergemix.cli import execute
    from mergemix.search.evalcache import EvalCache, alpha_key

    pipe, _ = micro_run
    before = pipe.merge_cache_path.read_bytes()
    _no_new_merges(monkeypatch)  # resolution 1: the vertices, all merged by the search already
    execute(
        "landscape",
        micro_cfg(
            micro_root,
            "landscape.source=merge",
            "landscape.resolution=1",
            "landscape.specialists=false",
            f"paths.run_dir={tmp_path}",
        ),
    )
    assert pipe.merge_cache_path.read_bytes() == before
    out = json.loads((tmp_path / "landscape.json").read_text())
    assert out["specialists"] is None and out["n_points"] == 4
    cached = EvalCache(pipe.merge_cache_path).entries
    for i, alpha in enumerate(out["grid"]["alphas"]):
        assert np.count_nonzero(alpha) == 1
        assert out["grid"]["values"]["U"][i] == pytest.approx(cached[alpha_key(alpha)]["U"], abs=1e-6)
        assert out["grid"]["values"]["math"][i] == pytest.approx(
            cached[alpha_key(alpha)]["capabilities"]["math"], abs=1e-6
        )


@pytest.mark.slow
def test_merge_landscape_merges_only_new_grid_points(micro_run, micro_root, tmp_path):
    from mergemix.cli import execute
    from mergemix.search.evalcache import EvalCache, alpha_key

    pipe, _ = micro_run
    known = set(EvalCache(pipe.merge_cache_path).entries)
    new = {alpha_key(a) for a in grid(4, 2)} - known
    execute(
        "landscape",
        micro_cfg(
            micro_root, "landscape.source=merge", "landscape.resolution=2", f"paths.run_dir={tmp_path}"
        ),
    )
    after = EvalCache(pipe.merge_cache_path).entries
    assert set(after) - known == new and len(new) > 0
    out = json.loads((tmp_path / "landscape.json").read_text())
    for alpha, u in zip(out["grid"]["alphas"], out["grid"]["values"]["U"]):
        assert u == pytest.approx(after[alpha_key(alpha)]["U"], abs=1e-6)


@pytest.mark.parametrize(
    "override, message",
    [
        ("landscape.source=trained", "landscape.source must be one of surrogate, merge"),
        ("landscape.resolution=0", "landscape.resolution must be a positive integer"),
        ("landscape.specialists=maybe", "landscape.specialists must be true or false"),
    ],
)
def test_bad_landscape_input_is_one_clear_error(override, message, tmp_path, monkeypatch, capsys):
    assert_cli_error("landscape", override, message, tmp_path, monkeypatch, capsys)
