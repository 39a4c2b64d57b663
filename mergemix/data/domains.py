"""Domains: the embedded corpora or a user's local files (.txt, .jsonl, .parquet), split train/held-out."""

from __future__ import annotations

import glob
import json
from collections.abc import Mapping
from pathlib import Path

from mergemix.artifacts import file_digest
from mergemix.data import embedded
from mergemix.errors import MergeMixError

FORMATS = (".txt", ".jsonl", ".parquet")


def resolve_files(name: str, spec: Mapping) -> list[Path]:
    paths = spec.get("paths") or []
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise MergeMixError(f"domain '{name}': `paths` is empty; list the files of this domain")
    files: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(str(pattern))) if any(c in str(pattern) for c in "*?[") else [pattern]
        if not matches:
            raise MergeMixError(f"domain '{name}': no file matches {pattern}")
        for m in map(Path, matches):
            if not m.is_file():
                raise MergeMixError(f"domain '{name}': file not found: {m}")
            if m.suffix not in FORMATS:
                raise MergeMixError(f"domain '{name}': unsupported file type {m.suffix} ({', '.join(FORMATS)})")
            files.append(m)
    return files


def _read(path: Path, text_field: str) -> list[str]:
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8", errors="replace")]
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line)[text_field])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise MergeMixError(f"{path}:{i}: expected a JSON object with a '{text_field}' string") from exc
        return docs
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if text_field not in table.column_names:
        raise MergeMixError(f"{path}: no column '{text_field}' (columns: {table.column_names})")
    return [str(x) for x in table.column(text_field).to_pylist() if x]


def source_fingerprint(name: str, spec: Mapping) -> dict:
    """What determines a domain's documents: its spec and, for files, their contents' hashes."""
    fp = {"name": name, "spec": dict(spec)}
    if spec.get("source") == "files":
        fp["files"] = {str(p): file_digest(p) for p in resolve_files(name, spec)}
    return fp


def load_domain(name: str, spec: Mapping, seed: int, heldout_fraction: float) -> tuple[list[str], list[str]]:
    source = spec.get("source", "embedded")
    if source == "embedded":
        if name not in embedded.NAMES:
            raise MergeMixError(f"domain '{name}': no embedded corpus of that name ({', '.join(embedded.NAMES)})")
        kwargs = {k: v for k, v in spec.items() if k in ("max_chars", "n_items", "per_doc")}
        train, held = embedded.build(name, seed, heldout_fraction, **kwargs)
    elif source == "files":
        docs = [d for p in resolve_files(name, spec) for d in _read(p, spec.get("text_field", "text"))
                if d and d.strip()]
        if not docs:
            raise MergeMixError(f"domain '{name}': its files hold no text")
        train, held = embedded.split_docs(docs, heldout_fraction)
        if not train:
            train, held = held, []
    else:
        raise MergeMixError(f"domain '{name}': unknown source '{source}' (embedded, files)")
    if not train:
        raise MergeMixError(f"domain '{name}' is empty")
    return train, held
