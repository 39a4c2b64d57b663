"""The `mergemix` commands as a registry: name -> Command. A command runs on a composed, resolved config; all but
`info` build the pipeline in a run directory first. Studies (`STUDIES`) are modules of mergemix.analysis with
`check_config(cfg)` (optional, run before anything is built) and `run(pipe)`, which writes <name>.{json,md,png}
(validate: validation.*)."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergemix.log import log

if TYPE_CHECKING:
    from mergemix.pipeline import Pipeline

STUDIES = {
    "validate": "merged vs really trained mixtures: rank consistency (validate.*)",
    "theory": "gradients, curvature and the merge-vs-mix gap at the base (theory.*)",
    "curves": "merged vs trained along the a-b edge; curves.domains=[a,b] (curves.*)",
    "landscape": "U and capabilities over the simplex, specialist mixtures (landscape.*)",
    "transfer": "alpha* searched on one model, trained on another (transfer.*)",
    "dynamic": "alpha* re-optimised mid-way through the mixture run (dynamic.*)",
    "hierarchical": "top-down search: coarse groups, then inside each (hierarchical.*)",
}


@dataclass(frozen=True)
class Command:
    summary: str
    run: Callable[[Any, Any], None]  # (pipeline, the command's own arguments: mix's weights) -> None
    check: Callable[[dict], None] | None = None  # on the config, before anything is built or trained
    pipeline: bool = True  # False: run(cfg, args) without a run directory (info)


def _info(cfg: dict, _args) -> None:
    from mergemix.models import describe

    print(json.dumps(describe(cfg["model"], cfg["tokenizer"]["vocab_size"]), indent=2))


def _run(pipe: Pipeline, _args) -> None:
    pipe.run()


def _experts(pipe: Pipeline, _args) -> None:
    from mergemix.stages.report import log_gains

    names = [pipe.cfg["expert_domain"]] if pipe.cfg.get("expert_domain") else pipe.domain_names
    out = {n: str(pipe.expert_dir(n)) for n in names}
    print(json.dumps({"base": str(pipe.base_dir), "experts": out}, indent=2))
    log.info("expert gains on their own capability:")
    log_gains(pipe.expert_report())


def _search(pipe: Pipeline, _args) -> None:
    log.info((pipe.search_dir / "mixture.yaml").read_text())
    log.info(f"mixture file: {pipe.search_dir / 'mixture.yaml'}")
    log.info(f"exports: {', '.join(str(p) for p in pipe.write_exports().values())}")


def _search_worker(pipe: Pipeline, _args) -> None:
    from mergemix.search.join import join_search

    print(json.dumps(join_search(pipe), indent=2))


def _mix(pipe: Pipeline, weights) -> None:
    from mergemix.simplex import check_weights

    path = pipe.train_mixture(check_weights(weights, pipe.domain_names, "mix weights"), "custom")
    result = pipe.evaluate_checkpoint(path)
    print(
        json.dumps(
            {"checkpoint": str(path), "U": result["U"], "capabilities": result["capabilities"]}, indent=2
        )
    )


def _compare(pipe: Pipeline, _args) -> None:
    from mergemix.analysis.compare import aggregate, run_strategy

    result = run_strategy(pipe)
    aggregate(pipe.run_dir.parent)
    log.info(
        f"strategy {result['strategy']} (seed {result['seed']}): trained U {100 * result['U']:.2f}, "
        f"training tokens {result['cost']['train_tokens']:.3g}; comparison: {pipe.run_dir.parent / 'comparison.md'}"
    )


REPORTS = {"validate": "validation"}  # a study's report files when not <name>.{json,md,png}


def _study(name: str, summary: str) -> Command:
    module = f"mergemix.analysis.{name}"

    def run(pipe: Pipeline, _args) -> None:
        importlib.import_module(module).run(pipe)
        log.info(f"\n{(pipe.run_dir / f'{REPORTS.get(name, name)}.md').read_text()}")

    def check(cfg: dict) -> None:
        getattr(importlib.import_module(module), "check_config", lambda cfg: None)(cfg)

    return Command(summary, run, check)


COMMANDS: dict[str, Command] = {
    "run": Command("all stages (= make demo); the last line names the run directory", _run),
    "experts": Command("the pipeline up to the experts (expert_domain=NAME trains one)", _experts),
    "search": Command("the pipeline up to the search: alpha* and its exports", _search),
    "search-worker": Command(
        "one more worker on a search (its seed design, or its shared Optuna study)", _search_worker
    ),
    "mix": Command("train and evaluate one mixture from the base: weights='{code: 0.5, ...}'", _mix),
    "info": Command("the composed config's model size and domains as JSON", _info, pipeline=False),
    "compare": Command(
        "one strategy's mixture, trained and scored; sweep with -m strategy=a,b search_seed=0,1", _compare
    ),
    **{name: _study(name, summary) for name, summary in STUDIES.items()},
}


def run_dir(cfg: dict) -> Path:
    if cfg["paths"].get("run_dir"):
        return Path(cfg["paths"]["run_dir"])
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - not under @hydra.main
        from datetime import datetime

        stamp = f"{datetime.now():%Y-%m-%d_%H-%M-%S.%f}-{os.getpid()}"  # two runs started at once: two directories
        return Path(cfg["paths"]["root"]) / "runs" / cfg["run_name"] / stamp


def _sweep() -> tuple[str, int] | None:
    """(the sweep directory's name, the job's number) in a multirun; None otherwise."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return Path(hc.sweep.dir).name, hc.job.num
    except ValueError:  # not under @hydra.main
        pass
    return None


