"""Model construction: named sizes -> transformers configs (`arch: llama` dense, `arch: glm4_moe` mixture of
experts), or a user's HF checkpoint by local path. Parameter counts (total and active) on the meta device."""

from __future__ import annotations

from pathlib import Path

import torch

from mergemix.errors import MergeMixError
from mergemix.registry import Registry


def llama_config(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    tie_word_embeddings: bool = True,
    initializer_range: float = 0.02,
    **_,
):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def moe_config(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    moe_intermediate_size: int,
    num_experts: int,
    num_experts_per_tok: int,
    max_position_embeddings: int,
    num_shared_experts: int = 1,
    first_dense_layers: int = 1,
    tie_word_embeddings: bool = False,
    initializer_range: float = 0.02,
    **_,
):
    """GQA attention with full RoPE, `first_dense_layers` dense FFN layers (`intermediate_size`), then MoE layers of
    `num_experts` routed experts (top `num_experts_per_tok`, sigmoid router) plus shared experts, all of
    `moe_intermediate_size` (transformers' Glm4Moe, the layout of the paper's Ling-2.0-style models)."""
    from transformers import Glm4MoeConfig

    if not 0 < num_experts_per_tok <= num_experts:
        raise MergeMixError(
            f"num_experts_per_tok must be in 1..num_experts ({num_experts}), got {num_experts_per_tok}"
        )
    return Glm4MoeConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        intermediate_size=intermediate_size,
        moe_intermediate_size=moe_intermediate_size,
        n_routed_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok,
        n_shared_experts=num_shared_experts,
        first_k_dense_replace=first_dense_layers,
        n_group=1,
        topk_group=1,
        num_mtp_layers=0,
        partial_rotary_factor=1.0,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


ARCHS = Registry("model arch", {"llama": llama_config, "glm4_moe": moe_config})


def hf_config(model_cfg: dict, vocab_size: int):
    """The transformers config of a size spec; the spec's own `vocab_size` (a paper model's) wins if given."""
    arch = model_cfg.get("arch", "llama")
    build = ARCHS.get(arch)
    spec = {"max_position_embeddings": model_cfg.get("seq_len"), **model_cfg}
    spec["vocab_size"] = int(model_cfg.get("vocab_size") or vocab_size)
    try:
        return build(**spec)
    except TypeError as exc:
        raise MergeMixError(f"model '{model_cfg.get('name')}' ({arch}): {exc}") from exc


def build_model(model_cfg: dict, vocab_size: int, seed: int):
    """A fresh model from a size spec (`arch: llama` or `glm4_moe`), or the user's checkpoint (`path:`)."""
    from transformers import AutoModelForCausalLM

    if model_cfg.get("path"):
        return load_checkpoint(model_cfg["path"])
    cfg = hf_config(model_cfg, vocab_size)
    if cfg.vocab_size < vocab_size:
        raise MergeMixError(f"model vocab_size {cfg.vocab_size} is smaller than the tokenizer's {vocab_size}")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def check_checkpoint_dir(path: str | Path) -> Path:
    """An existing directory with an HF config (what loading or merging it needs first)."""
    path = Path(path)
    if not path.is_dir():
        raise MergeMixError(f"checkpoint directory not found: {path}")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise MergeMixError(f"not a checkpoint directory (no config.json): {path}")
    return path


def load_checkpoint(path: str | Path):
    """Load an HF causal-LM directory (or a LoRA adapter's, merged into its base), turning the usual failures into
    one clear error."""
    from transformers import AutoModelForCausalLM

    path = check_checkpoint_dir(path)
    if not (path / "config.json").is_file():  # a LoRA expert: its base with the adapter merged in
        from mergemix.lora import load_merged

        return load_merged(path)
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    except Exception as exc:
        raise MergeMixError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}") from exc


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def routed_expert_params(model) -> tuple[int, int]:
    """(routed expert parameters, of which used per token): transformers 5 stores each MoE layer's routed
    experts as stacked tensors of an `...Experts` module with `num_experts`; a token uses `num_experts_per_tok`
    of them. Shared experts and routers are ordinary (always active) parameters."""
    k = getattr(model.config, "num_experts_per_tok", None)
    routed = used = 0
    for mod in model.modules():
        if type(mod).__name__.endswith("Experts") and hasattr(mod, "num_experts") and k:
            n = sum(p.numel() for p in mod.parameters(recurse=False))
            routed, used = routed + n, used + n * k // mod.num_experts
    return routed, used


