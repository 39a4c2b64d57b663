"""`make bench` pieces on the micro model: they run and return positive finite numbers (no timing thresholds)."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, evaluate, merge, report, scaling, train
from mergemix.merging import ExpertBank
from mergemix.models import build_model


@pytest.fixture(autouse=True)
def one_thread():
    """Single-threaded: a busy machine then cannot stall every parallel region (the test checks no timing)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _positive(rows, *keys):
    for r in rows:
        for k in keys:
            assert math.isfinite(r[k]) and r[k] > 0, (k, r)


def test_synthetic_bank_merges_like_expert_bank():
    base = common.build(common.model_cfg("micro"))
    fake = merge.synthetic_bank(base, 3)
    experts = {}
    for i, name in enumerate(fake.names):
        experts[name] = build_model(common.model_cfg("micro"), common.VOCAB, 0)
        for pname, p in experts[name].named_parameters():
            p.data += fake.deltas[pname][i].view_as(p)
    real, target = ExpertBank(base, experts), common.build(common.model_cfg("micro"))
    weights = [0.2, 0.3, 0.5]
    fake.merge_into(target, weights)
    merged = {n: p.detach().clone() for n, p in target.named_parameters()}
    real.merge_into(target, weights)
    for n, p in target.named_parameters():
        torch.testing.assert_close(p, merged[n], rtol=0, atol=1e-6)


@pytest.mark.slow  # every bench piece on the micro model
def test_bench_pieces_run_on_micro(tmp_path):
    rows = merge.measure(common.model_cfg("micro"), common.VOCAB, 2, repeats=1, threads=[1])
    _positive(rows, "merge_s", "copy_s", "merge_gbps", "ratio")

    tok, tasks = common.tokenizer_and_tasks(tmp_path, 8)
    tm = evaluate.lmeval_tasks(tmp_path, tasks) if evaluate.lmeval_available() else None
    ev = evaluate.measure("micro", tok, tasks, repeats=1, tm=tm)
    _positive([ev], "evaluator_s", "forward_s", "forward_ratio", "forward_ratio_bf16")
    if tm is not None:
        _positive([ev], "lm_eval_s", "lmeval_speedup")
        assert ev["acc_identical"], (ev["acc_ours"], ev["acc_lm_eval"])

    tr = train.measure("micro", steps=2, warmup=1, repeats=1, precision="32-true")
    _positive([tr], "lightning_tok_s", "plain_tok_s", "ratio")
    assert tr["same_weights"]

    sc = scaling.measure("micro", tok, tasks, repeats=1)
    _positive(sc, "merge_s", "evaluate_s", "N80_s")
    scaling.plot(sc, tmp_path / "scaling.png")
    check = {"size": "micro", "K": 4, "N": 20, "loop_s": 1.0, "predicted_s": 1.0}
    info = {**common.machine(), "loadavg_1min_end": 0.0}
    plan = {"train": [("micro", "32-true")]}
    res = report.assemble(
        info, True, plan, [{"size": "micro", **r} for r in rows], [ev], [tr], sc, check, [], [], 1.0
    )
    report.write(res, tmp_path)
    assert (tmp_path / "bench.md").read_text().startswith("# MergeMix benchmarks")
    assert set(report.GOALS) <= set(res)


def test_workers_row_reaches_the_headline(tmp_path):
    row = {
        "setting": "experiment=micro",
        "torch_threads": 2,
        "W1_s": 2.0,
        "W2_s": 1.0,
        "speedup": 2.0,
        "same_alpha": True,
        "alpha_star": {"a": 1.0},
        "rounds_s": {"W1": [2.0], "W2": [1.0]},
    }
    info = {**common.machine(), "loadavg_1min_start": 0.0, "loadavg_1min_end": 0.0, "mergekit": "x"}
    m = {"size": "micro", "params": 1, "K": 2, "threads": 1, "ratio": 1.0}
    e = {"size": "micro", "params": 1, "forward_ratio": 1.0}
    t = {"size": "micro", "params": 1, "precision": "32-true", "ratio": 1.0}
    check = {"size": "micro", "K": 4, "N": 20, "loop_s": 1.0, "predicted_s": 1.0}
    res = report.assemble(
        info, True, {"train": [("micro", "32-true")]}, [m], [e], [t], [], check, [], [], 1.0, workers_row=row
    )
    assert res["search_workers_speedup"] == 2.0 and res["goals"]["search_workers_speedup"]["met"]
    assert "W=1 / W=2" in report.markdown(res)
    res = report.assemble(
        info,
        True,
        {"train": [("micro", "32-true")]},
        [m],
        [e],
        [t],
        [],
        check,
        [],
        [],
        1.0,
        workers_row={**row, "same_alpha": False},
    )
    assert res["search_workers_speedup"] is None  # a different alpha* is no speed-up


@pytest.mark.slow  # trains the micro base and experts, then four searches
def test_workers_bench_on_micro(tmp_path):
    from bench import workers

    row, notes = workers.run(True, tmp_path, repeats=1)
    assert row["same_alpha"] and not notes and row["W1_s"] > 0 and row["W2_s"] > 0
