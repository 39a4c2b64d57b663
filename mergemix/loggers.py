"""Experiment loggers: CSV by default; W&B with one run per stage, grouped per pipeline run."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def make_logger_factory(logger_cfg: dict, run_dir: Path, group: str) -> Callable | None:
    kind = logger_cfg.get("kind", "csv")
    if kind == "none":
        return None
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return lambda stage, _tmp: CSVLogger(save_dir=str(run_dir / "logs"), name=stage.replace(":", "-"))
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        mode = logger_cfg.get("mode") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        os.environ.setdefault("WANDB_MODE", mode)

        def factory(stage: str, _tmp):
            return WandbLogger(project=logger_cfg.get("project", "mergemix"), entity=logger_cfg.get("entity"),
                               name=stage, group=group, job_type=stage.split(":")[0], save_dir=str(run_dir),
                               mode=mode)
        return factory
    from mergemix.errors import MergeMixError
    raise MergeMixError(f"unknown logger kind '{kind}' (csv, wandb, none)")
