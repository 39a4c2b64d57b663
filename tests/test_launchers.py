"""Hydra launchers of the `[slurm]` extra: `hydra/launcher=slurm` composes, and a multirun of expert jobs runs
through submitit's local launcher (separate processes, one base shared through the cache)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_slurm_launcher_composes_one_task_per_gpu():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mergemix.cli import CONF_DIR
    from mergemix.cli import compose as mergemix_compose

    mergemix_compose(["experiment=micro", "hydra/launcher=slurm"])  # the CLI's check before Hydra starts
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["experiment=micro", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 4 and launcher.nodes == 1


@pytest.mark.slow
def test_expert_jobs_run_through_submitit_local(tmp_path):
    """`mergemix experts -m expert_domain=code,math hydra/launcher=submitit_local`: two jobs, each trains its expert
    on the one base that only the first of them trained."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mergemix.cli",
            "experts",
            "-m",
            "expert_domain=code,math",
            "experiment=micro",
            "hydra/launcher=submitit_local",
            "logger=none",
            f"paths.root={tmp_path}",
            "base.tokens=8000",
            "experts.tokens=4000",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    logs = sorted(tmp_path.glob("multirun/micro/*/.submitit/*/*_log.out"))
    outs = [p.read_text() for p in logs]
    assert len(outs) == 2 and all("Job completed successfully" in o for o in outs)
    reports = [json.loads(o[o.index("{\n") : o.index("\n}\n") + 2]) for o in outs]
    assert sorted(d for r in reports for d in r["experts"]) == ["code", "math"]
    assert len({r["base"] for r in reports}) == 1 and sum(o.count("[base] ") for o in outs) == 1
    assert all(Path(p).is_dir() for r in reports for p in r["experts"].values())
