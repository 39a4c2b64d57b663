"""alpha* in the formats other tools read: a mergekit config reproducing the merge, a per-domain weight YAML and a
Megatron/OLMo-style blend list ("0.4 /data/code 0.6 /data/math") for the real mid-training run. Local paths are
written absolute, so the files work from any directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from mergemix.artifacts import write_atomic
from mergemix.errors import MergeMixError

FILES = {"mergekit": "mergekit.yaml", "weights": "mixture_weights.yaml", "blend": "blend.txt"}


def normalised(alpha: dict[str, float]) -> dict[str, float]:
    """Weights in canonical (sorted) domain order, rescaled to sum to 1 (alpha* is stored rounded)."""
    total = sum(alpha.values())
    if not alpha or total <= 0 or min(alpha.values()) < 0:
        raise MergeMixError(
            f"cannot export mixture {alpha}: weights must be non-negative with a positive sum"
        )
    return {d: alpha[d] / total for d in sorted(alpha)}


def checkpoint_dtype(path: str | Path) -> str:
    cfg = json.loads((Path(path) / "config.json").read_text())
    return str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")


def absolute(path: str | Path) -> str:
    """A local path made absolute against the current directory (the exports work from any directory; symlinks
    kept, a trailing slash too); a URL as is."""
    path = str(path)
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path)) + ("/" if path.endswith("/") and path != "/" else "")


def mergekit_config(
    base: str | Path, experts: dict[str, str | Path], alpha: dict[str, float], dtype: str = "float32"
) -> dict:
    """mergekit's task_arithmetic is theta_base + sum_k w_k (theta_k - theta_base): our merge, with w = alpha."""
    w = normalised(alpha)
    if set(experts) != set(w):
        raise MergeMixError(f"experts {sorted(experts)} do not match the mixture's domains {sorted(w)}")
    return {
        "merge_method": "task_arithmetic",
        "base_model": absolute(base),
        "models": [{"model": absolute(experts[d]), "parameters": {"weight": w[d]}} for d in w],
        "parameters": {"normalize": False},
        "dtype": dtype,
    }


def blend_list(alpha: dict[str, float], prefix: str = "/data/{domain}") -> str:
    """Weights interleaved with data prefixes (absolute), as Megatron's `--data-path` and OLMo-style blends take
    them; domains of weight 0 are left out (a blend cannot draw from them)."""
    if "{domain}" not in prefix:
        raise MergeMixError(f"export.data_prefix must contain '{{domain}}', got '{prefix}'")
    return " ".join(
        f"{w:.6g} {absolute(prefix.format(domain=d))}" for d, w in normalised(alpha).items() if w > 0
    )


def write_exports(
    out_dir: str | Path,
    alpha: dict[str, float],
    base: str | Path,
    experts: dict[str, str | Path],
    prefix: str = "/data/{domain}",
) -> dict[str, Path]:
    out_dir = Path(out_dir)
    texts = {
        "mergekit": yaml.safe_dump(
            mergekit_config(base, experts, alpha, checkpoint_dtype(base)), sort_keys=False
        ),
        "weights": yaml.safe_dump(normalised(alpha), sort_keys=False),
        "blend": blend_list(alpha, prefix) + "\n",
    }
    for key, text in texts.items():
        write_atomic(out_dir / FILES[key], text)
    return {k: out_dir / f for k, f in FILES.items()}
