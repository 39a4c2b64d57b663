"""scripts/gpu_check.{sh,py}: its code path on the CPU with the micro model, the MFU arithmetic, the no-GPU exit."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_code_path_on_cpu_writes_the_report(gpu_check, tmp_path, monkeypatch, capsys):
    from conftest import micro_cfg

    from mergemix.models import describe

    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--root", str(tmp_path / "root"), "--peak-tflops", "2"])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "reports" / "gpu_check.json").read_text())
    tr, ev = report["train"], report["eval"]
    cfg = micro_cfg(tmp_path)
    assert report["params"] == describe(cfg["model"], cfg["tokenizer"]["vocab_size"])["total_params"]
    assert tr["experts"] == ["code", "math"] and tr["steps_per_expert"] == 4
    assert tr["tokens_per_s"] > 0 and all(math.isfinite(v) for v in tr["final_loss"].values())
    assert tr["mfu"] == pytest.approx(6 * report["params"] * tr["tokens_per_s"] / 2e12, rel=1e-3)
    assert ev["mfu"] == pytest.approx(2 * report["params"] * ev["tokens_per_s"] / 2e12, rel=1e-3)
    assert report["merge"]["max_error"] < 1e-5 and ev["tokens"] > 0 and math.isfinite(ev["U"])
    assert not list((tmp_path / "root").glob("gpu_check-*"))  # the expert checkpoints are removed
    assert report["speed"] == {"chunked_loss": 2048, "compile": False, "fused_adamw": True}  # trainer=fsdp's
    loop = report["candidate_loop"]
    assert (
        loop["candidates"] == 2 and loop["tokens_per_candidate"] >= 20_000
    )  # the suite scaled to the target
    assert loop["candidates_per_hour"] == pytest.approx(3600 / (loop["merge_s"] + loop["eval_s"]), rel=0.02)
    assert (
        loop["evaluator_tokens_per_s"] > 0
        and loop["forward_tokens_per_s"] > 0
        and loop["evaluator_vs_forward"] > 0
    )
    assert loop["mfu"] == pytest.approx(
        2 * report["params"] * loop["evaluator_tokens_per_s"] / 2e12, rel=1e-3
    )
    out = capsys.readouterr().out
    assert "tokens/s, MFU" in out and "report:" in out and "candidates/h" in out and "x a bare forward" in out


def test_peak_table(gpu_check):
    assert gpu_check.peak_tflops("NVIDIA H200") == 989
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_check.peak_tflops("Some Future GPU") is None and gpu_check.mfu(10, 5.0, None) is None
    assert gpu_check.mfu(10**9, 1e5, 989) == pytest.approx(6e14 / 989e12)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_both_entry_points_stop_with_one_clear_line(gpu_check, capsys):
    assert gpu_check.main([]) == 2
    assert "error: no GPU" in capsys.readouterr().err
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert res.returncode == 2 and res.stderr.strip().startswith("error: no GPU"), res.stderr


def test_plain_and_compile_runs_get_their_own_report(gpu_check, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    args = [
        "--device",
        "cpu",
        "--tiny",
        "--root",
        str(tmp_path / "root"),
        "--candidates",
        "0",
        "--strategy",
        "single",
    ]
    assert gpu_check.main([*args, "--plain", "--compile"]) == 0
    assert "trainer.compile needs a CUDA device: training runs eagerly" in caplog.messages
    report = json.loads((tmp_path / "out" / "reports" / "gpu_check-single-plain-compile.json").read_text())
    assert report["speed"] == {"chunked_loss": None, "compile": True, "fused_adamw": None}
    assert report["candidate_loop"] is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_candidate_loop_on_the_gpu(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert gpu_check.main(["--tiny", "--root", str(tmp_path / "root"), "--eval-tokens", "100000"]) == 0
    loop = json.loads((tmp_path / "out" / "reports" / "gpu_check.json").read_text())["candidate_loop"]
    assert (
        loop["candidates"] == 2
        and loop["tokens_per_candidate"] >= 100_000
        and loop["evaluator_vs_forward"] > 0
    )
