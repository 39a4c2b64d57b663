"""Stage 4, experts: the base continued on one domain each (or, for a coarse group of the hierarchical search, on a
mixture of domains) by the same recipe (`experts`: full fine-tuning or LoRA adapters)."""

from __future__ import annotations

from pathlib import Path

from mergemix.stages.train import TrainJob


def expert_job(
    name: str, spec: dict, base_dir: Path, seed: int, ratios: dict[str, float] | None = None
) -> TrainJob:
    """Domain `name`'s expert, or with `ratios` an expert named `name` trained on that mixture (keyed by its ratios,
    not its name)."""
    inputs = {"domain": name} if ratios is None else {}
    return TrainJob("expert", inputs, base_dir, ratios or {name: 1.0}, spec, f"expert:{name}", seed)
