"""One LightningModule + DataModule for base pretraining, expert mid-training and mixture training."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mergemix.data.sampler import MixturePlan, plan_mixture, trained_windows
from mergemix.log import Progress, interactive, log


# ----------------------------------------------------------------------------------------------- schedule ---
def lr_factor(
    step: int, total: int, warmup: int, schedule: str, decay_fraction: float, min_ratio: float
) -> float:
    """constant: warm-up then flat (the paper's expert recipe); wsd: warm-up, hold, linear decay to min_ratio."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        decay_start = int(total * (1 - decay_fraction))
        if step < decay_start:
            return 1.0
        return 1.0 - (1.0 - min_ratio) * min(1.0, (step - decay_start) / max(1, total - decay_start))
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule '{schedule}' (constant, wsd, cosine)")


# ---------------------------------------------------------------------------------------------------- data ---
class WindowDataset(Dataset):
    def __init__(self, arrays: dict[str, np.ndarray], plan: MixturePlan):
        self.arrays = [arrays[d] for d in plan.domains]
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan.domain)

    def __getitem__(self, i: int) -> torch.Tensor:
        arr = self.arrays[self.plan.domain[i]]
        s = int(self.plan.start[i])
        return torch.from_numpy(np.asarray(arr[s : s + self.plan.seq_len], dtype=np.int64))


class PlanSampler(Sampler[int]):
    """Rank r of W takes windows start + r, start + r + W, ...: the plan's order on every layout, so global step s
    sees the windows a single process would (Lightning's distributed sampler would reshuffle them). `start` skips
    the windows of the steps trained before a resume; the length stays the whole epoch's share, because Lightning
    counts the batches trained before a restart into the epoch (TrainingEpochLoop.on_run_start) and restarts a
    map-style loader from its beginning."""

    def __init__(self, n: int, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.rank, self.world, self.start = n, rank, world, start

    def __iter__(self):
        return iter(range(self.start + self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


class MixtureDataModule(pl.LightningDataModule):
    """Training windows at exact per-domain ratios; `plan.realised_tokens()` reports what was drawn. `batch_size` is
    the global batch: the window count is a multiple of it, so `world` processes split every step evenly; each loads
    `micro_batch` windows at a time (default: its whole share of the step)."""

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        ratios: dict[str, float],
        n_tokens: int,
        seq_len: int,
        batch_size: int,
        seed: int,
        world: int = 1,
        micro_batch: int | None = None,
    ):
        super().__init__()
        self.arrays, self.batch_size, self.global_batch = (
            arrays,
            micro_batch or batch_size // world,
            batch_size,
        )
        self.plan = plan_mixture(
            {d: len(a) for d, a in arrays.items()},
            ratios,
            trained_windows(n_tokens, seq_len, batch_size),
            seq_len,
            seed,
        )

    def train_dataloader(self) -> DataLoader:
        """Continues after the windows of the steps already taken (global_step, restored from a checkpoint)."""
        data, t = WindowDataset(self.arrays, self.plan), self.trainer
        sampler = (
            PlanSampler(len(data), t.global_rank, t.world_size, t.global_step * self.global_batch)
            if t
            else None
        )
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, sampler=sampler)


# --------------------------------------------------------------------------------------------------- model ---
class Diverged(Exception):
    def __init__(self, step: int, loss: float):
        super().__init__(f"step {step}, loss {loss}")
        self.step, self.loss = step, loss


class CausalLMModule(pl.LightningModule):
    def __init__(
        self,
        model,
        lr: float,
        total_steps: int,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        schedule: str = "constant",
        decay_fraction: float = 0.2,
        min_lr_ratio: float = 0.1,
        speed: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.speed = {
            k: v for k, v in (speed or {}).items() if v
        }  # speed.py: chunked_loss, compile, fused_adamw
        self.lr, self.total_steps, self.weight_decay, self.betas = lr, total_steps, weight_decay, tuple(betas)
        self.sched = {
            "warmup": warmup_steps,
            "schedule": schedule,
            "decay_fraction": decay_fraction,
            "min_ratio": min_lr_ratio,
        }
        self.last_loss = float("nan")
        self._forward = None

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The causal-LM loss: the model's own, or with trainer.chunked_loss the chunked one (equal up to float
        rounding), through the compiled decoder with trainer.compile."""
        from mergemix.speed import Compiled, chunked_lm_loss, lm_parts

        parts = lm_parts(self.model) if self.speed.get("chunked_loss") else None
        if self._forward is None:
            self._forward = Compiled(
                parts[0] if parts else self.model, bool(self.speed.get("compile")), batch.is_cuda
            )
        if parts is None:
            return self._forward(input_ids=batch, labels=batch).loss
        hidden = self._forward(input_ids=batch).last_hidden_state
        return chunked_lm_loss(hidden, parts[1].weight, batch, int(self.speed["chunked_loss"]))

    def training_step(self, batch: torch.Tensor, _idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True)
        self.last_loss = float(loss.detach())
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Stop at the first step whose loss or gradients are NaN/Inf, before they reach the weights (under fp16
        loss scaling, non-finite gradients are the scaler's to skip). All ranks decide together."""
        finite = math.isfinite(self.last_loss)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if finite and grads and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            raise Diverged(self.trainer.global_step + 1, self.last_loss)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning's FSDP precision plugin cannot clip by norm; FSDP's own clip_grad_norm_ reduces the norm over
        all shards, so the clipped update equals the unsharded one."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = self.trainer.model if self._trainer is not None else None
        if gradient_clip_val and isinstance(wrapped, FullyShardedDataParallel):
            wrapped.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        from mergemix.speed import adamw_options

        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=self.betas,
            **adamw_options(decay + no_decay, bool(self.speed.get("fused_adamw"))),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, self.total_steps, **self.sched))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


