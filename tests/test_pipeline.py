import json

import yaml
from conftest import micro_cfg

from mergemix.pipeline import Pipeline


def _artifacts(root):
    return {
        p.relative_to(root).as_posix()
        for p in (root / "cache").glob("*/*")
        if (p / "manifest.json").is_file()
    }


def test_micro_end_to_end_outputs(micro_run):
    pipe, _summary = micro_run
    run = pipe.run_dir
    for f in ("table.md", "table.csv", "table.png", "summary.json", "mixture.yaml", "seeds.csv"):
        assert (run / f).is_file(), f
    s = json.loads((run / "summary.json").read_text())
    assert set(s["alpha_star"]) == {"code", "math", "prose", "sft"}
    assert abs(sum(s["alpha_star"].values()) - 1) < 1e-5
    rows = s["rows"]
    assert {
        "base",
        "expert:code",
        "expert:math",
        "expert:prose",
        "expert:sft",
        "uniform (trained)",
        "mergemix (trained)",
        "mergemix (merge)",
    } <= set(rows)
    assert all(
        "U" in r and set(r["capabilities"]) == {"code", "instruct", "language", "math"} for r in rows.values()
    )
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
