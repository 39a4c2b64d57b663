"""Stage 2, tokenizer: trained on an equal share of each domain's training text (or the user's), then every
domain tokenised by it into one memory-mapped token file per split."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from mergemix.artifacts import ArtifactStore
from mergemix.data import tokens as tok_store
from mergemix.data.tokenizer import load_tokenizer, train_tokenizer
from mergemix.stages import data
from mergemix.stages.keys import config_inputs


def build_tokenizer(store: ArtifactStore, cfg: dict, corpus: dict[str, Path]) -> Path:
    """The tokenizer's directory: `tokenizer.path` when set (checked here), else trained and cached."""
    tc = cfg["tokenizer"]
    if tc.get("path"):
        load_tokenizer(tc["path"])  # fail early and clearly
        return Path(tc["path"])
    inputs = {"corpus": {n: p.name for n, p in corpus.items()}, **config_inputs(cfg, "tokenizer")}

    def texts() -> Iterator[str]:
        for name, corpus_dir in corpus.items():
            yield from training_texts(
                data.docs(cfg, name, corpus_dir, "train"), tc["train_chars"] // len(corpus)
            )

    def build(tmp: Path) -> None:
        train_tokenizer(texts(), tc["vocab_size"], tmp)

    return store.get_or_build("tokenizer", inputs, build)


def training_texts(docs: Iterable[str], chars: int) -> Iterator[str]:
    """A domain's documents for the tokenizer until `chars` characters are taken (the last one whole); a long
    document comes in pieces (tok_store.pieces), and is cut at exactly `chars`."""
    used = 0
    for doc in docs:
        for piece in tok_store.pieces(doc):
            if used >= chars:
                return
            if len(doc) > tok_store.CHUNK_CHARS:
                piece = piece[: chars - used]
            used += len(piece)
            yield piece


def tokenize_domains(
    store: ArtifactStore, cfg: dict, corpus: dict[str, Path], tokenizer_dir: Path
) -> dict[str, Path]:
    """Each domain's token store, keyed by its corpus, the tokenizer and its `max_tokens` cap."""
    out = {}
    workers = int((cfg.get("data") or {}).get("num_workers", 0))
    for name, corpus_dir in corpus.items():
        inputs = {"corpus": corpus_dir.name, "tokenizer": store.ref(tokenizer_dir)}
        cap = (cfg["domains"]["sources"][name] or {}).get("max_tokens")
        if cap:  # only when set, so that the keys of uncapped domains stay as they were
            inputs["max_tokens"] = int(cap)

        def build(tmp: Path, name=name, corpus_dir=corpus_dir, cap=cap):
            return tok_store.pack_shards(data.shards(cfg, name, corpus_dir), tokenizer_dir, tmp, workers, cap)

        out[name] = store.get_or_build("tokens", inputs, build)
    return out


def load_arrays(token_dirs: dict[str, Path]) -> dict[str, np.ndarray]:
    """Each domain's training tokens (memory-mapped)."""
    return {n: tok_store.load_split(p, "train") for n, p in token_dirs.items()}
