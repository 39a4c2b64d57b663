import json
import subprocess
import sys

import pytest
import yaml
from conftest import micro_cfg

from mergemix.pipeline import Pipeline


def _artifacts(root):
    return {p.relative_to(root).as_posix() for p in (root / "cache").glob("*/*") if (p / "manifest.json").is_file()}


def test_micro_end_to_end_outputs(micro_run):
    pipe, _summary = micro_run
    run = pipe.run_dir
    for f in ("table.md", "table.csv", "table.png", "summary.json", "mixture.yaml", "seeds.csv"):
        assert (run / f).is_file(), f
    s = json.loads((run / "summary.json").read_text())
    assert set(s["alpha_star"]) == {"code", "math", "prose", "sft"}
    assert abs(sum(s["alpha_star"].values()) - 1) < 1e-5
    rows = s["rows"]
    assert {"base", "expert:code", "expert:math", "expert:prose", "expert:sft", "uniform (trained)",
            "mergemix (trained)", "mergemix (merge)"} <= set(rows)
    assert all("U" in r and set(r["capabilities"]) == {"code", "instruct", "language", "math"} for r in rows.values())
    mix = yaml.safe_load((run / "mixture.yaml").read_text())
    assert mix["domains"] == ["code", "math", "prose", "sft"]
    assert list(mix["alpha_star"]) == mix["domains"]
    assert "U" in mix["predicted"] and "U" in mix["verified"]
    assert "calibration" in s and "expert_gains" in s["calibration"]


def test_second_run_reuses_every_artifact(micro_run, micro_root, tmp_path):
    before = _artifacts(micro_root)
    cfg = micro_cfg(micro_root, f"paths.run_dir={tmp_path}/again")
    summary = Pipeline(cfg, cfg["paths"]["run_dir"]).run()
    assert _artifacts(micro_root) == before
    assert summary["alpha_star"] == micro_run[1]["alpha_star"]


@pytest.mark.slow  # a subprocess mixture run with offline W&B
def test_wandb_logger_offline_one_run_per_stage(micro_run, micro_root, tmp_path):
    import os

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    res = subprocess.run([sys.executable, "-m", "mergemix.cli", "mix", "experiment=micro", "logger=wandb",
                          "weights={code: 0.1, math: 0.2, prose: 0.3, sft: 0.4}", f"paths.root={micro_root}",
                          f"paths.run_dir={tmp_path}/wb"], capture_output=True, text=True, check=False, env=env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # base and experts were cached: only the mixture stage trained
    assert any(runs[0].rglob("*.wandb"))
