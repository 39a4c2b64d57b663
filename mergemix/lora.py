"""LoRA experts (`experts.kind: lora`, peft): each expert is a low-rank adapter on the shared base, and the merge is
theta(alpha) = theta_base + sum_k alpha_k s_k B_k A_k, with peft's scaling s_k (lora_alpha / r, or / sqrt(r) under
rsLoRA). `LoraBank` holds the base once and the K adapters' factors; each targeted tensor's merge is one matmul of
the stacked factors, so no dense task vector of a whole model is ever held."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from mergemix.errors import MergeMixError
from mergemix.merging import ExpertBank, check_finite, mergeable

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def linear_targets(model) -> str:
    """A regex of the model's nn.Linear layers (full names) but the output head. In an MoE only attention: peft
    (0.21) maps every `*.gate_proj/up_proj/down_proj` of a transformers-5 MoE onto the routed experts' stacked
    tensors, which this merge does not cover; MLPs, routers and experts keep the base's weights."""
    from mergemix.models import routed_expert_params

    head, moe = model.get_output_embeddings(), routed_expert_params(model)[0] > 0
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head and not (moe and ".mlp." in n)
    ]
    return "|".join(re.escape(n) for n in names)


def wrap(model, spec: Mapping):
    """`model` with fresh LoRA adapters of `spec` (experts.lora: r, alpha, dropout, target_modules, default
    `linear_targets`); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=int(spec["r"]),
        lora_alpha=float(spec["alpha"]),
        lora_dropout=float(spec.get("dropout", 0)),
        target_modules=spec.get("target_modules") or linear_targets(model),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, cfg)
    if model.peft_config["default"].target_parameters:
        raise MergeMixError(
            f"experts.lora.target_modules {spec.get('target_modules')!r} reach an MoE's stacked "
            "expert tensors, which LoRA merging does not cover; target attention layers"
        )
    return model


def load_merged(path: str | Path):
    """An adapter directory as a full model: its base with the adapter merged in (peft's merge_and_unload)."""
    from peft import PeftModel

    from mergemix.models import load_checkpoint

    base = json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise MergeMixError(f"LoRA adapter {path} names no base model (base_model_name_or_path)")
    return PeftModel.from_pretrained(load_checkpoint(base), str(path)).merge_and_unload()


def load_adapter(path: str | Path) -> tuple[float, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(scaling, {base parameter name: (A [r, in], B [out, r])}) of a saved LoRA adapter."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    unsupported = [k for k in ("rank_pattern", "alpha_pattern", "target_parameters") if cfg.get(k)]
    unsupported += [
        k
        for k in ("use_dora", "fan_in_fan_out", "modules_to_save", "lora_bias", "trainable_token_indices")
        if cfg.get(k)
    ]
    unsupported += ["bias"] if cfg.get("bias", "none") != "none" else []
    if cfg.get("peft_type") != "LORA" or unsupported:
        raise MergeMixError(
            f"adapter {path}: only plain LoRA adapters merge (peft_type LORA without "
            f"{', '.join(unsupported) or 'other options'})"
        )
    r = int(cfg["r"])
    scaling = float(cfg["lora_alpha"]) / (math.sqrt(r) if cfg.get("use_rslora") else r)
    state = load_file(str(path / "adapter_model.safetensors"))
    prefix = "base_model.model."
    factors = {}
    for key in state:
        if key.endswith(".lora_A.weight"):
            module = key[len(prefix) : -len(".lora_A.weight")]
            factors[f"{module}.weight"] = (state[key].float(), state[key.replace("lora_A", "lora_B")].float())
    return scaling, factors


class _LowRankDeltas(Mapping):
    """pname -> the K dense task vectors [K, numel] of a targeted tensor, formed when asked for."""

    def __init__(self, bank: LoraBank):
        self.bank = bank

    def __getitem__(self, pname: str) -> torch.Tensor:
        b, a, owner, scale = self.bank.factors[pname]
        masks = [owner == i for i in range(len(self.bank.names))]  # an expert without rows here adds zeros
        return torch.stack([((b[:, m] * scale[m]) @ a[m]).reshape(-1) for m in masks])

    def __iter__(self):
        return iter(self.bank.factors)

    def __len__(self) -> int:
        return len(self.bank.factors)


class LoraBank(ExpertBank):
    """ExpertBank of LoRA experts: per targeted tensor the adapters' factors side by side, B = [B_1 .. B_K]
    [out, sum r] and A = [A_1; ..; A_K] [sum r, in], so theta(alpha) = theta_base + B diag(alpha_k s_k) A."""

    def __init__(self, base, adapters: dict[str, tuple[float, dict]]):
        self.names = sorted(adapters)
        self.base_params = {n: p.detach().clone() for n, p in mergeable(base).items()}
        check_finite(base, "base")
        parts: dict[str, list] = {}
        for i, name in enumerate(self.names):
            scaling, factors = adapters[name]
            for pname, (a, b) in factors.items():
                if pname not in self.base_params or self.base_params[pname].shape != (b.shape[0], a.shape[1]):
                    raise MergeMixError(
                        f"LoRA expert '{name}' adapts {pname}, which the base lacks or shapes otherwise"
                    )
                if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                    raise MergeMixError(
                        f"expert '{name}' has NaN or Inf weights (first in {pname}); refusing to merge it"
                    )
                parts.setdefault(pname, []).append((i, scaling, a, b))
        self.factors = {}
        for pname, ps in parts.items():
            owner = torch.cat([torch.full((a.shape[0],), i) for i, _, a, _ in ps])
            scale = torch.cat([torch.full((a.shape[0],), s) for _, s, a, _ in ps])
            self.factors[pname] = (
                torch.cat([b for *_, b in ps], dim=1),
                torch.cat([a for *_, a, _ in ps]),
                owner,
                scale,
            )
        self.deltas = _LowRankDeltas(self)

    @classmethod
    def from_paths(cls, base_path: str | Path, expert_paths: dict[str, str | Path]) -> LoraBank:
        from mergemix.models import load_checkpoint

        return cls(load_checkpoint(base_path), {n: load_adapter(p) for n, p in expert_paths.items()})

    def _coef(self, pname: str, alpha: torch.Tensor) -> torch.Tensor:
        _, _, owner, scale = self.factors[pname]
        return alpha[owner] * scale

    @torch.no_grad()
    def merge_into(self, model, weights, scale: float = 1.0) -> None:
        """base + scale * sum_k alpha_k s_k B_k A_k per adapted tensor (the dense bank's contract)."""
        alpha = self.alpha_vector(weights) * float(scale)
        for pname, p in mergeable(model).items():
            if pname in self.factors:
                b, a, _, _ = self.factors[pname]
                torch.addmm(self.base_params[pname], b, a * self._coef(pname, alpha)[:, None], out=p.data)
            else:
                p.data.copy_(self.base_params[pname])

    def merged(self, pname: str, alpha: torch.Tensor) -> torch.Tensor:
        if pname not in self.factors:
            return self.base_params[pname].clone()
        b, a, _, _ = self.factors[pname]
        return torch.addmm(self.base_params[pname], b, a * self._coef(pname, alpha)[:, None])
