"""Checks of a composed config that need no work: the typed schema (mergemix/schema.py), the paths it names, a
writable cache and the search's storage URL. `Pipeline.validate` runs them first, so that a typo fails in
seconds with one line instead of deep inside a stage (or after hours of training)."""

from __future__ import annotations

import os
from pathlib import Path

from mergemix.errors import MergeMixError, mask_secrets


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
    tokenizer, checkpoint = (
        (cfg.get("tokenizer") or {}).get("path"),
        (cfg.get("base") or {}).get("checkpoint"),
    )
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

    shown = mask_secrets(storage_url)
    try:
        url = make_url(storage_url)
        url.get_dialect().import_dbapi()
    except ImportError as exc:
        raise MergeMixError(
            f"cannot open Optuna storage {shown}: its database driver is not installed "
            f"({exc}); PostgreSQL: pip install -e .[postgres], postgresql+psycopg2://..."
        ) from exc
    except Exception as exc:  # SQLAlchemy raises many kinds
        raise MergeMixError(f"cannot open Optuna storage {shown}: {str(exc).splitlines()[0]}") from exc
    folder = Path(url.database).parent if url.get_backend_name() == "sqlite" and url.database else None
    if folder and not folder.is_dir():
        raise MergeMixError(f"cannot open Optuna storage {shown}: {folder} is not a directory")


def check_config(cfg: dict) -> None:
    from mergemix import schema

    schema.check(cfg)
    check_paths(cfg)
    storage = (cfg.get("search") or {}).get("storage")
    if storage:
        check_storage(storage)
