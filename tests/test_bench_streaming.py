"""`make bench` streaming part on a small synthetic checkpoint: it runs, cleans up, and reports a peak RSS."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import streaming

SMALL = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 176,
    "max_position_embeddings": 128,
}


@pytest.mark.slow  # a merge in a measured subprocess
def test_streaming_bench_measures_a_subprocess(tmp_path):
    row = streaming.measure(SMALL, "small", tmp_path)
    assert row["params"] > streaming.VOCAB * 64 and row["model_gb"] == 2 * row["params"] / 1e9
    assert row["rss_peak_gb"] >= row["rss_before_gb"] > 0 and row["merge_s"] > 0
    assert row["in_memory_gb"] == (streaming.K + 2) * 4 * row["params"] / 1e9
    assert list(tmp_path.iterdir()) == []  # the synthetic checkpoints are removed

    from bench import common, report

    info = {**common.machine(), "loadavg_1min_end": 0.0}
    rows = {
        "params": 1,
        "size": "x",
        "K": 2,
        "threads": 1,
        "ratio": 1.0,
        "forward_ratio": 1.0,
        "precision": "32-true",
    }
    check = {"size": "x", "K": 2, "N": 1, "loop_s": 1.0, "predicted_s": 1.0}
    res = report.assemble(
        info,
        True,
        {"train": [("x", "32-true")]},
        [rows],
        [rows],
        [rows],
        [],
        check,
        [],
        [],
        1.0,
        stream_rows=[row],
    )
    assert (
        res["stream_rss_ratio"] == row["rss_goal_ratio"]
        and res["goals"]["stream_rss_ratio"]["met"] is not None
    )
    assert "## Streaming merge" in report.markdown(res)


def test_synthetic_experts_differ_from_the_base_by_the_noise(tmp_path):
    from safetensors.torch import load_file

    specs = streaming.tensor_specs(SMALL)
    streaming.write_checkpoint(tmp_path / "b", SMALL, specs, None)
    streaming.write_checkpoint(tmp_path / "e", SMALL, specs, 0)
    b, e = load_file(tmp_path / "b" / "model.safetensors"), load_file(tmp_path / "e" / "model.safetensors")
    assert sorted(b) == [n for n, _ in specs]
    d = (e["model.norm.weight"].float() - b["model.norm.weight"].float()).std()
    assert 0.3 * streaming.NOISE < d < 3 * streaming.NOISE
