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
    out = capsys.readouterr().out
    assert "tokens/s, MFU" in out and "report:" in out


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
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                         timeout=120, check=False, env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 2 and res.stderr.strip().startswith("error: no GPU"), res.stderr
