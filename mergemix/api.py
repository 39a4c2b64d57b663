"""The Python API, for notebooks and scripts: compose a config as the CLI does, open the pipeline on it, run a
stage, read alpha* and scores. Every stage is cached as in the CLI (a second call reuses what exists).

    from mergemix import api

    cfg = api.compose("experiment=micro", "search=tpe")     # Hydra overrides, as on the command line
    found = api.search(cfg)                                 # alpha*, its predicted and verified scores
    found["alpha_star"], found["verified"]["U"]
    scores = api.evaluate(cfg, "path/to/checkpoint")        # U, U_std, capabilities, tasks
    summary = api.run(cfg)                                  # all stages: what `mergemix run` writes
"""

from __future__ import annotations

import time
from pathlib import Path

from mergemix.pipeline import Pipeline


def compose(*overrides: str, config_dir: str | None = None) -> dict:
    """The resolved config (a plain dict) for these overrides; bad input raises MergeMixError."""
    from mergemix.cli import compose as hydra_compose
    from mergemix.cli import to_plain

    return to_plain(hydra_compose(list(overrides), config_dir))


def pipeline(cfg: dict, run_dir: str | Path | None = None) -> Pipeline:
    """The pipeline on `cfg`, logging one run per stage as `cfg["logger"]` says; `run_dir` defaults to
    paths.run_dir, else <paths.root>/runs/<run_name>/<time>."""
    from mergemix.commands import tracker_for

    run_dir = Path(
        run_dir
        or cfg["paths"].get("run_dir")
        or Path(cfg["paths"]["root"]) / "runs" / cfg["run_name"] / time.strftime("%Y-%m-%d_%H-%M-%S")
    )
    return Pipeline(cfg, run_dir, tracker_for(cfg, run_dir))


def search(cfg: dict) -> dict:
    """alpha* and its scores: mixture.yaml's content (alpha_star, predicted, verified, best_seed, ...)."""
    import yaml

    return yaml.safe_load((pipeline(cfg).search_dir / "mixture.yaml").read_text())


def evaluate(cfg: dict, checkpoint: str | Path) -> dict:
    """A checkpoint's scores on the configured benchmarks: U, U_std, capabilities, tasks."""
    return pipeline(cfg).evaluate_checkpoint(Path(checkpoint))


def run(cfg: dict, run_dir: str | Path | None = None) -> dict:
    """All stages, as `mergemix run`: returns summary.json's content."""
    return pipeline(cfg, run_dir).run()
