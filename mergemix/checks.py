"""Checks of a composed config that need no work: the types and ranges of its numbers, the paths it names, a
writable cache and the search's storage URL. `Pipeline.validate` runs them first, so that a typo fails in
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
    "optim.weight_decay": "a non-negative number",
    "search.budget": "a positive integer", "search.n_workers": "a positive integer",
    "benchmarks.batch_size": "a positive integer", "benchmarks.max_length": "a positive integer",
    "benchmarks.bootstrap": "a non-negative integer", "trainer.num_threads": "a positive integer",
}


def _lookup(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_numbers(cfg: dict) -> None:
    for key, rule in NUMBERS.items():
        value = _lookup(cfg, key)
        if value is None:
            continue
        integer, in_range = _RULES[rule]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (ok and (not integer or float(value).is_integer()) and in_range(value)):
            raise MergeMixError(f"{key} must be {rule}, got {value!r}")


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
    check_paths(cfg)
    storage = (cfg.get("search") or {}).get("storage")
    if storage:
        check_storage(storage)
