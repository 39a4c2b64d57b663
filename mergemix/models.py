"""Model construction: Llama-style configs from named sizes, or a user's HF checkpoint by local path."""

from __future__ import annotations

from pathlib import Path

import torch

from mergemix.errors import MergeMixError


def llama_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                 intermediate_size: int, max_position_embeddings: int, tie_word_embeddings: bool = True,
                 initializer_range: float = 0.02, **_):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                       intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                       tie_word_embeddings=tie_word_embeddings, initializer_range=initializer_range,
                       bos_token_id=None, eos_token_id=None, pad_token_id=None)


def build_model(model_cfg: dict, vocab_size: int, seed: int):
    """A fresh model from a size spec (`arch: llama`), or the user's checkpoint (`path:`)."""
    from transformers import AutoModelForCausalLM

    if model_cfg.get("path"):
        return load_checkpoint(model_cfg["path"])
    torch.manual_seed(seed)
    cfg = llama_config(vocab_size=vocab_size, **model_cfg)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def load_checkpoint(path: str | Path):
    """Load an HF causal-LM directory, turning the usual failures into one clear error."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise MergeMixError(f"not a checkpoint directory (no config.json): {path}")
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    except Exception as exc:
        raise MergeMixError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}") from exc


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model_cfg: dict, vocab_size: int) -> dict:
    """Parameter counts of a configured model, computed on the meta device (no weights allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_cfg.get("path"):
        cfg = AutoConfig.from_pretrained(model_cfg["path"], local_files_only=True)
    else:
        cfg = llama_config(vocab_size=vocab_size, max_position_embeddings=model_cfg["seq_len"], **model_cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = count_params(model)
    return {"name": model_cfg.get("name"), "architecture": type(model).__name__, "total_params": total,
            "active_params": total}
