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
from mergemix.stages.report import verdict

ROOT = Path(__file__).resolve().parents[1]


def _result(caps, std=0.01, u_std=0.005):
    return {"capabilities": dict(caps), "capabilities_std": {c: std for c in caps}, "U": float(np.mean(list(
        caps.values()))), "U_std": u_std}


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
    arch = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 32,
            "max_position_embeddings": 16}
    base, e1, e2, target = (build_model(arch, 50, s) for s in range(4))
    bank = ExpertBank(base, {"x": e1, "y": e2})
    bank.merge_into(target, {"x": 0.25, "y": 0.75}, scale=2.0)
    p = dict(target.named_parameters())
    for name, p0 in base.named_parameters():
        want = p0 + 2.0 * (0.25 * (dict(e1.named_parameters())[name] - p0)
                           + 0.75 * (dict(e2.named_parameters())[name] - p0))
        torch.testing.assert_close(p[name], want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- objective, choice ---
def test_list_objective_is_the_macro_average_of_its_capabilities():
    caps = {"a": 0.1, "b": 0.5, "c": 0.9}
    res = _result(caps, std=0.02)
    assert utility(caps, ["a", "c"]) == pytest.approx(0.5)
    assert result_utility(res, ["a", "b"]) == pytest.approx(0.3)
    assert result_utility(res, "b") == 0.5 and result_utility(res) == pytest.approx(0.5)
    assert objective_std(res, ["a", "b"]) == pytest.approx(np.sqrt(2 * 0.02 ** 2) / 2)


def test_alpha_choice_switches_to_the_best_merge_only_beyond_noise():
    util = lambda r: r["U"]
    proposal = np.array([0.5, 0.5])
    searched = [(np.array([1.0, 0.0]), {"U": 0.30, "U_std": 0.01}), (np.array([0.0, 1.0]), {"U": 0.20,
                                                                                              "U_std": 0.01})]
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


def test_verdict_names_each_failed_check_with_a_fix():
    calib = {"expert_gains": {"code": {"domain": "code", "clear": False, "sigmas": 1.2},
                              "math": {"domain": "math", "clear": True, "sigmas": 6.0}},
             "tradeoff": {"best_is_interior": False},
             "responsiveness": {"code": {"responsive": False}, "math": {"responsive": True}}}
    lines = verdict(calib, {"code": 0.2, "math": 0.9}, {"switched_to_best_merge": True})
    text = "\n".join(lines)
    assert len(lines) == 5
    assert "expert:code does not clearly lift code" in text and "expert:math" not in text
    assert "vertex" in text and "CV Spearman code 0.20" in text and "search.objective=[math]" in text
    good = {"expert_gains": {"m": {"domain": "m", "clear": True, "sigmas": 5.0}},
            "tradeoff": {"best_is_interior": True}, "responsiveness": {"m": {"responsive": True}}}
    assert verdict(good, {"m": 0.8}, {"switched_to_best_merge": False}) == []


# ------------------------------------------------------------------------------------------------ frontier ---
def test_trained_tokens_are_whole_batches():
    assert trained_tokens(60_000, {"seq_len": 256, "batch_size": 16}) == 57_344


def test_jobs_cover_every_point_seed_by_seed():
    cfg = {"experts": {"tokens": 300}, "search": {"budget": 40},
           "frontier": {"seeds": [0, 1], "expert_tokens": [100, 300], "budgets": [20, 40],
                        "corrections": ["recovery"], "trial_tokens": [10], "trial_counts": [5, 10],
                        "full_counts": [3], "small_model": "micro", "small_trial_tokens": 10, "small_counts": [4]}}
    jobs = frontier.jobs(cfg)
    ids = [frontier.job_id(j) for j in jobs]
    assert len(ids) == len(set(ids)) == 2 * 9
    assert [j["seed"] for j in jobs] == sorted(j["seed"] for j in jobs)
    merges = {(j["experts"], j["budget"], j.get("correction")) for j in jobs if j["kind"] == "mergemix"}
    assert merges == {(100, 40, None), (300, 20, None), (300, 40, None), (300, 40, "recovery")}
    cfg["frontier"]["variant_seeds"] = [0]  # other settings than the reference on seed 0 only
    seed1 = {(j["experts"], j["budget"], j.get("correction")) for j in frontier.jobs(cfg)
             if j["kind"] == "mergemix" and j["seed"] == 1}
    assert seed1 == {(300, 40, None), (300, 40, "recovery")}


def test_variants_patch_the_config_sections_they_name():
    cfg = {"experts": {"kind": "full", "tokens": 3}, "search": {"budget": 4, "merge_scale": 1.0}}
    assert frontier.variant(cfg, "lora")["experts"] == {"kind": "lora", "tokens": 3}
    assert frontier.variant(cfg, "scale2.5")["search"] == {"budget": 4, "merge_scale": 2.5}
    assert frontier.variant(cfg, "recovery")["search"]["calibration"] == "recovery"
    assert frontier.variant(cfg, None) == frontier.variant(cfg, "merge") == cfg
    assert cfg["experts"]["kind"] == "full"  # the run's own config is left as it was
    with pytest.raises(MergeMixError, match="unknown frontier variant 'bogus'"):
        frontier.variant(cfg, "bogus")


def test_points_with_all_their_counts_are_finished(tmp_path):
    job = {"kind": "full", "seed": 0, "counts": [4, 15]}
    path = tmp_path / f"{frontier.job_id(job)}.json"
    path.write_text(json.dumps([{"settings": {"runs": 4}}]))
    assert frontier.finished(job, tmp_path) is None  # 15 runs asked for: rerun over the cached 4
    path.write_text(json.dumps([{"settings": {"runs": 4}}, {"settings": {"runs": 15}}]))
    assert len(frontier.finished(job, tmp_path)) == 2
    assert frontier.finished({"kind": "fixed", "seed": 1}, tmp_path) is None


def _pt(family, settings, seed, u, flops):
    return {"family": family, "label": frontier.FAMILIES[family], "settings": settings, "seed": seed, "U": u,
            "U_std": 0.01, "train_tokens": flops / 6, "train_flops": flops, "eval_flops": 0.0, "evaluations": 1}


def test_summary_finds_the_smallest_matching_multiple():
    ref = {"expert_tokens": 3, "budget": 40, "correction": "none"}
    points = []
    for seed, noise in enumerate([0.0, 0.01, -0.01]):
        points += [_pt("mergemix", ref, seed, 0.40 + noise, 100.0),
                   _pt("proxy", {"runs": 5}, seed, 0.35 + noise, 50.0),
                   _pt("proxy", {"runs": 20}, seed, 0.41 + noise, 400.0),
                   _pt("regmix", {"runs": 20}, seed, 0.42 + noise, 200.0),
                   _pt("token", {}, seed, 0.30, 0.0)]
    s = frontier.summarise(points, ref)
    assert s["proxy_multiple_to_match"] == pytest.approx(2.0)  # RegMix at 2x beats proxy at 4x
    assert s["by_family"]["proxy"] == {"multiple_to_match": pytest.approx(4.0), "max_multiple_tried":
                                       pytest.approx(4.0)}
    row = next(r for r in s["points"] if r["family"] == "proxy" and r["settings"]["runs"] == 5)
    assert row["diff_vs_reference"] == pytest.approx(-0.05) and row["diff_ci95"][1] < 0
    assert "2.00x" in frontier.markdown(s, "t")


def test_summary_reports_no_match_with_the_largest_multiple_tried():
    ref = {"expert_tokens": 3, "budget": 40, "correction": "none"}
    points = [_pt("mergemix", ref, s, 0.5, 10.0) for s in range(2)]
    points += [_pt("proxy_full", {"runs": 6}, s, 0.45, 300.0) for s in range(2)]
    s = frontier.summarise(points, ref)
    assert s["proxy_multiple_to_match"] is None and s["max_multiple_tried"] == pytest.approx(30.0)
    assert "none of them matched it within 30.0x" in frontier.markdown(s, "t")


@pytest.mark.slow
def test_frontier_driver_end_to_end_on_micro(tmp_path):
    """experiments/frontier.py at micro size: every family yields points, the report and JSON are written, and a
    rerun finds nothing left to do."""
    args = [sys.executable, str(ROOT / "experiments" / "frontier.py"), "--testbeds", "embedded", "--workers", "2",
            "--out", str(tmp_path / "report"), "experiment=micro", "model=micro", "frontier.seeds=[0,1]",
            "frontier.expert_tokens=[8000]", "frontier.budgets=[6]", "frontier.corrections=[recovery,scale2,lora]",
            "frontier.trial_tokens=[4096]", "frontier.trial_counts=[2]", "frontier.full_counts=[2]",
            "frontier.small_trial_tokens=4096", "frontier.small_counts=[2]", "experts.tokens=8000",
            "search.budget=6"]
    env = {**os.environ, "MERGEMIX_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    subprocess.run(args, check=True, env=env, capture_output=True, timeout=900)
    data = json.loads((tmp_path / "report" / "frontier.json").read_text())["testbeds"]["embedded"]
    assert {r["family"] for r in data["points"]} == set(frontier.FAMILIES)
    assert all(len(r["seeds"]) == 2 for r in data["points"])
    assert (tmp_path / "report" / "frontier.png").stat().st_size > 0
    again = subprocess.run(args, check=True, env=env, capture_output=True, text=True, timeout=300)
    assert "embedded: 0 jobs to run" in again.stdout


def test_validate_flags_a_capability_whose_trained_spread_is_within_noise():
    from mergemix.analysis.validate import responsiveness

    def run(a, b):
        return {"capabilities": {"moves": a, "flat": b}, "capabilities_std": {"moves": 0.01, "flat": 0.01}}

    merged = [run(0.1 * i, 0.3) for i in range(4)]
    trained = {0: [run(0.1 * i, 0.30 + 0.002 * i) for i in range(4)],
               1: [run(0.1 * i + 0.01, 0.30 - 0.002 * i) for i in range(4)]}
    r = responsiveness(merged, trained)
    assert r["moves"]["responsive"] and not r["flat"]["responsive"]
    assert r["flat"]["trained_spread_std"] < r["flat"]["item_noise_std"]
