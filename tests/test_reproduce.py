"""`make reproduce`: tables rendered from finished runs; the driver end to end on the micro model (slow)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce", ROOT / "experiments" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)


def _result(sweep: Path, job: int, strategy: str, seed: int, u: float, tokens: float) -> dict:
    r = {
        "strategy": strategy,
        "seed": seed,
        "alpha": {"a": 0.25, "b": 0.75},
        "U": u,
        "U_std": 0.01,
        "capabilities": {"x": u + 0.1, "y": u - 0.1},
        "curve": [],
        "cost": {"train_tokens": tokens, "flops": 6 * tokens, "evaluations": 20, "wall_s": 1.0},
    }
    (sweep / str(job)).mkdir(parents=True)
    (sweep / str(job) / "result.json").write_text(json.dumps(r))
    return r


def test_tables_1_and_6_come_from_the_sweeps_results(tmp_path):
    from mergemix.analysis.compare import aggregate

    sweep = tmp_path / "table1_6"
    _result(sweep, 0, "surrogate", 0, 0.30, 1e6)
    _result(sweep, 1, "surrogate", 1, 0.34, 1e6)
    _result(sweep, 2, "proxy", 0, 0.31, 4e6)
    _result(sweep, 3, "uniform", 0, 0.20, 0.0)
    aggregate(sweep)
    t1 = reproduce.table1(sweep).splitlines()
    assert t1[0].startswith("| strategy | x | y | U (average) |")
    rows = {line.split(" | ")[0][2:]: line for line in t1[2:]}
    assert list(rows) == ["uniform (token-proportional)", "proxy-training search", "MergeMix"]
    assert "| 32.0 ± 2.0 |" in rows["MergeMix"]  # U over the two seeds, x100
    assert "| 42.0 ± 2.0 |" in rows["MergeMix"]  # capability x = U + 0.1
    t6 = reproduce.table6(sweep, 1000)
    assert "| proxy | 4e+06 |" in t6 and "| 4.00x |" in t6
    assert "| surrogate | 1e+06 |" in t6 and "| 1.00x |" in t6
    assert t6.startswith("Model size: 1,000 parameters.")


def test_report_marks_a_failed_step_and_embeds_a_finished_one(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "report"
    (runs / "theory").mkdir(parents=True)
    (runs / "theory" / "theory.md").write_text("| gamma | 1.0 |")
    (runs / "theory" / "theory_gamma.png").write_bytes(b"png")
    status = {
        "table2": {"rc": 1, "wall_s": 6.0, "command": "mergemix validate"},
        "theory": {"rc": 0, "wall_s": 60.0, "command": "mergemix theory"},
    }
    text = reproduce.write_report("micro", runs, out, status, [0]).read_text()
    assert "**FAILED (exit 1), see table2.log**" in text
    assert "| gamma | 1.0 |" in text and "![theory_gamma](theory_theory_gamma.png)" in text
    assert (out / "theory_theory_gamma.png").read_bytes() == b"png"


@pytest.mark.slow
def test_reproduce_on_micro_end_to_end(tmp_path):
    env = {**os.environ, "MERGEMIX_HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "reproduce.py"),
            "--size",
            "micro",
            "--only",
            "table2",
            "theory",
            "--report-dir",
            str(tmp_path / "report"),
            "validate.n_mixtures=3",
            "logger=none",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = (tmp_path / "report" / "README.md").read_text()
    assert "## Table 2" in report and "noise-ceiling" in report and "theory_cosines" in report
    status = json.loads((tmp_path / "reproduce" / "micro" / "status.json").read_text())
    assert set(status) == {"table2", "theory"} and all(s["rc"] == 0 for s in status.values())


@pytest.mark.parametrize("size", sorted(reproduce.SIZE_OVERRIDES))
def test_every_size_composes_to_a_config_that_passes_the_checks(size, tmp_path):
    from mergemix.checks import check_config
    from mergemix.cli import compose, to_plain

    args = [a for a in reproduce.commands(size, [0], tmp_path, [])["table2"] if "=" in a]
    cfg = to_plain(compose([*args, f"paths.root={tmp_path}"]))  # an override's typo or bad number fails here
    check_config(cfg)
    assert cfg["model"]["name"] == size
    if (
        size == "small"
    ):  # the sizing DECISIONS.md gives: a noise ceiling, and baselines on the experts' tokens
        assert len(cfg["validate"]["seeds"]) >= 2
        experts_tokens = len(cfg["domains"]["sources"]) * cfg["experts"]["tokens"]
        assert cfg["baseline"]["budget"] * cfg["baseline"]["trial_tokens"] == experts_tokens
