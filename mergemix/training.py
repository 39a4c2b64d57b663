"""One LightningModule + DataModule for base pretraining, expert mid-training and mixture training."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mergemix.data.sampler import MixturePlan, plan_mixture


# ----------------------------------------------------------------------------------------------- schedule ---
def lr_factor(step: int, total: int, warmup: int, schedule: str, decay_fraction: float, min_ratio: float) -> float:
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
        return torch.from_numpy(np.asarray(arr[s:s + self.plan.seq_len], dtype=np.int64))


class MixtureDataModule(pl.LightningDataModule):
    """Training windows at exact per-domain ratios; `plan.realised_tokens()` reports what was drawn."""

    def __init__(self, arrays: dict[str, np.ndarray], ratios: dict[str, float], n_tokens: int, seq_len: int,
                 batch_size: int, seed: int):
        super().__init__()
        self.arrays, self.batch_size = arrays, batch_size
        n_windows = max(batch_size, n_tokens // seq_len // batch_size * batch_size)
        self.plan = plan_mixture({d: len(a) for d, a in arrays.items()}, ratios, n_windows, seq_len, seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(WindowDataset(self.arrays, self.plan), batch_size=self.batch_size, shuffle=False)


# --------------------------------------------------------------------------------------------------- model ---
class CausalLMModule(pl.LightningModule):
    def __init__(self, model, lr: float, total_steps: int, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 0, schedule: str = "constant",
                 decay_fraction: float = 0.2, min_lr_ratio: float = 0.1):
        super().__init__()
        self.model = model
        self.lr, self.total_steps, self.weight_decay, self.betas = lr, total_steps, weight_decay, tuple(betas)
        self.sched = {"warmup": warmup_steps, "schedule": schedule, "decay_fraction": decay_fraction,
                          "min_ratio": min_lr_ratio}
        self.last_loss = float("nan")

    def training_step(self, batch: torch.Tensor, _idx: int) -> torch.Tensor:
        loss = self.model(input_ids=batch, labels=batch).loss
        self.log("train/loss", loss, prog_bar=True, on_step=True)
        self.last_loss = float(loss.detach())
        return loss

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=self.betas)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, self.total_steps, **self.sched))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def train_causal_lm(model, tokenizer, arrays: dict[str, np.ndarray], ratios: dict[str, float], out_dir: Path,
                    n_tokens: int, seq_len: int, batch_size: int, lr: float, seed: int, optim: dict,
                    trainer_kwargs: dict, logger=None, desc: str = "train") -> dict:
    """Train `model` on the mixture `ratios` for `n_tokens` tokens and save an HF checkpoint in `out_dir`."""
    pl.seed_everything(seed, workers=True, verbose=False)
    data = MixtureDataModule(arrays, ratios, n_tokens, seq_len, batch_size, seed)
    steps = len(data.plan.domain) // batch_size
    module = CausalLMModule(model, lr=lr, total_steps=steps, **optim)
    trainer = pl.Trainer(max_steps=steps, max_epochs=1, logger=logger if logger is not None else False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         log_every_n_steps=max(1, steps // 50), **trainer_kwargs)
    print(f"[{desc}] {steps} steps x {batch_size} x {seq_len} tokens, lr {lr:g}, mixture "
          + ", ".join(f"{d}={r:.3f}" for d, r in sorted(ratios.items())), flush=True)
    t0 = time.time()
    trainer.fit(module, datamodule=data)
    wall = time.time() - t0
    if not math.isfinite(module.last_loss):
        from mergemix.errors import MergeMixError
        raise MergeMixError(f"[{desc}] training diverged (final loss {module.last_loss}); lower the learning rate")
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    tokens = data.plan.realised_tokens()
    return {"final_loss": module.last_loss, "steps": steps, "realised_tokens": tokens,
            "train_tokens": sum(tokens.values()), "wall_s": round(wall, 2),
            "tokens_per_s": round(sum(tokens.values()) / max(wall, 1e-9))}
