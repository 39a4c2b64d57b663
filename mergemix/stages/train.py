"""One training run (the base, an expert or a mixture) as a cached artifact in its own tracked run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mergemix import artifacts
from mergemix.artifacts import ArtifactStore, read_manifest
from mergemix.loggers import StageRun, Tracker, report_scores, report_training
from mergemix.stages.keys import config_inputs


@dataclass(frozen=True)
class TrainJob:
    stage: str  # base, expert or mixture: the artifact's stage
    inputs: dict  # what names it beyond the recipe (an expert's domain)
    init: Path | None  # the checkpoint it continues from; None: a new model
    ratios: dict[str, float]  # the domain mixture it trains on
    spec: dict  # the recipe: the config's base, experts or mix section (tokens, lr, schedule, kind)
    desc: str  # the run's label (base, expert:code, mix:uniform)
    seed: int  # initialisation and data order
    evaluate: bool = False  # log its scores with the run too


def train_key_inputs(job: TrainJob, cfg: dict, store: ArtifactStore, token_dirs: dict[str, Path]) -> dict:
    """What determines the trained weights (the process layout does not: model.batch_size is the global batch)."""
    from mergemix.training import trainer_passthrough

    lora = job.spec.get("kind") == "lora"  # LoRA experts: adapters on the base (lora.py)
    key_spec = job.spec if lora else {k: v for k, v in job.spec.items() if k not in ("kind", "lora")}
    inputs = {
        **job.inputs,
        **config_inputs(cfg, "train"),
        "tokens": {n: p.name for n, p in token_dirs.items()},
        "ratios": job.ratios,
        "spec": key_spec,
        "seed": job.seed,
        "init": store.ref(job.init) if job.init else None,
    }
    extra = trainer_passthrough(cfg["trainer"])
    if extra:  # only when set, so that the keys of runs without them stay as they were
        inputs["trainer"] = extra
    return inputs


def train_checkpoint(
    job: TrainJob,
    cfg: dict,
    store: ArtifactStore,
    tracker: Tracker,
    tokenizer_dir: Path,
    token_dirs: dict[str, Path],
    score: Callable[[Path], dict],
) -> Path:
    """The job's checkpoint, trained or from the cache; `score` evaluates it when the job logs its scores."""
    from mergemix.strategies import is_secondary_rank, launch_id

    inputs = train_key_inputs(job, cfg, store, token_dirs)
    tr = cfg["trainer"]
    parallel = bool(tr.get("strategy")) or str(tr["devices"]) != "1" or int(tr.get("num_nodes", 1)) > 1

    def build(tmp: Path, run: StageRun):
        out = _train(job, cfg, tokenizer_dir, token_dirs, tmp, run, store.partial_dir(job.stage, inputs))
        return {**out, "run_id": run.id}

    if parallel and is_secondary_rank():  # every rank trains (collectives); rank 0 alone writes and logs
        return store.follow(job.stage, inputs, lambda tmp: build(tmp, StageRun()), launch_id())
    config = {"cache_key": artifacts.stage_key(job.stage, inputs), "inputs": inputs}
    with tracker.stage(job.desc, job.stage, config) as run:
        path = store.get_or_build(
            job.stage, inputs, lambda tmp: build(tmp, run), leader=launch_id() if parallel else None
        )
        if run.active:
            report_training(run, read_manifest(path))
        if job.evaluate:
            report_scores(run, score(path), job.ratios)
    return path


def _train(
    job: TrainJob,
    cfg: dict,
    tokenizer_dir: Path,
    token_dirs: dict[str, Path],
    out: Path,
    run: StageRun,
    partial: Path,
) -> dict:
    from mergemix.data.tokenizer import load_tokenizer
    from mergemix.models import build_model, load_checkpoint
    from mergemix.stages.tokenizer import load_arrays
    from mergemix.training import SPEED_KEYS, train_causal_lm, trainer_passthrough

    m, tr, spec = cfg["model"], cfg["trainer"], job.spec
    tokenizer = load_tokenizer(tokenizer_dir)
    model = (
        load_checkpoint(job.init)
        if job.init
        else build_model({**m, "max_position_embeddings": m["seq_len"]}, len(tokenizer), job.seed)
    )
    if spec.get("kind") == "lora":
        from mergemix.lora import wrap

        model = wrap(model, spec["lora"])
    trainer_kwargs = {
        k: tr[k] for k in ("accelerator", "devices", "precision", "enable_progress_bar", "gradient_clip_val")
    }
    trainer_kwargs.update(
        num_nodes=int(tr.get("num_nodes", 1)),
        strategy=tr.get("strategy"),
        micro_batch_size=tr.get("micro_batch_size"),
        checkpoint_every_n_steps=tr.get("checkpoint_every_n_steps"),
        **trainer_passthrough(tr),
        **{k: tr.get(k) for k in SPEED_KEYS},
    )
    optim = {
        "weight_decay": cfg["optim"]["weight_decay"],
        "betas": cfg["optim"]["betas"],
        "warmup_steps": spec.get("warmup_steps", 0),
        "schedule": spec.get("schedule", "constant"),
    }
    return train_causal_lm(
        model,
        tokenizer,
        load_arrays(token_dirs),
        job.ratios,
        out,
        int(spec["tokens"]),
        m["seq_len"],
        m["batch_size"],
        float(spec["lr"]),
        job.seed,
        optim,
        trainer_kwargs,
        run.lightning(),
        job.desc,
        partial,
        float(m.get("router_bias_update_rate", 0.0)),
    )