SPEED_KEYS = ("chunked_loss", "compile", "fused_adamw")  # speed.py: same numbers up to float rounding
OWN_TRAINER_KEYS = {
    "accelerator",
    "devices",
    "precision",
    "enable_progress_bar",
    "gradient_clip_val",
    "num_nodes",
    "strategy",
    "micro_batch_size",
    "checkpoint_every_n_steps",
    "eval_dtype",
    "num_threads",
    *SPEED_KEYS,
}
MANAGED_TRAINER_KEYS = {
    "max_epochs",
    "max_steps",
    "logger",
    "callbacks",
    "enable_checkpointing",
    "num_sanity_val_steps",
    "use_distributed_sampler",
    "accumulate_grad_batches",
    "log_every_n_steps",
    "enable_model_summary",
}


def trainer_passthrough(trainer_cfg: dict) -> dict:
    """The `trainer.*` settings that are not MergeMix's own, passed to pl.Trainer as they are (`+trainer.X=...`);
    a name pl.Trainer does not take, or one MergeMix sets itself, is refused."""
    import inspect

    from mergemix.errors import MergeMixError

    extra = {k: v for k, v in trainer_cfg.items() if k not in OWN_TRAINER_KEYS}
    params = inspect.signature(pl.Trainer.__init__).parameters
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    for key in sorted(extra):
        if key not in params and not open_ended:
            raise MergeMixError(
                f"trainer.{key} is not an argument of pytorch_lightning.Trainer "
                f"(see its documentation for the names it takes)"
            )
        if key in MANAGED_TRAINER_KEYS:
            raise MergeMixError(
                f"trainer.{key} is set by MergeMix itself (from the token budgets, batch size and "
                f"logger config); it cannot be overridden"
            )
    return extra


