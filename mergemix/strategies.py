"""Lightning strategies from plain config dicts, and one consolidated HF checkpoint out of any of them.

    {name: auto}                                   single process (the default)
    {name: ddp, ...DDPStrategy kwargs}             data parallel
    {name: fsdp, auto_wrap: true, activation_checkpointing: true, state_dict_type: sharded, ...FSDPStrategy kwargs}

For FSDP, `auto_wrap` and `activation_checkpointing` name no class: they mean "the model's decoder layers", the
classes its HF definition lists in `_no_split_modules` (LlamaDecoderLayer, ...), so one config fits every model."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mergemix.errors import MergeMixError
from mergemix.registry import Registry


def is_secondary_rank() -> bool:
    """Whether a launcher started this process as a rank other than 0: torchrun (RANK), srun with several tasks
    (SLURM_PROCID), or Lightning re-running the command for its other devices (LOCAL_RANK / NODE_RANK)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) != 0
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) != 0
    return int(env.get("LOCAL_RANK", "0")) != 0 or int(env.get("NODE_RANK", "0")) != 0


def launch_id() -> str:
    """The same string on every rank of one distributed launch, another for any other launch: the SLURM job step,
    the torchrun run, or rank 0's process id (Lightning's re-runs are its children)."""
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return f"slurm:{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '')}"
    if "TORCHELASTIC_RUN_ID" in env:
        return (
            f"torchrun:{env['TORCHELASTIC_RUN_ID']}@{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
        )
    return f"pid:{os.getppid() if is_secondary_rank() else os.getpid()}"


def decoder_layer_classes(model) -> set[type]:
    """The classes of `model`'s decoder layers: HF's `_no_split_modules`, found among its modules by name."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise MergeMixError(
            f"cannot find the decoder layer class of {type(model).__name__} "
            f"(_no_split_modules={sorted(names)}); set auto_wrap: false"
        )
    return found


def _options(name: str) -> set[str]:
    import inspect

    from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.nn.parallel import DistributedDataParallel

    # both strategies forward unknown keys to the torch wrapper, which would fail only once training starts
    if name == "ddp":
        return {
            *inspect.signature(DDPStrategy).parameters,
            *inspect.signature(DistributedDataParallel).parameters,
        }
    return {
        *inspect.signature(FSDPStrategy).parameters,
        *inspect.signature(FullyShardedDataParallel).parameters,
        "auto_wrap",
        "activation_checkpointing",
    }


def check_strategy(spec: dict | str | None) -> tuple[str, dict]:
    """(name, options) of a strategy config, or one clear error; needs no model, so it runs before any work."""
    if spec is None or isinstance(spec, str):
        spec = {"name": spec or "auto"}
    name = spec.get("name") or "auto"
    options = {k: v for k, v in spec.items() if k != "name" and v is not None}
    STRATEGIES.get(name)
    unknown = sorted(set(options) - _options(name)) if name != "auto" else sorted(options)
    if unknown:
        raise MergeMixError(f"bad trainer.strategy for {name}: unknown option(s) {unknown}")
    return name, options


def build_strategy(spec: dict | str | None, model):
    """A Lightning strategy object (or "auto") from `{name: ..., **options}`."""
    name, kwargs = check_strategy(spec)
    return STRATEGIES[name](kwargs, model)


def _ddp(kwargs: dict, model):
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(**kwargs)


def _fsdp(kwargs: dict, model):
    from pytorch_lightning.strategies import FSDPStrategy

    layers = decoder_layer_classes(model) if kwargs.pop("auto_wrap", True) else None
    if layers:
        kwargs["auto_wrap_policy"] = layers
    if kwargs.pop("activation_checkpointing", False):
        kwargs["activation_checkpointing_policy"] = layers or decoder_layer_classes(model)
    return FSDPStrategy(**kwargs)


STRATEGIES = Registry(
    "trainer.strategy.name", {"auto": lambda kwargs, model: "auto", "ddp": _ddp, "fsdp": _fsdp}
)


def full_state_dict(trainer) -> dict[str, torch.Tensor]:
    """The LightningModule's complete state dict on rank 0 (CPU; empty on other ranks): FSDP shards are gathered,
    wrapper prefixes (_fsdp_wrapped_module, _checkpoint_wrapped_module) removed. Collective: call on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    on_cpu = trainer.strategy.root_device.type == "cpu"  # offloading CPU tensors to CPU crashes (torch 2.13)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=not on_cpu)
    state = get_model_state_dict(trainer.strategy.model, options=opts)
    return state if trainer.is_global_zero else {}


def save_consolidated(trainer, model, out_dir: str | Path) -> None:
    """Write `model` (the HF model inside the trained LightningModule) as one safetensors HF directory, from rank 0.
    Without FSDP the weights are whole on every rank; with it, they are gathered and loaded into a fresh copy."""
    from pytorch_lightning.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        if trainer.is_global_zero:
            model.save_pretrained(str(out_dir), safe_serialization=True)
        return
    state = full_state_dict(trainer)
    if not trainer.is_global_zero:
        return
    from transformers import AutoModelForCausalLM

    prefix = "model."  # the HF model is CausalLMModule.model
    hf_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():  # every weight is loaded below; initialising ~1B parameters would cost seconds
        fresh = AutoModelForCausalLM.from_config(model.config, dtype=next(iter(hf_state.values())).dtype)
    missing, unexpected = fresh.load_state_dict(hf_state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") and model.config.tie_word_embeddings}
    if set(missing) - tied or unexpected:
        raise MergeMixError(
            f"consolidating the FSDP checkpoint failed: missing {sorted(set(missing) - tied)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )
    fresh.save_pretrained(str(out_dir), safe_serialization=True)
