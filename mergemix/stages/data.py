"""Stage 1, data: each domain's documents, split into training and held-out (embedded domains) or fingerprinted
(user files, streamed wherever they are read); and the repetition limit every training run is checked against."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mergemix import artifacts
from mergemix.artifacts import ArtifactStore, read_manifest
from mergemix.data import domains as dom
from mergemix.stages.keys import config_inputs


def build_corpus(store: ArtifactStore, cfg: dict, domain_names: list[str], seed: int) -> dict[str, Path]:
    """Embedded domains: their documents, split. User domains: fingerprinted only (their files are streamed)."""
    out, d = {}, cfg["domains"]
    memo = artifacts.load_memo(
        store.memo_path
    )  # file hashes by path, inode, size, mtime, ctime: unreadable = none
    before = dict(memo)
    for name in domain_names:
        spec = d["sources"][name] or {}
        inputs = {"source": dom.source_fingerprint(name, spec, memo), **config_inputs(cfg, "corpus")}

        def build(tmp: Path, name=name, spec=spec):
            if spec.get("source", "embedded") != "embedded":
                parts = dom.shards(name, spec, tmp, d["heldout_fraction"], 1 << 62)
                return {"docs": "streamed from the domain's files", "swap": not dom.probe(name, parts)}
            train, held = dom.load_embedded(name, spec, seed, d["heldout_fraction"])
            (tmp / "train.json").write_text(json.dumps(train))
            (tmp / "heldout.json").write_text(json.dumps(held))
            return {"docs": {"train": len(train), "heldout": len(held)}}

        out[name] = store.get_or_build("corpus", inputs, build)
    if memo != before:
        artifacts.write_atomic(store.memo_path, json.dumps({**artifacts.load_memo(store.memo_path), **memo}))
    return out


def shards(cfg: dict, name: str, corpus_dir: Path) -> list[dom.Shard]:
    """The domain's units of tokenising work (about `data.shard_mb` each)."""
    swap = bool(read_manifest(corpus_dir).get("swap"))
    return dom.shards(
        name,
        cfg["domains"]["sources"][name] or {},
        corpus_dir,
        cfg["domains"]["heldout_fraction"],
        int(float((cfg.get("data") or {}).get("shard_mb", 64)) * 2**20),
        swap,
    )


def docs(cfg: dict, name: str, corpus_dir: Path, split: str) -> Iterator[str]:
    """The domain's documents of one split, streamed in order."""
    return dom.iter_docs(shards(cfg, name, corpus_dir), split)


def check_epochs(
    cfg: dict, token_counts: dict[str, int], ratios: dict[str, float], n_tokens: int, label: str
) -> None:
    """Refuse a run that would repeat a domain beyond its `max_epochs` (data.max_epochs by default)."""
    from mergemix.data.sampler import check_epochs as check

    default = (cfg.get("data") or {}).get("max_epochs")
    sources = cfg["domains"]["sources"]
    limits = {n: (sources[n] or {}).get("max_epochs", default) for n in sorted(sources)}
    m = cfg["model"]
    check(token_counts, ratios, int(n_tokens), m["seq_len"], m["batch_size"], limits, label)