class LogProgress(pl.Callback):
    """Training progress as log lines (log.Progress) with the loss and tokens/s, where no bar can draw."""

    def __init__(self, desc: str, steps: int, tokens_per_step: int):
        self.desc, self.steps, self.tokens_per_step, self.progress = desc, steps, tokens_per_step, None

    def on_train_start(self, trainer, module) -> None:
        self.progress = Progress(self.desc, self.steps, "steps", start=trainer.global_step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.progress.done:  # an optimizer step, not an accumulated micro-batch
            p = self.progress
            rate = (trainer.global_step - p.start) / max(time.monotonic() - p.t0, 1e-9)
            p.update(
                trainer.global_step,
                f"loss {module.last_loss:.4g}, {rate * self.tokens_per_step:.3g} tokens/s",
            )


def monitors(logger, steps: int) -> list:
    """Learning rate and throughput (tokens/s, and MFU where Lightning knows the device's peak FLOPs)."""
    if logger is None:
        return []
    from pytorch_lightning.callbacks import LearningRateMonitor, ThroughputMonitor

    return [
        LearningRateMonitor(logging_interval="step"),
        ThroughputMonitor(
            batch_size_fn=lambda b: b.shape[0],
            length_fn=lambda b: b.numel(),
            window_size=max(2, min(100, steps // 5)),
        ),
    ]


def train_causal_lm(
    model,
    tokenizer,
    arrays: dict[str, np.ndarray],
    ratios: dict[str, float],
    out_dir: Path,
    n_tokens: int,
    seq_len: int,
    batch_size: int,
    lr: float,
    seed: int,
    optim: dict,
    trainer_kwargs: dict,
    logger=None,
    desc: str = "train",
    checkpoint_dir: Path | None = None,
    router_bias_update_rate: float = 0.0,
) -> dict:
    """Train `model` on the mixture `ratios` for `n_tokens` tokens and save an HF checkpoint in `out_dir`.

    `batch_size` is the global batch (sequences per optimizer step), split evenly over the devices and, with
    `trainer_kwargs["micro_batch_size"]`, accumulated in micro-batches, so the weights do not depend on the process
    layout; `trainer_kwargs["strategy"]` is a plain dict (see strategies.py). Every rank of a distributed run calls
    this; rank 0 alone writes `out_dir` (FSDP shards are gathered first).

    With `checkpoint_dir`, a checkpoint is written there every `trainer_kwargs["checkpoint_every_n_steps"]` steps
    (resume.py) and training resumes from the newest one found; the weights equal an uninterrupted run's.

    An MoE model's routers are balanced by `router_bias_update_rate` (balance.py); their load is logged either way.
    The result's `train_tokens` are the tokens trained: whole global batches (cost.trained_tokens)."""
    from mergemix.balance import RouterBalance, routers
    from mergemix.errors import MergeMixError
    from mergemix.resume import PeriodicCheckpoint, latest_checkpoint
    from mergemix.strategies import build_strategy, save_consolidated

    kwargs = dict(trainer_kwargs)
    every, callbacks = kwargs.pop("checkpoint_every_n_steps", None), list(kwargs.pop("callbacks", None) or [])
    if checkpoint_dir is not None:
        callbacks.append(PeriodicCheckpoint(checkpoint_dir, every))
    balance = RouterBalance(router_bias_update_rate) if routers(model) else None
    callbacks = ([balance] if balance else []) + callbacks  # first: a step's checkpoint holds its bias update
    strategy = build_strategy(kwargs.pop("strategy", None), model)
    micro = kwargs.pop(
        "micro_batch_size", None
    )  # sequences per forward pass; the rest is gradient accumulation
    speed = {k: kwargs.pop(k, None) for k in SPEED_KEYS}
    bar = interactive()  # a terminal draws the bar; a log file gets progress lines instead
    kwargs["enable_progress_bar"] = bar and kwargs.get("enable_progress_bar", True)
    pl.seed_everything(seed, workers=True, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=logger if logger is not None else False,
        strategy=strategy,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=callbacks,
        **kwargs,
    )
    world = trainer.num_nodes * trainer.num_devices
    per_device = batch_size // world
    micro = int(micro or per_device)
    if batch_size % world or per_device % micro:
        raise MergeMixError(
            f"model.batch_size {batch_size} (sequences per step on all devices together) must be a "
            f"multiple of the {world} devices x trainer.micro_batch_size {micro}"
        )
    data = MixtureDataModule(arrays, ratios, n_tokens, seq_len, batch_size, seed, world, micro)
    steps = len(data.plan.domain) // batch_size
    trainer.fit_loop.epoch_loop.max_steps = steps
    trainer.accumulate_grad_batches = per_device // micro
    trainer.log_every_n_steps = max(1, steps // 50)
    module = CausalLMModule(model, lr=lr, total_steps=steps, speed=speed, **optim)
    module.flops_per_batch = (
        6 * sum(p.numel() for p in model.parameters()) * micro * seq_len
    )  # 6ND, per device
    trainer.callbacks.extend(
        monitors(logger, steps) + ([] if bar else [LogProgress(desc, steps, batch_size * seq_len)])
    )
    resume = latest_checkpoint(checkpoint_dir)  # every rank looks before fit: none is written before all join
    log.info(
        f"[{desc}] {steps} steps x {batch_size} ({world} devices x {per_device // micro} x {micro}) x "
        f"{seq_len} tokens, lr {lr:g}, mixture "
        + ", ".join(f"{d}={r:.3f}" for d, r in sorted(ratios.items()))
    )
    if resume:
        log.info(f"[{desc}] resuming from step {resume[1]}/{steps}")
    t0 = time.time()
    with warnings.catch_warnings():  # PlanSampler resumes the data order, which Lightning cannot tell
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
        try:
            trainer.fit(
                module, datamodule=data, ckpt_path=str(resume[0]) if resume else None, weights_only=True
            )
        except Diverged as exc:
            kept = latest_checkpoint(checkpoint_dir)
            cause = f"loss {exc.loss:.4g}" + (", non-finite gradients" if math.isfinite(exc.loss) else "")
            raise MergeMixError(
                f"[{desc}] training diverged at step {exc.step}/{steps} ({cause}); lower the learning "
                f"rate (now {lr:g})"
                + (f"; the checkpoint of step {kept[1]} stays in {checkpoint_dir}" if kept else "")
            ) from None
    wall = time.time() - t0
    save_consolidated(trainer, model, out_dir)
    if trainer.is_global_zero:
        from mergemix.models import stamp_special_tokens

        tokenizer.save_pretrained(str(out_dir))
        stamp_special_tokens(out_dir, tokenizer)
    trainer.strategy.barrier("mergemix-saved")
    tokens = data.plan.realised_tokens()
    return {
        "final_loss": module.last_loss,
        "steps": steps,
        "realised_tokens": tokens,
        "train_tokens": sum(tokens.values()),
        "wall_s": round(wall, 2),
        "world_size": world,
        "global_rank": trainer.global_rank,
        "tokens_per_s": round(sum(tokens.values()) / max(wall, 1e-9)),
        **(
            {"moe_load_imbalance": [round(h["moe/load_imbalance"], 4) for h in balance.history]}
            if balance
            else {}
        ),
    }
