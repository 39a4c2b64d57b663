"""Cost ledger of a mixture search: training tokens, FLOPs (6·N·D to train, 2·N·D to evaluate, N the active
parameters: an MoE token passes through the dense, shared and its top-k routed experts only), evaluations, wall
time, and best-so-far U against cumulative cost. Training is charged the tokens trained (`trained_tokens`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from mergemix.data.sampler import trained_windows


def trained_tokens(tokens: int, model: Mapping) -> int:
    """Tokens a training run of `tokens` configured tokens trains on a model config: whole global batches of
    `batch_size` windows of `seq_len` (training.py), e.g. 60,000 at 16 x 256 -> 57,344."""
    seq_len = int(model["seq_len"])
    return trained_windows(int(tokens), seq_len, int(model["batch_size"])) * seq_len


@dataclass
class Ledger:
    n_params: int  # active parameters per token (`Ledger.for_model`)
    train_tokens: int = 0
    eval_tokens: int = 0
    evaluations: int = 0
    started: float = field(default_factory=time.time)
    curve: list[dict] = field(default_factory=list)  # one point per evaluation
    _best: float = float("-inf")

    @classmethod
    def for_model(cls, model) -> Ledger:
        from mergemix.models import active_params

        return cls(active_params(model))

    def train(self, tokens: int) -> None:
        self.train_tokens += int(tokens)

    def evaluation(
        self, tokens: int, utility: float, alpha: Mapping | None = None, capabilities: Mapping | None = None
    ) -> None:
        """One trial: its evaluation cost, objective and (for logging) its mixture and capability scores."""
        self.evaluations += 1
        self.eval_tokens += int(tokens)
        self._best = max(self._best, utility)
        self.curve.append(
            {
                "evaluations": self.evaluations,
                "train_tokens": self.train_tokens,
                "flops": self.flops,
                "wall_s": round(time.time() - self.started, 2),
                "utility": utility,
                "best_so_far": self._best,
                **{f"alpha/{k}": float(v) for k, v in (alpha or {}).items()},
                **{f"capability/{k}": float(v) for k, v in (capabilities or {}).items()},
            }
        )

    @property
    def train_flops(self) -> float:
        return 6.0 * self.n_params * self.train_tokens

    @property
    def eval_flops(self) -> float:
        return 2.0 * self.n_params * self.eval_tokens

    @property
    def flops(self) -> float:
        return self.train_flops + self.eval_flops

    def cost(self) -> dict:
        """What a frontier point records of this ledger."""
        return {
            "train_tokens": self.train_tokens,
            "train_flops": self.train_flops,
            "eval_flops": self.eval_flops,
            "evaluations": self.evaluations,
        }

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("curve", "_best", "started")}
        return {**d, "flops": self.flops, "wall_s": round(time.time() - self.started, 2)}
