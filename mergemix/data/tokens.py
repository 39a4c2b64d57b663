"""Packed token store: a domain's documents tokenised once, joined with EOS, in one flat memory-mapped file per
split (`train.bin`, `heldout.bin`) described by `index.json` (dtype, token counts, each shard's offsets).

Shards are tokenised in parallel (`num_workers` processes) into part files that are appended in shard order, so
the result does not depend on the number of workers; `max_tokens` cuts the training stream at exactly that many
tokens and stops reading further shards. Readers get `np.memmap`s: nothing is loaded into memory.

A long document is tokenised in pieces of about CHUNK_CHARS characters, cut only before a space or newline between
two non-space characters: a byte-level BPE never merges across such a cut, so the ids are those of the whole
document (`splits_at_spaces` checks a tokenizer; one that differs is warned about, and still cut) and memory stays
bounded whatever the document's length."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mergemix.data.domains import SPLITS, Shard
from mergemix.log import log

_TOKENIZERS: dict[str, object] = {}  # one loaded tokenizer per worker process
CHUNK_CHARS = 1 << 19  # a longer document is tokenised in pieces of about this many characters
BATCH_CHARS = 1 << 19  # characters tokenised in one call (the fast tokenizer holds ~300 bytes per character)
PROGRESS_S = 30.0  # seconds between progress lines of a long tokenisation
_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")  # before a lone space or newline: no pre-token spans it
_SAFE: dict[int, bool] = {}  # id(tokenizer) -> ids of pieces == ids of the whole
_progress = {"chars": 0, "t0": 0.0, "last": 0.0}


def dtype_for(tokenizer) -> np.dtype:
    return np.dtype(np.uint16 if len(tokenizer) < 2**16 else np.uint32)


def pieces(doc: str, size: int | None = None) -> Iterator[str]:
    """`doc` cut into pieces of about `size` characters (CHUNK_CHARS; the whole when shorter), each cut before the
    first lone space or newline from `size` on; a stretch of 2 x `size` without one is cut there."""
    size, start = size or CHUNK_CHARS, 0
    while len(doc) - start > size:
        m = _CUT.search(doc, start + size, start + 2 * size + 1)  # +1: the look-ahead
        end = m.start() if m else start + 2 * size
        yield doc[start:end]
        start = end
    yield doc[start:]


def splits_at_spaces(tokenizer) -> bool:
    """Whether the tokenizer gives the same ids for text cut into `pieces` as for the whole (checked once)."""
    if id(tokenizer) not in _SAFE:
        text = "x = f(a, b)\n  for i in range(10):\n\tprint('it''s 42.5%') ; don't  stop\n\n" * 40
        cut = list(pieces(text, 60))
        ids = [i for p in cut for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
        _SAFE[id(tokenizer)] = ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        if not _SAFE[id(tokenizer)]:
            log.warning(
                "this tokenizer merges across spaces: long documents are tokenised in pieces of "
                f"{CHUNK_CHARS} characters, each cut may change a token"
            )
    return _SAFE[id(tokenizer)]


def _report(chars: int) -> None:
    """A progress line every PROGRESS_S seconds of one long tokenisation."""
    now = time.monotonic()
    if now - _progress["last"] > 10 * PROGRESS_S:  # a new run of work
        _progress.update(chars=0, t0=now, last=now)
    _progress["chars"] += chars
    if now - _progress["last"] >= PROGRESS_S:
        _progress["last"] = now
        mib = _progress["chars"] / 2**20
        log.info(
            f"tokens: {mib:.0f} MiB of text tokenised ({mib / max(now - _progress['t0'], 1e-9):.1f} MiB/s)"
        )


def pack(tokenizer, docs, batch: int = 256) -> np.ndarray:
    """Token ids of `docs`, each followed by EOS, as one array (at most `batch` pieces, about BATCH_CHARS
    characters, in one tokenizer call)."""
    eos, dtype = tokenizer.eos_token_id, dtype_for(tokenizer)
    parts, texts, ends, chars = [], [], [], 0

    def flush() -> None:
        for ids, end in zip(tokenizer(texts, add_special_tokens=False)["input_ids"], ends):
            parts.append(np.asarray(ids + [eos] if end else ids, dtype=dtype))
        _report(sum(map(len, texts)))
        texts.clear()
        ends.clear()

    for doc in docs:
        if len(doc) > CHUNK_CHARS:
            splits_at_spaces(tokenizer)
        cut = list(pieces(doc))
        for j, piece in enumerate(cut):
            texts.append(piece)
            ends.append(j == len(cut) - 1)
            chars += len(piece)
            if len(texts) >= batch or chars >= BATCH_CHARS:
                flush()
                chars = 0
    if texts:
        flush()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _tokenizer(path: str):
    if path not in _TOKENIZERS:
        from mergemix.data.tokenizer import load_tokenizer

        _TOKENIZERS[path] = load_tokenizer(path)
    return _TOKENIZERS[path]


def _pack_shard(job: tuple[Shard, str, str, int]) -> dict[str, int]:
    """Tokenise one shard into `<prefix>.<split>.bin` part files, a batch of documents at a time."""
    shard, tokenizer_dir, prefix, batch = job
    tok = _tokenizer(tokenizer_dir)
    pending: dict[str, list[str]] = {s: [] for s in SPLITS}
    counts, chars = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    with contextlib.ExitStack() as stack:
        files = {s: stack.enter_context(open(f"{prefix}.{s}.bin", "wb")) for s in SPLITS}

        def flush(split: str) -> None:
            arr = pack(tok, pending[split], batch)
            arr.tofile(files[split])
            counts[split] += len(arr)
            pending[split], chars[split] = [], 0

        for split, doc in shard.documents():
            pending[split].append(doc)
            chars[split] += len(doc)
            if len(pending[split]) >= batch or chars[split] >= BATCH_CHARS:
                flush(split)
        for split in SPLITS:
            flush(split)
    return counts


def _workers(num_workers: int, n_shards: int) -> int:
    n = num_workers if num_workers > 0 else len(os.sched_getaffinity(0))
    return max(1, min(n, n_shards))


def pack_shards(
    shards: list[Shard],
    tokenizer_dir: str | Path,
    out_dir: Path,
    num_workers: int = 0,
    max_tokens: int | None = None,
    batch: int = 256,
) -> dict:
    """Tokenise `shards` into `out_dir` (train.bin, heldout.bin, index.json); returns the token counts."""
    tokenizer_dir = str(tokenizer_dir)
    dtype = dtype_for(_tokenizer(tokenizer_dir))
    parts = out_dir / "parts"
    parts.mkdir()
    jobs = [(s, tokenizer_dir, str(parts / f"{i:06d}"), batch) for i, s in enumerate(shards)]
    n_workers = _workers(num_workers, len(jobs))
    sizes, index = dict.fromkeys(SPLITS, 0), []
    with contextlib.ExitStack() as stack:
        outs = {s: stack.enter_context(open(out_dir / f"{s}.bin", "wb")) for s in SPLITS}
        if n_workers > 1:
            import multiprocessing as mp

            pool = stack.enter_context(mp.get_context("spawn").Pool(n_workers))  # terminated on exit
            results = pool.imap(_pack_shard, jobs)  # in shard order
        else:
            results = map(_pack_shard, jobs)
        for (shard, _, prefix, _), counts in zip(jobs, results):
            entry = {"shard": _describe(shard)}
            for split in SPLITS:
                n = counts[split]
                if split == "train" and max_tokens is not None:
                    n = min(n, max_tokens - sizes["train"])
                with open(f"{prefix}.{split}.bin", "rb") as part:
                    _copy(part, outs[split], n * dtype.itemsize)
                os.remove(f"{prefix}.{split}.bin")
                entry[split] = [sizes[split], n]
                sizes[split] += n
            index.append(entry)
            if max_tokens is not None and sizes["train"] >= max_tokens:
                break  # the remaining shards are not tokenised (beyond those already in flight)
    shutil.rmtree(parts)
    meta = {
        "dtype": dtype.name,
        "splits": {s: {"file": f"{s}.bin", "tokens": sizes[s]} for s in SPLITS},
        "max_tokens": max_tokens,
        "shards_read": len(index),
        "shards": len(shards),
        "index": index,
    }
    (out_dir / "index.json").write_text(json.dumps(meta, indent=1))
    return {"tokens": sizes, "shards": len(shards), "shards_read": len(index), "workers": n_workers}


def _copy(src, dst, n_bytes: int, chunk: int = 1 << 24) -> None:
    while n_bytes > 0:
        block = src.read(min(chunk, n_bytes))
        if not block:
            break
        dst.write(block)
        n_bytes -= len(block)


def _describe(shard: Shard) -> dict:
    if shard.dataset:
        return {"dataset": shard.dataset, "rows": list(shard.rows)}
    return {"files": list(shard.files)}


def load_split(token_dir: str | Path, split: str = "train") -> np.ndarray:
    """The split's tokens as a read-only memory map (a stored `.npy` from before the sharded store works too)."""
    token_dir = Path(token_dir)
    if not (token_dir / "index.json").is_file():
        return np.load(token_dir / f"{split}.npy", mmap_mode="r")
    meta = json.loads((token_dir / "index.json").read_text())
    n, dtype = meta["splits"][split]["tokens"], np.dtype(meta["dtype"])
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(token_dir / meta["splits"][split]["file"], dtype=dtype, mode="r", shape=(n,))
