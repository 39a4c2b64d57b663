"""Experiment tracking: one run per stage, opened and finished in one place (`Tracker.stage`).

A stage run carries the settings that identify its run (`identity`: model, domains, benchmarks, seeds, strategy,
run name) and the values that determine the stage (`inputs`, with its `cache_key`) as its config, and the stage as
its job type; one metric vocabulary everywhere: `U`, `U_std`, `score/<capability>`, `mixture/<domain>`, `cost/*`
(per trial in history: `alpha/<domain>`, kept out of the summary). What the stage reports (metrics per step, a summary, tables, images, files as artifacts) goes through `StageRun`. Kinds:
wandb (one W&B run per stage, grouped per pipeline run; offline unless WANDB_API_KEY is set: tables, images and
artifacts too), none, or any Lightning logger named by `_target_` and its arguments (conf/logger/csv.yaml,
tensorboard.yaml, mlflow.yaml: a new logger is a YAML file), one per stage: config as hyperparameters, metrics and
summary as rows."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from mergemix.errors import MergeMixError, mask_secrets

KINDS = ("wandb", "none")  # and "lightning": a logger config with `_target_`


class StageRun:
    """What one stage reports. Without a tracking backend every method does nothing."""

    def __init__(self, run=None, lightning=None):
        self.run, self._lightning = (
            run,
            lightning,
        )  # a wandb Run (kind wandb), a Lightning logger (csv, wandb)

    @property
    def active(self) -> bool:
        """Whether anything is recorded (a backend is attached)."""
        return self.run is not None or self._lightning is not None

    @property
    def id(self) -> str | None:
        return getattr(self.run, "id", None)

    def lightning(self):
        """The Lightning logger of this run, for a Trainer (None: train without a logger)."""
        return self._lightning

    def history_only(self, *patterns: str) -> None:
        """Metrics (globs) whose last value is no result: kept out of the summary, in the history only."""
        if self.run is not None:
            for p in patterns:
                self.run.define_metric(p, summary="none")

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.run is not None:  # committed now: a step held back to the finish would overwrite the summary
            self.run.log(metrics, step=step, commit=True)
        elif self._lightning is not None:
            self._lightning.log_metrics(metrics, step=step)

    def summary(self, values: dict) -> None:
        """Final values of the stage (W&B summary; a CSV row)."""
        if self.run is not None:
            self.run.summary.update(values)
        elif self._lightning is not None:
            self._lightning.log_metrics({k: v for k, v in values.items() if isinstance(v, (int, float))})

    def table(self, name: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Table(columns=columns, data=rows)})

    def image(self, name: str, path: str | Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Image(str(path), caption=Path(path).name)})

    def artifact(self, name: str, kind: str, paths: list[str | Path], metadata: dict | None = None) -> None:
        """Files or directories as one artifact (W&B only: the run directory holds them already)."""
        if self.run is not None:
            import wandb

            art = wandb.Artifact(name, type=kind, metadata=metadata)
            for p in map(Path, paths):
                art.add_dir(str(p), name=p.name) if p.is_dir() else art.add_file(str(p))
            self.run.log_artifact(art)


class Tracker:
    """`with tracker.stage(name, job_type, config) as run:` opens the stage's run and finishes it on exit (failed
    when the stage raised)."""

    def __init__(
        self, logger_cfg: dict | None, run_dir: str | Path, group: str, identity: dict | None = None
    ):
        self.cfg, self.run_dir, self.group = dict(logger_cfg or {"kind": "none"}), Path(run_dir), group
        self.identity = dict(identity or {})  # in every run's config (`identity(cfg)`)
        self.kind = "lightning" if "_target_" in self.cfg else self.cfg.get("kind", "none")
        if self.kind not in (*KINDS, "lightning"):
            raise MergeMixError(
                f"unknown logger kind '{self.kind}' (wandb, none, or a Lightning logger's _target_ "
                f"as in conf/logger/csv.yaml)"
            )
        if self.kind == "wandb":
            self.mode = (
                self.cfg.get("mode")
                or os.environ.get("WANDB_MODE")
                or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            )

    @contextlib.contextmanager
    def stage(self, name: str, job_type: str, config: dict | None = None) -> Iterator[StageRun]:
        run = self._open(name, job_type, config or {})
        failed = True
        try:
            yield run
            failed = False
        finally:
            self._finish(run, failed)

    def _open(self, name: str, job_type: str, config: dict) -> StageRun:
        if self.kind == "none":
            return StageRun()
        config = mask_secrets({**self.identity, **config})  # a storage URL's password is never tracked
        if self.kind == "lightning":
            logger = self._lightning_logger(name.replace(":", "-"))
            logger.log_hyperparams({"job_type": job_type, **config})
            return StageRun(lightning=logger)
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        self.run_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=self.cfg.get("project", "mergemix"),
            entity=self.cfg.get("entity"),
            name=name,
            group=self.group,
            job_type=job_type,
            config=config,
            dir=str(self.run_dir),
            mode=self.mode,
            reinit="create_new",
            settings=wandb.Settings(silent=True),
        )  # no banners
        return StageRun(run, WandbLogger(experiment=run))

    def _lightning_logger(self, name: str):
        """The configured Lightning logger for one stage: `_target_` and its arguments, the stage's name in
        `stage_name_arg` (default `name`), `save_dir` <run dir>/logs unless given."""
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        spec = {k: v for k, v in self.cfg.items() if k != "stage_name_arg"}
        spec.setdefault("save_dir", str(self.run_dir / "logs"))
        spec[self.cfg.get("stage_name_arg", "name")] = name
        try:
            return instantiate(spec)
        except InstantiationException as exc:
            cause = exc.__cause__ or exc
            raise MergeMixError(
                f"cannot create the logger {self.cfg['_target_']}: {str(cause).strip().splitlines()[0]}"
            ) from exc

    @staticmethod
    def _finish(run: StageRun, failed: bool) -> None:
        if run.run is not None:
            run.run.finish(exit_code=1 if failed else 0)
        elif run._lightning is not None:
            run._lightning.finalize("failed" if failed else "success")


def open_run(logger_cfg: dict, out_dir: str | Path, group: str, name: str, job_type: str, config: dict):
    """One stage run outside a pipeline (a compare job's run): `with open_run(...) as run:`."""
    return Tracker(logger_cfg, out_dir, group).stage(name, job_type, config)


def identity(cfg: dict, sweep: str | None = None) -> dict:
    """The composed settings that identify a run, for filtering and grouping runs (flat, the same in every run of
    a command): model, domains, benchmarks (tasks), seed, search_seed, strategy, run_name, and the sweep."""
    kind = cfg.get("baseline", {}).get("kind", "none")
    out = {
        "model": cfg["model"].get("name"),
        "domains": sorted(cfg["domains"]["sources"]),
        "benchmarks": sorted(cfg["benchmarks"].get("tasks") or {}),
        "seed": cfg["seed"],
        "search_seed": cfg["search_seed"],
        "strategy": cfg.get("strategy") if kind == "none" else kind,
        "run_name": cfg["run_name"],
    }
    return {**out, "sweep": sweep} if sweep else out


def flat(prefix: str, values: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def report_training(run: StageRun, manifest: dict) -> None:
    """A training stage's results (also when served from the cache: linked to the run that produced it)."""
    keys = ("final_loss", "steps", "train_tokens", "tokens_per_s", "wall_s", "world_size")
    run.summary(
        {
            **{k: manifest[k] for k in keys if k in manifest},
            **flat("tokens", manifest.get("realised_tokens", {})),
            "cache_key": manifest.get("key"),
            "produced_by_run": manifest.get("run_id"),
        }
    )


def report_scores(run: StageRun, result: dict, mixture: dict[str, float] | None = None) -> None:
    """A checkpoint's benchmark result (and the mixture it was trained on) in the run's summary."""
    run.summary(
        {
            "U": result["U"],
            "U_std": result["U_std"],
            **flat("score", result["capabilities"]),
            **flat("mixture", mixture or {}),
        }
    )


def report_search(run: StageRun, search_dir: Path, names: list[str]) -> None:
    """Every evaluated merge as a step and as a table, alpha* with its verified U and scores in the summary,
    mixture.yaml as an artifact."""
    import json

    from mergemix.search.run import read_trials

    alphas, columns = read_trials(search_dir / "seeds.csv", names)
    head = [*(f"alpha/{n}" for n in names), *(c if c in ("U", "U_std") else f"score/{c}" for c in columns)]
    rows = [[*map(float, a), *(float(v[i]) for v in columns.values())] for i, a in enumerate(alphas)]
    run.history_only("alpha/*")  # a trial's mixture; alpha* is in the summary
    for step, row in enumerate(rows):
        run.log(dict(zip(head, row)), step=step)
    run.table("trials", head, rows)
    s = json.loads((search_dir / "search.json").read_text())
    verified = s["verified_result"]
    run.summary(
        {
            **flat("alpha_star", s["alpha_star"]),
            **flat("predicted", s.get("predicted") or {}),
            "U": verified["U"],
            "U_std": verified["U_std"],
            **flat("score", verified["capabilities"]),
            "backend": s["backend"],
            "objective": s["objective"],
            "evaluations": s.get("evaluations"),
            **flat("cost", {k: v for k, v in s.get("cost", {}).items() if isinstance(v, (int, float))}),
        }
    )
    run.artifact("mixture", "mixture", [search_dir / "mixture.yaml"], {"alpha_star": s["alpha_star"]})


def report_run_dir(run: StageRun, run_dir: Path, log_checkpoint: bool = False) -> None:
    """A command's outputs: summary.json as the summary, every figure as an image, and with `log_checkpoint` the
    alpha* checkpoint as an artifact (mixture.yaml is the search run's)."""
    import json

    if (run_dir / "summary.json").is_file():
        run.summary(json.loads((run_dir / "summary.json").read_text()))
    for png in sorted(run_dir.glob("*.png")):
        run.image(png.stem, png)
    if log_checkpoint and (run_dir / "alpha_star").is_dir():
        run.artifact("alpha_star", "model", [run_dir / "alpha_star"])
