"""Stage 8, mix: a mixture (alpha*, the token-proportional baseline, a proxy run, the user's) trained from the base
by the `mix` recipe: the mid-training run whose scores decide whether alpha* is worth acting on."""

from __future__ import annotations

from pathlib import Path

from mergemix.stages.train import TrainJob


def mixture_job(
    ratios: dict[str, float], label: str, spec: dict, base_dir: Path, seed: int, evaluate: bool = False
) -> TrainJob:
    """The run of mixture `label` (checked weights: simplex.check_weights); `seed` sets its data order."""
    return TrainJob("mixture", {}, base_dir, ratios, spec, f"mix:{label}", seed, evaluate)
