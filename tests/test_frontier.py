"""The frontier study's accounting and summary, the compression corrections (recovery calibration, extrapolated
merges), the alpha* choice rule, list objectives and the run's verdict: on synthetic results, no training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mergemix.analysis import frontier
from mergemix.errors import MergeMixError
from mergemix.merging import ExpertBank
from mergemix.models import build_model
from mergemix.search.baselines import manual_prior
from mergemix.search.calibration import calibrate, recovery
from mergemix.search.cost import trained_tokens
from mergemix.search.run import choose_alpha
from mergemix.search.surrogate import objective_std, result_utility, utility
from mergemix.stages.verdict import ACT, ACT_FLAT, DO_NOT_TRUST, NO_SEARCH, verdict

ROOT = Path(__file__).resolve().parents[1]


def _result(caps, std=0.01, u_std=0.005):
    return {
        "capabilities": dict(caps),
        "capabilities_std": {c: std for c in caps},
        "U": float(np.mean(list(caps.values()))),
        "U_std": u_std,
    }


# -------------------------------------------------------------------------------------------- calibration ---
def test_recovery_is_the_trained_over_merged_gain_ratio():
    base = _result({"a": 0.10, "b": 0.20})
    merged = _result({"a": 0.20, "b": 0.30})
    trained = _result({"a": 0.40, "b": 0.30})
    r = recovery(base, merged, trained)
    assert r["a"] == pytest.approx(3.0) and r["b"] == pytest.approx(1.0)


def test_recovery_falls_back_to_one_within_noise_and_is_clipped():
    base = _result({"a": 0.10, "b": 0.10})
    merged = _result({"a": 0.105, "b": 0.15}, std=0.01)  # a: gain 0.5 sigma -> not identified
    trained = _result({"a": 0.50, "b": 2.0})
    r = recovery(base, merged, trained, max_ratio=4.0)
    assert r["a"] == 1.0 and r["b"] == 4.0


def test_recovery_judges_the_merged_gain_against_its_paired_noise():
    base = _result({"a": 0.10}, std=0.02)
    merged = _result({"a": 0.12}, std=0.02)  # +0.02: 0.7 sigma unpaired, 4 sigma paired
    trained = _result({"a": 0.16}, std=0.02)
    assert recovery(base, merged, trained) == {"a": 1.0}
    assert recovery(base, merged, trained, gain_std={"a": 0.005}) == {"a": pytest.approx(3.0)}


def test_calibrate_moves_gains_keeps_raw_and_recomputes_u():
    res = _result({"a": 0.2, "b": 0.4})
    out = calibrate(res, {"a": 0.1, "b": 0.4}, {"a": 2.0, "b": 3.0})
    assert out["capabilities"] == pytest.approx({"a": 0.3, "b": 0.4})
    assert out["U"] == pytest.approx(0.35) and out["raw"]["U"] == pytest.approx(0.3)
    assert out["capabilities_std"]["a"] == pytest.approx(0.02)


def test_calibration_changes_the_ranking_only_through_unequal_recovery():
    base = {"a": 0.0, "b": 0.0}
    x, y = _result({"a": 0.30, "b": 0.0}), _result({"a": 0.0, "b": 0.20})  # raw: x ranks first
    assert x["U"] > y["U"]
    even = {"a": 2.0, "b": 2.0}
    assert calibrate(x, base, even)["U"] > calibrate(y, base, even)["U"]
    skewed = {"a": 1.0, "b": 2.0}  # b's gains are compressed twice as much by the merge
    assert calibrate(x, base, skewed)["U"] < calibrate(y, base, skewed)["U"]


def test_extrapolated_merge_scales_every_task_vector():
    arch = {
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "intermediate_size": 32,
        "max_position_embeddings": 16,
    }
    base, e1, e2, target = (build_model(arch, 50, s) for s in range(4))
    bank = ExpertBank(base, {"x": e1, "y": e2})
    bank.merge_into(target, {"x": 0.25, "y": 0.75}, scale=2.0)
    p = dict(target.named_parameters())
    for name, p0 in base.named_parameters():
        want = p0 + 2.0 * (
            0.25 * (dict(e1.named_parameters())[name] - p0) + 0.75 * (dict(e2.named_parameters())[name] - p0)
        )
        torch.testing.assert_close(p[name], want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- objective, choice ---
def test_list_objective_is_the_macro_average_of_its_capabilities():
    caps = {"a": 0.1, "b": 0.5, "c": 0.9}
    res = _result(caps, std=0.02)
    assert utility(caps, ["a", "c"]) == pytest.approx(0.5)
    assert result_utility(res, ["a", "b"]) == pytest.approx(0.3)
    assert result_utility(res, "b") == 0.5 and result_utility(res) == pytest.approx(0.5)
    assert objective_std(res, ["a", "b"]) == pytest.approx(np.sqrt(2 * 0.02**2) / 2)


def test_alpha_choice_switches_to_the_best_merge_only_beyond_noise():
    def util(r):
        return r["U"]

    proposal = np.array([0.5, 0.5])
    searched = [
        (np.array([1.0, 0.0]), {"U": 0.30, "U_std": 0.01}),
        (np.array([0.0, 1.0]), {"U": 0.20, "U_std": 0.01}),
    ]
    far = choose_alpha(proposal, {"U": 0.25, "U_std": 0.01}, searched, util, "macro")
    assert far["switched"] and list(far["alpha"]) == [1.0, 0.0] and far["result"]["U"] == 0.30
    near = choose_alpha(proposal, {"U": 0.29, "U_std": 0.01}, searched, util, "macro")
    assert not near["switched"] and list(near["alpha"]) == [0.5, 0.5]
    assert near["best_merge"]["objective"] == 0.30 and near["proposed"]["objective"] == 0.29


def test_manual_prior_equal_or_given():
    assert manual_prior("equal", ["a", "b", "c", "d"]) == {n: 0.25 for n in "abcd"}
    assert manual_prior({"a": 0.2, "b": 0.8}, ["a", "b"]) == {"a": 0.2, "b": 0.8}
    with pytest.raises(MergeMixError):
        manual_prior({"a": 0.2, "b": 0.2}, ["a", "b"])


def _calib(clear: dict, responsive: dict, interior=True):
    return {
        "expert_gains": {c: {"domain": c, "clear": v, "sigmas": 6.0 if v else 1.2} for c, v in clear.items()},
        "tradeoff": {"best_is_interior": interior},
        "responsiveness": {c: {"responsive": v} for c, v in responsive.items()},
    }


WORTH = {"merged_spread_std": 0.03, "item_noise_std": 0.005, "ratio": 6.0, "cv_spearman": 0.9}


def _trained(u_diff=0.02, caps=None):
    caps = caps or {}
    return {
        "U_diff": u_diff,
        "noise_std": 0.005,
        "sigmas": u_diff / 0.005,
        "capabilities_diff": {c: d for c, (d, _) in caps.items()},
        "capabilities_std": {c: s for c, (_, s) in caps.items()},
    }


def test_verdict_acts_when_every_check_passes_and_says_which_capabilities_are_just_flat():
    v = verdict(_calib({"a": True, "b": True}, {"a": True, "b": True}), WORTH, {}, _trained())
    assert v["action"] == ACT and v["line"].startswith("act on alpha*") and v["findings"] == []
    # b: its expert does not lift it, no merge moves it, and the trained runs agree: flat, not a reason to distrust
    v = verdict(
        _calib({"a": True, "b": False}, {"a": True, "b": False}),
        WORTH,
        {},
        _trained(caps={"b": (0.001, 0.004)}),
    )
    assert v["action"] == ACT_FLAT and "b is just flat" in v["line"]
    assert any("search.objective=[a]" in f for f in v["findings"])


def test_verdict_distrusts_merges_that_hide_a_gain_or_a_trained_loss():
    # an expert clearly lifts b, yet no merge moves it: the merges hide that domain's gain
    v = verdict(_calib({"a": True, "b": True}, {"a": True, "b": False}), WORTH, {}, _trained())
    assert v["action"] == DO_NOT_TRUST and "expert:b lifts b" in v["line"] and "strategy=refine" in v["line"]
    # flat in merges, but alpha* and token-proportional trained apart on it beyond noise: hidden, not flat
    v = verdict(
        _calib({"a": True, "b": False}, {"a": True, "b": False}),
        WORTH,
        {},
        _trained(caps={"b": (-0.03, 0.005)}),
    )
    assert v["action"] == DO_NOT_TRUST and "no merge moves b" in v["line"]
    v = verdict(_calib({"a": True}, {"a": True}), WORTH, {}, _trained(u_diff=-0.02))
    assert v["action"] == DO_NOT_TRUST and "below token-proportional" in v["line"]
    v = verdict(_calib({"a": True}, {"a": True}, interior=False), WORTH, {"switched_to_best_merge": True})
    assert v["action"] == DO_NOT_TRUST and len(v["findings"]) == 2


def test_verdict_says_when_a_search_is_not_worth_it():
    flat_u = {**WORTH, "merged_spread_std": 0.004, "ratio": 0.8}
    v = verdict(_calib({"a": True}, {"a": True}), flat_u)
    assert v["action"] == NO_SEARCH and "its paired item noise" in v["line"]
    v = verdict(_calib({"a": True}, {"a": True}), {**WORTH, "cv_spearman": 0.1})
    assert v["action"] == NO_SEARCH and "CV Spearman 0.10" in v["line"]


# ------------------------------------------------------------------------------------------------ frontier ---
def test_trained_tokens_are_whole_batches():
    assert trained_tokens(60_000, {"seq_len": 256, "batch_size": 16}) == 57_344


FRONTIER = {
    "seeds": [0, 1, 2],
    "other_seeds": 2,
    "expert_tokens": [100, 300],
    "budgets": [20, 40],
    "corrections": ["recovery"],
    "refine": ["tilt", "gain"],
    "refine_runs": 3,
    "trial_tokens": [10],
    "trial_counts": [5, 10],
    "full_runs": 4,
    "regmix_full_counts": [2, 4, 8],
    "small_model": "micro",
    "small_trial_tokens": 10,
    "small_counts": [4],
}


def test_jobs_run_the_headline_comparison_first_seed_by_seed():
    cfg = {"experts": {"tokens": 300}, "search": {"budget": 40}, "frontier": dict(FRONTIER)}
    jobs = frontier.jobs(cfg)
    ids = [frontier.job_id(j) for j in jobs]
    assert len(ids) == len(set(ids)) == 3 * 4 + 2 * 7  # 3 MergeMix variants, recovery, proxy, RegMix, small
    core = [j for j in jobs if j.get("core")]
    assert jobs[: len(core)] == core and [j["seed"] for j in core] == sorted(j["seed"] for j in core)
    assert {j["kind"] for j in core} == {"mergemix", "refine", "full", "fixed"}
    assert {j["seed"] for j in jobs if not j.get("core")} == {0, 1}  # other_seeds: the first two
    full = next(j for j in jobs if j["kind"] == "full")
    assert full["counts"] == [1, 2, 3, 4] and full["regmix_counts"] == [2, 4]
    assert frontier.expected(full) == {("proxy_full", n, None) for n in range(1, 5)} | {
        ("regmix_full", 2, None),
        ("regmix_full", 4, None),
    }
    merges = {(j["experts"], j["budget"], j.get("correction")) for j in jobs if j["kind"] == "mergemix"}
    assert merges == {
        (100, 20, None),
        (100, 40, None),
        (300, 20, None),
        (300, 40, None),
        (300, 40, "recovery"),
    }


def test_variants_patch_the_config_sections_they_name():
    cfg = {"experts": {"kind": "full", "tokens": 3}, "search": {"budget": 4, "merge_scale": 1.0}}
    assert frontier.variant(cfg, "lora")["experts"] == {"kind": "lora", "tokens": 3}
    assert frontier.variant(cfg, "scale2.5")["search"] == {"budget": 4, "merge_scale": 2.5}
    assert frontier.variant(cfg, "recovery")["search"]["calibration"] == "recovery"
    assert frontier.variant(cfg, None) == frontier.variant(cfg, "merge") == cfg
    assert cfg["experts"]["kind"] == "full"  # the run's own config is left as it was
    with pytest.raises(MergeMixError, match="unknown frontier variant 'bogus'"):
        frontier.variant(cfg, "bogus")


def test_points_with_all_their_counts_and_a_retrained_run_are_finished(tmp_path):
    job = {"kind": "full", "seed": 0, "counts": [1, 2], "regmix_counts": [2]}
    path = tmp_path / f"{frontier.job_id(job)}.json"

    def pts(*keys, retrained=True):
        return [{"family": f, "settings": {"runs": n}, "retrained": retrained} for f, n in keys]

    path.write_text(json.dumps(pts(("proxy_full", 1), ("proxy_full", 2))))
    assert frontier.finished(job, tmp_path) is None  # RegMix's point is missing: rerun over the cached runs
    path.write_text(
        json.dumps(pts(("proxy_full", 1), ("proxy_full", 2), ("regmix_full", 2), retrained=False))
    )
    assert frontier.finished(job, tmp_path) is None  # written before every point was retrained
    path.write_text(json.dumps(pts(("proxy_full", 1), ("proxy_full", 2), ("regmix_full", 2))))
    assert len(frontier.finished(job, tmp_path)) == 3
    assert frontier.finished({"kind": "fixed", "seed": 1}, tmp_path) is None


def _pt(family, settings, seed, u, flops, train=None):
    return {
        "family": family,
        "label": frontier.FAMILIES[family],
        "settings": settings,
        "seed": seed,
        "U": u,
        "U_std": 0.01,
        "train_tokens": flops / 6,
        "train_flops": flops if train is None else train,
        "eval_flops": 0.0 if train is None else flops - train,
        "total_flops": flops,
        "evaluations": 1,
        "retrained": True,
    }


REF = {"expert_tokens": 3, "budget": 40, "correction": "none"}


def test_crossing_is_interpolated_in_log_cost_per_seed():
    from mergemix.analysis.frontier_report import crossing

    assert crossing([(1.0, 0.30), (4.0, 0.50)], 0.40) == pytest.approx(2.0)  # halfway in log cost
    assert crossing([(1.0, 0.45), (4.0, 0.50)], 0.40) == 1.0  # reached at the first budget
    assert crossing([(1.0, 0.30), (4.0, 0.35)], 0.40) is None  # never: above the largest tried


def test_summary_reports_total_compute_multiples_crossings_and_intervals():
    from mergemix.analysis.frontier_report import markdown, summarise

    rng = np.random.default_rng(0)
    points = []
    for seed in range(5):
        ref_u = 0.40 + rng.normal(0, 0.01)
        points += [
            _pt("mergemix", REF, seed, ref_u, 200.0, train=100.0),  # half of its compute is evaluation
            _pt("proxy_full", {"runs": 1}, seed, ref_u - 0.04, 100.0),
            _pt("proxy_full", {"runs": 2}, seed, ref_u - 0.02 + rng.normal(0, 0.003), 200.0),
            _pt("proxy_full", {"runs": 4}, seed, ref_u + 0.02 + rng.normal(0, 0.003), 400.0),
            _pt("refine", {"runs": 3, "correction": "tilt"}, seed, ref_u + 0.015, 380.0, train=300.0),
            _pt("token", {}, seed, 0.30 + rng.normal(0, 0.01), 0.0),
        ]
    s = summarise(points, REF)
    assert s["reference"]["total_flops"] == pytest.approx(200.0)
    (vs,) = s["refine_vs_strongest"]  # against full-horizon proxy search's 4 runs, the strongest trial point
    assert vs["strongest"]["settings"] == {"runs": 4} and vs["seeds"] == 5
    assert vs["diff"] == pytest.approx(-0.005, abs=0.003) and vs["compute_ratio"] == pytest.approx(0.95)
    row = next(r for r in s["points"] if r["family"] == "proxy_full" and r["settings"]["runs"] == 4)
    assert row["multiple_total"] == pytest.approx(2.0) and row["multiple_train"] == pytest.approx(4.0)
    m = s["match"]
    assert m["family"] == "proxy_full" and m["basis"] == "total_flops" and len(m["delta_0"]["per_seed"]) == 5
    # U crosses the reference halfway (in log cost) between 1x and 2x; a 1 U margin is reached earlier
    assert m["delta_0"]["median"] == pytest.approx(np.sqrt(2), rel=0.1)
    assert m["delta_1"]["median"] < m["delta_0"]["median"]
    lo, hi = m["delta_0"]["ci95"]
    assert lo <= m["delta_0"]["median"] <= hi
    assert s["discriminates"] and s["discrimination"]["p_value"] < 0.05
    text = markdown(s, "t")
    assert "reaches MergeMix's retrained U at 1.4" in text and "× total compute" in text
    from mergemix.analysis.frontier_report import draw

    fig = draw({"embedded": s})
    ax = fig.axes[0]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "embedded: retrained U vs total search compute" in ax.get_title() and "FLOPs" in ax.get_xlabel()
    assert {
        "MergeMix",
        "proxy search, full",
        "MergeMix reference (mean)",
        "token-proportional (no search)",
    } <= set(labels) and len(labels) == len(set(labels))


def test_paired_interval_with_real_variance_is_the_t_interval():
    from scipy import stats

    from mergemix.analysis.frontier_report import paired_ci

    d = [0.01, -0.02, 0.03, 0.015, 0.0]
    half = stats.t.ppf(0.975, 4) * np.std(d, ddof=1) / np.sqrt(5)
    assert paired_ci(d) == pytest.approx([np.mean(d) - half, np.mean(d) + half])
    assert paired_ci([0.01]) is None and paired_ci([0.02, 0.02]) == [0.02, 0.02]


def test_a_testbed_whose_strategies_differ_within_noise_claims_no_multiple():
    from mergemix.analysis.frontier_report import markdown, summarise

    rng = np.random.default_rng(1)
    points = []
    for seed in range(5):
        points += [
            _pt("mergemix", REF, seed, 0.5 + rng.normal(0, 0.01), 10.0),
            _pt("proxy_full", {"runs": 6}, seed, 0.5 + rng.normal(0, 0.01), 300.0),
            _pt("token", {}, seed, 0.5 + rng.normal(0, 0.01), 0.0),
        ]
    s = summarise(points, REF)
    assert not s["discriminates"] and s["discrimination"]["p_value"] > 0.05
    assert "does not discriminate" in markdown(s, "t") and "no multiple is claimed" in markdown(s, "t")
    one_seed = summarise([p for p in points if p["seed"] == 0], REF)
    assert one_seed["discriminates"] is None and "Too few seeds" in markdown(one_seed, "t")


def test_a_family_that_never_matches_is_above_the_largest_multiple_tried():
    from mergemix.analysis.frontier_report import multiple_text, summarise

    points = [_pt("mergemix", REF, s, 0.5 + 0.01 * s, 10.0) for s in range(3)]
    points += [_pt("proxy_full", {"runs": 6}, s, 0.40, 300.0) for s in range(3)]
    m = summarise(points, REF)["match"]
    assert m["delta_0"]["median"] is None and m["max_multiple_tried"] == pytest.approx(30.0)
    assert multiple_text(m).startswith(">30.0x")


def test_readme_results_block_is_the_one_frontier_json_gives():
    from mergemix.analysis.frontier_report import readme_block

    sys.path.insert(0, str(ROOT / "experiments"))
    from frontier import MARKERS

    data = json.loads((ROOT / "reports" / "frontier" / "frontier.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert MARKERS[0] in readme and MARKERS[1] in readme
    block = readme.split(MARKERS[0], 1)[1].split(MARKERS[1], 1)[0]
    assert block.strip() == readme_block(data).strip()


@pytest.mark.slow
def test_frontier_driver_end_to_end_on_micro(tmp_path):
    """experiments/frontier.py at micro size: every family yields points, the report and JSON are written, and a
    rerun finds nothing left to do."""
    args = [
        sys.executable,
        str(ROOT / "experiments" / "frontier.py"),
        "--testbeds",
        "embedded",
        "--workers",
        "2",
        "--out",
        str(tmp_path / "report"),
        "experiment=micro",
        "model=micro",
        "frontier.seeds=[0,1]",
        "frontier.other_seeds=2",
        "frontier.expert_tokens=[8000]",
        "frontier.budgets=[6]",
        "frontier.corrections=[recovery,scale2,lora]",
        "frontier.refine_runs=2",
        "frontier.trial_tokens=[4096]",
        "frontier.trial_counts=[2]",
        "frontier.full_runs=2",
        "frontier.regmix_full_counts=[2]",
        "frontier.small_trial_tokens=4096",
        "frontier.small_counts=[2]",
        "experts.tokens=8000",
        "search.budget=6",
    ]
    env = {**os.environ, "MERGEMIX_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    subprocess.run(args, check=True, env=env, capture_output=True, timeout=900)
    data = json.loads((tmp_path / "report" / "frontier.json").read_text())["testbeds"]["embedded"]
    assert {r["family"] for r in data["points"]} == set(frontier.FAMILIES)
    assert all(len(r["seeds"]) == 2 and r["retrained"] for r in data["points"])
    assert {"match", "discriminates", "discrimination"} <= set(data) and data["match"][
        "basis"
    ] == "total_flops"
    refine = [r for r in data["points"] if r["family"] == "refine"]
    assert {r["settings"]["correction"] for r in refine} == {"tilt", "gain"}
    mm = next(
        r for r in data["points"] if r["family"] == "mergemix" and r["settings"]["correction"] == "none"
    )
    assert all(r["multiple_total"] > mm["multiple_total"] for r in refine)  # it pays MergeMix's cost and more
    assert (tmp_path / "report" / "frontier.png").stat().st_size > 0
    again = subprocess.run(args, check=True, env=env, capture_output=True, text=True, timeout=300)
    assert "embedded: 0 jobs to run" in again.stdout


def test_validate_flags_a_capability_whose_trained_spread_is_within_noise():
    from mergemix.analysis.validate import responsiveness

    def run(a, b):
        return {"capabilities": {"moves": a, "flat": b}, "capabilities_std": {"moves": 0.01, "flat": 0.01}}

    merged = [run(0.1 * i, 0.3) for i in range(4)]
    trained = {
        0: [run(0.1 * i, 0.30 + 0.002 * i) for i in range(4)],
        1: [run(0.1 * i + 0.01, 0.30 - 0.002 * i) for i in range(4)],
    }
    r = responsiveness(merged, trained)
    assert r["moves"]["responsive"] and not r["flat"]["responsive"]
    assert r["flat"]["trained_spread_std"] < r["flat"]["item_noise_std"]
