"""Checks of a composed config that need no work: the types and ranges of its numbers, its options, the paths it
names, a writable cache and the search's storage URL. `Pipeline.validate` runs them first, so that a typo fails in
seconds with one line instead of deep inside a stage (or after hours of training)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from mergemix.errors import MergeMixError

# rule name -> (integer only, accepted range)
_RULES = {
    "a positive integer": (True, lambda v: v > 0),
    "a non-negative integer": (True, lambda v: v >= 0),
    "a positive number": (False, lambda v: v > 0),
    "a non-negative number": (False, lambda v: v >= 0),
    "a fraction in [0, 1)": (False, lambda v: 0 <= v < 1),
    "a fraction in (0, 1]": (False, lambda v: 0 < v <= 1),
    "an integer of at least 2": (True, lambda v: v >= 2),
}

# Dotted config keys and what each must be; a key that is absent or null is not checked (optional, or a
# mandatory value Hydra already reports).
NUMBERS = {
    "seed": "a non-negative integer", "search_seed": "a non-negative integer",
    "tokenizer.vocab_size": "a positive integer", "tokenizer.train_chars": "a positive integer",
    "domains.heldout_fraction": "a fraction in [0, 1)",
    **{f"model.{k}": "a positive integer" for k in ("seq_len", "batch_size", "hidden_size", "num_layers",
                                                     "num_heads", "num_kv_heads", "intermediate_size")},
    **{f"{stage}.tokens": "a positive integer" for stage in ("base", "experts", "mix")},
    **{f"{stage}.lr": "a positive number" for stage in ("base", "experts", "mix")},
    **{f"{stage}.warmup_steps": "a non-negative integer" for stage in ("base", "experts", "mix")},
    "experts.lora.r": "a positive integer", "experts.lora.alpha": "a positive number",
    "experts.lora.dropout": "a fraction in [0, 1)",
    "optim.weight_decay": "a non-negative number", "model.router_bias_update_rate": "a non-negative number",
    "search.budget": "a positive integer", "search.n_workers": "a positive integer",
    "search.merge_scale": "a positive number",
    "benchmarks.batch_size": "a positive integer", "benchmarks.max_length": "a positive integer",
    "benchmarks.bootstrap": "a non-negative integer", "trainer.num_threads": "a positive integer",
    "trainer.gradient_clip_val": "a non-negative number", "trainer.micro_batch_size": "a positive integer",
    "data.shard_mb": "a positive number", "baseline.trial_tokens": "a positive integer",
    **{f"search.{k}": "a positive integer" for k in ("n_candidates", "top_k", "grid_resolution")},
    "search.prior_concentration": "a positive number", "search.round_concentration": "a positive number",
    "search.lgbm.n_estimators": "a positive integer", "search.lgbm.learning_rate": "a positive number",
    "search.lgbm.num_leaves": "an integer of at least 2", "search.lgbm.min_data_in_leaf": "a non-negative integer",
    "search.lgbm.min_data_in_bin": "a positive integer", "search.lgbm.bagging_fraction": "a fraction in (0, 1]",
    "search.lgbm.bagging_freq": "a non-negative integer",
}

# Dotted config keys naming one of a few options, compared as text (absent or null: not checked).
CHOICES = {
    **{f"{stage}.schedule": ("constant", "wsd", "cosine") for stage in ("base", "experts", "mix")},
    "trainer.eval_dtype": ("bfloat16", "float16"),  # null: float32
    "trainer.precision": ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true", "transformer-engine",
                          "transformer-engine-float16", "32", "bf16", "16", "64"),  # Lightning's
    "trainer.accelerator": ("cpu", "gpu", "cuda", "mps", "tpu", "auto"),
}

# Merge evaluations a search back-end needs at least: a surrogate is fitted on 2 or more, iterative's first round
# is half its budget.
MIN_BUDGET = {"surrogate": 2, "iterative": 4}


def _lookup(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def number_ok(rule: str, value) -> bool:
    integer, in_range = _RULES[rule]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (not integer or float(value).is_integer()) and in_range(value)


def check_numbers(cfg: dict) -> None:
    for key, rule in NUMBERS.items():
        value = _lookup(cfg, key)
        if value is not None and not number_ok(rule, value):
            raise MergeMixError(f"{key} must be {rule}, got {value!r}")


def check_choices(cfg: dict) -> None:
    for key, options in CHOICES.items():
        value = _lookup(cfg, key)
        if value is not None and (isinstance(value, bool) or str(value) not in options):
            raise MergeMixError(f"{key} must be one of {', '.join(options)}, got {value!r}")
    search = cfg.get("search") or {}
    least = MIN_BUDGET.get(search.get("backend"), 1)
    if isinstance(search.get("budget"), int) and search["budget"] < least:
        raise MergeMixError(f"search.budget must be at least {least} for the {search['backend']} back-end, "
                            f"got {search['budget']}")


def check_writable(path: str | Path, what: str) -> Path:
    """`path` is, or can be created as, a directory this process may write to; nothing is created."""
    path = Path(path)
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise MergeMixError(f"{what} {path} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MergeMixError(f"{what} {path} is not writable ({existing} is read-only for this user)")
    return path


def writable_dir(path: str | Path, what: str) -> Path:
    """`check_writable`, then create the directory."""
    path = check_writable(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MergeMixError(f"{what} {path} cannot be created ({exc.strerror})") from exc
    return path


def check_paths(cfg: dict) -> None:
    """User checkpoints and tokenizers named in the config exist; the cache directory can be written."""
    tokenizer, checkpoint = (cfg.get("tokenizer") or {}).get("path"), (cfg.get("base") or {}).get("checkpoint")
    if tokenizer:
        from mergemix.data.tokenizer import load_tokenizer

        load_tokenizer(tokenizer)
    if checkpoint:
        from mergemix.models import check_checkpoint_dir

        check_checkpoint_dir(checkpoint)
    check_writable(cfg["paths"]["cache_dir"], "paths.cache_dir")


def check_experts(cfg: dict) -> None:
    experts = cfg.get("experts") or {}
    kind = experts.get("kind", "full")
    if kind not in ("full", "lora"):
        raise MergeMixError(f"experts.kind must be full or lora, got {kind!r}")
    if kind == "lora" and (cfg.get("trainer") or {}).get("strategy"):
        raise MergeMixError("experts.kind=lora trains on one device per job (no trainer.strategy such as fsdp)")


def check_storage(storage_url: str) -> None:
    """The storage URL's form and database driver, without connecting: a typo fails before any training."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(storage_url)
        url.get_dialect().import_dbapi()
    except ImportError as exc:
        raise MergeMixError(f"cannot open Optuna storage {storage_url}: its database driver is not installed "
                            f"({exc}); PostgreSQL: pip install -e .[postgres], postgresql+psycopg2://...") from exc
    except Exception as exc:  # SQLAlchemy raises many kinds
        raise MergeMixError(f"cannot open Optuna storage {storage_url}: {str(exc).splitlines()[0]}") from exc
    folder = Path(url.database).parent if url.get_backend_name() == "sqlite" and url.database else None
    if folder and not folder.is_dir():
        raise MergeMixError(f"cannot open Optuna storage {storage_url}: {folder} is not a directory")


def check_config(cfg: dict) -> None:
    check_numbers(cfg)
    check_choices(cfg)
    check_paths(cfg)
    check_experts(cfg)
    storage = (cfg.get("search") or {}).get("storage")
    if storage:
        check_storage(storage)
