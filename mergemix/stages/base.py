"""Stage 3, base: the model every expert and mixture continues from, trained on the base mixture (token-
proportional by default) or the user's checkpoint (`base.checkpoint`)."""

from __future__ import annotations

from pathlib import Path

from mergemix.simplex import check_weights
from mergemix.stages.train import TrainJob


def user_base(spec: dict) -> Path | None:
    """`base.checkpoint` when set, checked by loading it; None when the base is trained."""
    if not spec.get("checkpoint"):
        return None
    from mergemix.models import load_checkpoint

    load_checkpoint(spec["checkpoint"])  # validates
    return Path(spec["checkpoint"])


def base_job(spec: dict, domain_names: list[str], token_mixture: dict[str, float], seed: int) -> TrainJob:
    """The base's training run; `token_mixture` is the token-proportional one (`base.mixture: token`)."""
    mixture = (
        token_mixture
        if spec["mixture"] == "token"
        else check_weights(spec["mixture"], domain_names, "base.mixture")
    )
    return TrainJob("base", {}, None, mixture, spec, "base", seed)
