"""Packed token store: each domain's documents tokenised once, joined with EOS, saved as a flat .npy array."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pack(tokenizer, docs: list[str], batch: int = 256) -> np.ndarray:
    eos = tokenizer.eos_token_id
    dtype = np.uint16 if len(tokenizer) < 2**16 else np.uint32
    parts = []
    for i in range(0, len(docs), batch):
        for ids in tokenizer(docs[i:i + batch], add_special_tokens=False)["input_ids"]:
            parts.append(np.asarray(ids + [eos], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def save_split(out_dir: Path, split: str, tokens: np.ndarray) -> None:
    np.save(out_dir / f"{split}.npy", tokens)


def load_split(token_dir: str | Path, split: str = "train") -> np.ndarray:
    return np.load(Path(token_dir) / f"{split}.npy", mmap_mode="r")
