"""Linear merging of domain experts: theta(alpha) = theta_base + sum_k alpha_k (theta_k - theta_base).

`ExpertBank` loads the experts once as task vectors and merges any alpha in place into one preallocated model
(each storage once, so tied embeddings are merged a single time)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from mergemix.artifacts import honour_umask
from mergemix.checks import check_writable
from mergemix.errors import MergeMixError
from mergemix.models import (
    IGNORED_CONFIG_KEYS,
    check_checkpoint_dir,
    check_same_config,
    load_checkpoint,
    stamp_special_tokens,
)
from mergemix.simplex import check_weights
from mergemix.streaming import check_lineage, checkpoint_bytes, stream_merge


def architecture(model) -> dict:
    cfg = {k: v for k, v in model.config.to_dict().items() if k not in IGNORED_CONFIG_KEYS}
    return {"config": cfg, "shapes": {n: tuple(p.shape) for n, p in model.named_parameters()}}


def check_compatible(base, other, name: str) -> None:
    a, b = architecture(base), architecture(other)
    check_same_config(a["config"], b["config"], name)
    if a["shapes"] != b["shapes"]:
        raise MergeMixError(f"expert '{name}' has another architecture than the base (parameter shapes)")


def mergeable(model) -> dict[str, torch.Tensor]:
    """Every tensor a merge covers: the parameters (each storage once, so tied weights count once) and the
    persistent floating-point buffers (e.g. an MoE router's expert-score bias)."""
    out = dict(model.named_parameters())
    for mod_name, mod in model.named_modules():
        for b_name, buf in mod.named_buffers(recurse=False):
            if buf.is_floating_point() and b_name not in mod._non_persistent_buffers_set:
                out[f"{mod_name}.{b_name}" if mod_name else b_name] = buf
    return out


def check_finite(model, name: str) -> None:
    for pname, p in mergeable(model).items():
        if not torch.isfinite(p).all():
            raise MergeMixError(
                f"expert '{name}' has NaN or Inf weights (first in {pname}); refusing to merge it"
            )


class ExpertBank:
    """Base weights and the K task vectors, flattened per parameter as a [K, numel] matrix (one row per expert:
    its transpose is the column-major operand BLAS gemv streams fastest)."""

    def __init__(self, base, experts: dict[str, object]):
        self.names = sorted(experts)
        self.base_params = {n: p.detach().clone() for n, p in mergeable(base).items()}
        self.deltas: dict[str, torch.Tensor] = {}
        for name in self.names:
            check_compatible(base, experts[name], name)
            check_finite(experts[name], name)
        tensors = {e: mergeable(experts[e]) for e in self.names}
        for pname, p0 in self.base_params.items():
            rows = [tensors[e][pname].detach().reshape(-1) - p0.reshape(-1) for e in self.names]
            self.deltas[pname] = torch.stack(rows)  # [K, numel]

    @classmethod
    def from_paths(cls, base_path: str | Path, expert_paths: dict[str, str | Path]) -> ExpertBank:
        """Full checkpoints, or LoRA adapters (lora.LoraBank: the base once plus the adapters' factors)."""
        from mergemix.lora import LoraBank, is_adapter

        kinds = {is_adapter(p) for p in expert_paths.values()}
        if kinds == {True}:
            return LoraBank.from_paths(base_path, expert_paths)
        if len(kinds) > 1:
            raise MergeMixError("experts mix LoRA adapters and full checkpoints; train them all of one kind")
        base = load_checkpoint(base_path)
        return cls(base, {n: load_checkpoint(p) for n, p in expert_paths.items()})

    def alpha_vector(self, weights) -> torch.Tensor:
        w = check_weights(weights, self.names, "merge weights")
        return torch.tensor([w[n] for n in self.names], dtype=torch.float32)

    @torch.no_grad()
    def merge_into(self, model, weights, scale: float = 1.0) -> None:
        """Overwrite `model`'s parameters with theta(alpha) = base + scale * sum_k alpha_k tau_k (scale > 1:
        an extrapolated merge); no allocation beyond the model itself. One fused addmv per parameter reads base
        and deltas once and writes the parameter once (bench/merge.py)."""
        alpha = self.alpha_vector(weights) * float(scale)
        on = {}  # alpha on each (device, dtype) of the deltas: a bank on a GPU merges there
        for pname, p in mergeable(model).items():
            d = self.deltas[pname]
            a = on.setdefault((d.device, d.dtype), alpha.to(d.device, d.dtype))
            torch.addmv(self.base_params[pname].view(-1), d.T, a, out=p.data.view(-1))

    def merged(self, pname: str, alpha: torch.Tensor) -> torch.Tensor:
        """theta(alpha) for one parameter as a new tensor, differentiable in alpha."""
        p0 = self.base_params[pname]
        return torch.addmv(p0.view(-1), self.deltas[pname].T, alpha).view_as(p0)

    def task_vector_norms(self) -> dict[str, float]:
        sq = sum((d.double() ** 2).sum(dim=1) for d in self.deltas.values())
        return {n: float(v) for n, v in zip(self.names, sq.sqrt())}

    def cosines(self) -> list[list[float]]:
        dots = sum(d.double() @ d.double().T for d in self.deltas.values())
        norm = dots.diagonal().sqrt()
        return (dots / torch.outer(norm, norm).clamp_min(1e-30)).tolist()


def _fits_in_memory(base_path: str | Path, k: int) -> bool:
    """Whether the in-memory merge (base, K task vectors and the model, all fp32) fits in half the free RAM."""
    try:
        size = checkpoint_bytes(base_path) * 2  # a bf16 checkpoint doubles in fp32
    except MergeMixError:
        return True  # not safetensors: only the in-memory path can read it
    avail = (
        next(
            (
                int(ln.split()[1]) * 1024
                for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemAvailable:")
            ),
            None,
        )
        if Path("/proc/meminfo").is_file()
        else None
    )
    return avail is None or (k + 2) * size <= avail // 2


def export_merge(
    base_path: str | Path,
    expert_paths: Sequence[str | Path],
    weights: Sequence[float],
    out_dir: str | Path,
    overwrite: bool = False,
    stream: bool | None = None,
) -> Path:
    """Write theta(alpha) as an HF checkpoint (safetensors + config + tokenizer when the base has one).
    `stream`: merge tensor by tensor from memory-mapped safetensors (mergemix/streaming.py) instead of loading
    K + 2 models; None streams when the in-memory merge would not fit in half the free RAM."""
    from mergemix.lora import is_adapter

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise MergeMixError(f"output directory {out_dir} exists and is not empty; choose another `out`")
    check_writable(out_dir, "output directory")
    names = [f"expert{i:03d}:{Path(p).name}" for i, p in enumerate(expert_paths)]
    ordered = check_weights(list(weights), names, "merge weights")  # before loading anything
    paths = dict(zip(names, expert_paths))
    for p in [base_path, *expert_paths]:
        check_checkpoint_dir(p)
    for name, p in paths.items():
        check_lineage(base_path, p, name)
    if stream is None:
        stream = not _fits_in_memory(base_path, len(names))
    stream = stream and not any(is_adapter(p) for p in expert_paths)  # LoRA: the base plus K small adapters
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))  # unique to this merge
    try:
        if stream:
            stream_merge(base_path, paths, ordered, tmp)
            shutil.copy2(Path(base_path) / "config.json", tmp / "config.json")
        else:
            bank = ExpertBank.from_paths(base_path, paths)
            model = load_checkpoint(base_path)
            bank.merge_into(model, ordered)
            model.save_pretrained(str(tmp), safe_serialization=True)
        for f in Path(base_path).iterdir():
            if (
                f.name.startswith(("tokenizer", "special_tokens", "generation_config"))
                and not (tmp / f.name).exists()
            ):
                shutil.copy2(f, tmp / f.name)
        stamp_special_tokens(tmp)  # also for a base trained before the ids were written
        if overwrite and out_dir.exists():
            shutil.rmtree(out_dir)
        honour_umask(tmp)  # the usual modes, not mkdtemp's and safetensors' private ones
        os.rename(
            tmp, out_dir
        )  # atomic, and refused onto a non-empty directory: of two merges to one `out`, one wins
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise MergeMixError(
                f"output directory {out_dir} exists and is not empty; choose another `out`"
            ) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