def tracking_group(cfg: dict, out: Path) -> str:
    """The tracking group of this job's runs (its stages and its compare run): unique per run, and per sweep and
    job in a multirun, so a view grouped by run group shows one line per job."""
    sweep = _sweep()
    return f"{cfg['run_name']}-{sweep[0]}-{sweep[1]}" if sweep else f"{cfg['run_name']}-{out.name}"


def tracker_for(cfg: dict, out: Path):
    """The job's Tracker: its group, and the settings that identify it (with the sweep) in every run's config."""
    from mergemix.loggers import Tracker, identity

    sweep = _sweep()
    return Tracker(cfg["logger"], out, tracking_group(cfg, out), identity(cfg, sweep[0] if sweep else None))


def quiet() -> None:
    """Offline by default; keep the console to progress bars and results (`execute` scopes the warning filters
    to the command; an entry point calling this alone sets them for its process)."""
    import logging
    import warnings

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="optuna")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in (
        "pytorch_lightning",
        "pytorch_lightning.utilities.rank_zero",
        "lightning_fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def execute(command: str, cfg: dict, args=None) -> None:
    """Run one command on a composed, resolved config (the Hydra entry point, the Python API and tests call this);
    the warning filters it sets last as long as the command."""
    import warnings

    with warnings.catch_warnings():
        quiet()
        return _execute(COMMANDS[command], command, cfg, args)


def _execute(cmd: Command, command: str, cfg: dict, args) -> None:
    from mergemix import schema
    from mergemix.checks import writable_dir
    from mergemix.loggers import report_run_dir
    from mergemix.pipeline import Pipeline

    schema.check(cfg)  # types, ranges, options and flags of every section, before any command-specific check
    if cmd.check:
        cmd.check(cfg)
    if not cmd.pipeline:
        return cmd.run(cfg, args)
    out = writable_dir(run_dir(cfg), "run directory")
    tracker = tracker_for(cfg, out)
    pipe = Pipeline(cfg, out, tracker)
    cmd.run(pipe, args)
    with tracker.stage(command, "report", {"composed": cfg}) as run:
        report_run_dir(run, out, cfg["logger"].get("log_checkpoint", False))
    log.info(f"run directory: {out}")
