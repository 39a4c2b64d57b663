"""Training throughput: `CausalLMModule` under a Lightning Trainer (configured as `train_causal_lm` does)
against a plain torch loop with the same init, AdamW groups, LR schedule, clipping, precision and batches."""

from __future__ import annotations

import contextlib
import copy
import time

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import DataLoader

from bench.common import ROOT, alternate, build, med, model_cfg, n_params, ratio
from mergemix.training import CausalLMModule, MixtureDataModule, WindowDataset

CPU = yaml.safe_load((ROOT / "conf" / "trainer" / "cpu.yaml").read_text())
OPTIM = {"weight_decay": 0.1, "betas": (0.9, 0.95), "warmup_steps": 2, "schedule": "constant"}
LR = 1e-3


class _Clock(pl.Callback):
    def __init__(self):
        self.ends: list[float] = []

    def on_train_batch_end(self, *_args) -> None:
        self.ends.append(time.perf_counter())


def lightning_run(model, data, steps: int, precision: str) -> list[float]:
    """Batch-end timestamps of a Lightning fit, Trainer built as in `train_causal_lm`."""
    clock = _Clock()
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, steps // 50),
        accelerator="cpu",
        devices=1,
        precision=precision,
        enable_progress_bar=False,
        gradient_clip_val=CPU["gradient_clip_val"],
        callbacks=[clock],
    )
    trainer.fit(CausalLMModule(model, lr=LR, total_steps=steps, **OPTIM), datamodule=data)
    return clock.ends


def plain_run(model, data, steps: int, precision: str) -> list[float]:
    """The same training as a plain loop: AdamW groups and schedule from `CausalLMModule.configure_optimizers`."""
    module = CausalLMModule(model, lr=LR, total_steps=steps, **OPTIM)
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    amp = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision.startswith("bf16")
        else contextlib.nullcontext()
    )
    model.train()
    ends = []
    loader = DataLoader(WindowDataset(data.arrays, data.plan), batch_size=data.batch_size, shuffle=False)
    for step, batch in enumerate(loader):  # the plan's order (the module's loader follows a finished trainer)
        if step == steps:
            break
        with amp:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CPU["gradient_clip_val"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # like the module's last_loss
        ends.append(time.perf_counter())
    return ends


def measure(size: str, steps: int, warmup: int, repeats: int, precision: str) -> dict:
    cfg = model_cfg(size)
    seq, batch = cfg["seq_len"], cfg["batch_size"]
    rng = np.random.default_rng(0)  # random tokens: throughput does not depend on the text
    arrays = {d: rng.integers(0, 2048, 400_000, dtype=np.int64).astype(np.uint16) for d in ("a", "b")}
    data = MixtureDataModule(arrays, {"a": 0.5, "b": 0.5}, (warmup + steps) * seq * batch, seq, batch, seed=0)
    model = build(cfg)
    init = copy.deepcopy(model.state_dict())
    checksum = {}

    def side(run, name):
        def go() -> float:
            model.load_state_dict(init)
            model.zero_grad(set_to_none=True)  # a finished fit leaves its last gradients behind
            ends = run(model, data, warmup + steps, precision)
            checksum[name] = sum(float(p.detach().double().sum()) for p in model.parameters())
            return ends[-1] - ends[warmup - 1]  # timed steps only, warm-up excluded

        return go

    t = alternate(
        {"lightning": side(lightning_run, "lightning"), "plain": side(plain_run, "plain")}, repeats, warmup=0
    )
    tokens = steps * seq * batch
    return {
        "size": size,
        "params": n_params(model),
        "precision": precision,
        "steps": steps,
        "tokens_per_step": seq * batch,
        "lightning_tok_s": tokens / med(t["lightning"]),
        "plain_tok_s": tokens / med(t["plain"]),
        "ratio": ratio(t["plain"], t["lightning"]),
        "same_weights": checksum["lightning"] == checksum["plain"],
    }  # both sides trained identically


def run(plan: list[tuple[str, str]], steps: int, warmup: int, repeats: int) -> list[dict]:
    """One row per (size, precision)."""
    rows = []
    for size, precision in plan:
        rows.append(measure(size, steps, warmup, repeats, precision))
        r = rows[-1]
        print(
            f"  train {size} {precision}: Lightning / plain throughput {r['ratio']:.2f} "
            f"({r['lightning_tok_s']:.0f} vs {r['plain_tok_s']:.0f} tokens/s)",
            flush=True,
        )
    return rows