def active_params(model) -> int:
    """Parameters a token passes through: all but the routed experts it is not sent to (= total for dense)."""
    routed, used = routed_expert_params(model)
    return count_params(model) - routed + used


def describe(model_cfg: dict, vocab_size: int) -> dict:
    """Total and active parameter counts of a configured model, on the meta device (no weights allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_cfg.get("path"):
        cfg = AutoConfig.from_pretrained(model_cfg["path"], local_files_only=True)
    else:
        cfg = hf_config(model_cfg, vocab_size)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return {
        "name": model_cfg.get("name"),
        "architecture": type(model).__name__,
        "vocab_size": cfg.vocab_size,
        "total_params": count_params(model),
        "active_params": active_params(model),
        "routed_expert_params": routed_expert_params(model)[0],
    }


# Config keys that do not change the architecture (merging compares the rest).
IGNORED_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "architectures",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
}

# Config keys naming an MoE's expert count (Glm4Moe/DeepSeek, Qwen-MoE, Mixtral spellings).
_EXPERT_COUNT_KEYS = (
    "n_routed_experts",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "n_shared_experts",
)


def check_same_config(base_cfg: dict, other_cfg: dict, name: str) -> None:
    """One clear error when an expert's config differs from the base's (expert counts named first)."""
    a = {k: v for k, v in base_cfg.items() if k not in IGNORED_CONFIG_KEYS}
    b = {k: v for k, v in other_cfg.items() if k not in IGNORED_CONFIG_KEYS}
    for key in _EXPERT_COUNT_KEYS:
        if a.get(key) != b.get(key):
            raise MergeMixError(
                f"expert '{name}' has {key}={b.get(key)} but the base has {a.get(key)}: "
                "an MoE expert count must match the base to merge"
            )
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in diff[:3])
        raise MergeMixError(f"expert '{name}' has another architecture than the base ({detail})")


def stamp_special_tokens(path: str | Path, tok=None) -> None:
    """Give an HF directory with a tokenizer what `pipeline("text-generation")` needs: the tokenizer's EOS, BOS and
    PAD ids in config.json and generation_config.json (generation stops at EOS), and the model's positions as the
    tokenizer's `model_max_length` (inputs are truncated to what the model was trained on). `tok`: the tokenizer
    saved there (default: loaded from `path`; a directory without a loadable tokenizer has no ids to stamp)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    path = Path(path)
    if tok is None:
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception:  # noqa: BLE001 - no tokenizer files, or one transformers cannot load
            return
    if getattr(tok, "eos_token_id", None) is None:  # not an HF tokenizer with an EOS: nothing to stamp
        return
    if not (path / "config.json").is_file():  # a LoRA adapter directory: no model config to stamp
        return
    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    ids = {
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    }
    for key, value in ids.items():
        setattr(cfg, key, value)
    cfg.save_pretrained(str(path))
    gen = GenerationConfig.from_model_config(cfg)
    gen.save_pretrained(str(path))
    positions, tok_cfg = getattr(cfg, "max_position_embeddings", None), path / "tokenizer_config.json"
    if positions and tok_cfg.is_file():  # in the file, not on `tok` (the caller's tokenizer stays as it is)
        import json

        spec = json.loads(tok_cfg.read_text())
        tok_cfg.write_text(
            json.dumps({**spec, "model_max_length": positions}, indent=2, ensure_ascii=False) + "\n"
        )
