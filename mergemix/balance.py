"""Auxiliary-loss-free load balancing of MoE routers (DeepSeek-V3, arXiv 2412.19437, section 2.1.2), the way
sigmoid top-k routers with an `e_score_correction_bias` (Glm4Moe, DeepseekV3) are trained: the bias only steers
which experts are chosen, and after every optimizer step it moves by `rate` towards balance,
bias_i += rate * sign(mean load - load_i), per MoE layer."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


def routers(model) -> list[torch.nn.Module]:
    """The model's top-k routers that carry a selection bias (an empty list for dense models)."""
    return [m for m in model.modules() if hasattr(m, "e_score_correction_bias") and hasattr(m, "top_k")]


class RouterBalance(pl.Callback):
    """Counts the tokens each routed expert receives over an optimizer step (all micro-batches and devices), then
    updates each router's bias by `rate` (0: count and log only) and logs `moe/load_imbalance` (max/mean expert
    load, averaged over layers) and `moe/load_imbalance_max` (the worst layer); `history` keeps both per step. Activation checkpointing routes a batch twice, doubling every count alike: the signs and the
    max/mean ratio do not change."""

    def __init__(self, rate: float = 0.0):
        self.rate, self.history = float(rate), []
        self._routers, self._counts, self._hooks, self._step = [], [], [], None

    def on_train_start(self, trainer, pl_module) -> None:  # after a resumed run's step counter is restored
        self._routers = routers(pl_module)
        self._counts = [
            torch.zeros_like(r.e_score_correction_bias, dtype=torch.float64) for r in self._routers
        ]
        self._hooks = [r.register_forward_hook(self._counter(i)) for i, r in enumerate(self._routers)]
        self._step = trainer.global_step

    def _counter(self, i: int):
        def hook(router, _inputs, output) -> None:
            indices = output[-1]  # (router logits, top-k weights, top-k indices)
            self._counts[i] += torch.bincount(indices.reshape(-1), minlength=self._counts[i].numel()).to(
                self._counts[i]
            )

        return hook

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._routers or trainer.global_step == self._step:  # still accumulating gradients
            return
        self._step = trainer.global_step
        loads = [
            trainer.strategy.reduce(c.to(r.e_score_correction_bias.device), reduce_op="sum")
            for c, r in zip(self._counts, self._routers)
        ]
        ratios = []
        for router, load, count in zip(self._routers, loads, self._counts):
            bias = router.e_score_correction_bias
            bias += (self.rate * torch.sign(load.mean() - load)).to(bias.dtype)
            ratios.append(float(load.max() / load.mean().clamp_min(1)))
            count.zero_()
        self.history.append(
            {"moe/load_imbalance": sum(ratios) / len(ratios), "moe/load_imbalance_max": max(ratios)}
        )
        pl_module.log_dict(self.history[-1], on_step=True, on_epoch=False)

    def teardown(self, trainer, pl_module, stage) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
