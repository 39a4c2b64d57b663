"""Domains: the embedded corpora, or a user's local data, split train/held-out by document hash.

A user domain (`source: files`) lists paths or globs of `.txt` (one document per file), `.jsonl` (one document per
line, field `text_field`) and `.parquet` (column `text_field`) files, directories of such shards, and Hugging Face
datasets saved with `save_to_disk` (read with `datasets.load_from_disk`, an optional dependency). Documents are
streamed shard by shard, never held in memory all at once."""

from __future__ import annotations

import glob
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mergemix.artifacts import cached_digest
from mergemix.data import embedded
from mergemix.errors import MergeMixError

FORMATS = (".txt", ".jsonl", ".parquet")
HF_MARKERS = ("dataset_info.json", "dataset_dict.json")  # written by datasets' save_to_disk
NOT_CONTENT = ("max_tokens", "max_epochs")  # spec keys applied downstream: they change no document
SPLITS = ("train", "heldout")


# ------------------------------------------------------------------------------------------ resolving ---
def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in HF_MARKERS)


def _shard_files(name: str, directory: Path) -> list[Path]:
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and p.suffix in FORMATS
        and not any(part.startswith((".", "_")) for part in p.relative_to(directory).parts)
    )
    if not files:
        raise MergeMixError(
            f"domain '{name}': directory {directory} holds no readable shards "
            f"({', '.join(FORMATS)} files, or a dataset saved by datasets' save_to_disk)"
        )
    return files


def resolve_files(name: str, spec: Mapping) -> list[Path]:
    """The domain's files and saved-dataset directories, in order (a shard directory expands to its files)."""
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
            if is_hf_dataset(m):
                _require_datasets(name, m)
                files.append(m)
            elif m.is_dir():
                files.extend(_shard_files(name, m))
            elif not m.is_file():
                raise MergeMixError(f"domain '{name}': file not found: {m}")
            elif m.suffix not in FORMATS:
                raise MergeMixError(
                    f"domain '{name}': unsupported file type {m.suffix} ({', '.join(FORMATS)})"
                )
            else:
                files.append(m)
    return files


def _require_datasets(name: str, path: Path):
    try:
        import datasets
    except ImportError as exc:
        raise MergeMixError(
            f"domain '{name}': {path} is a saved Hugging Face dataset; reading it needs the "
            f"`datasets` package (pip install datasets)"
        ) from exc
    return datasets


def _load_hf(path: str, hf_split: str | None, text_field: str):
    datasets = _require_datasets("?", Path(path))
    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:
        raise MergeMixError(f"{path}: cannot load the saved dataset ({str(exc).splitlines()[0]})") from exc
    if isinstance(ds, datasets.DatasetDict):
        split = hf_split or "train"
        if split not in ds:
            raise MergeMixError(
                f"{path}: no split '{split}' (splits: {sorted(ds)}); set the domain's `split`"
            )
        ds = ds[split]
    if text_field not in ds.column_names:
        raise MergeMixError(f"{path}: no column '{text_field}' (columns: {ds.column_names})")
    return ds.select_columns([text_field])


def validate_spec(name: str, spec: Mapping) -> None:
    check_source(name, spec)
    for key, kind in (
        ("max_tokens", int),
        ("max_epochs", (int, float)),
        ("max_chars", int),
        ("n_items", int),
        ("per_doc", int),
    ):
        v = spec.get(key)
        if v is not None and (not isinstance(v, kind) or isinstance(v, bool) or v <= 0):
            raise MergeMixError(f"domain '{name}': {key} must be a positive number, got {v!r}")
    if spec.get("source") == "files":
        resolve_files(name, spec)


# ---------------------------------------------------------------------------------------- fingerprint ---
def source_fingerprint(name: str, spec: Mapping, memo: dict | None = None) -> dict:
    """What determines a domain's documents: its spec and, for files, their contents' hashes (`memo` caches
    hashes by path, inode, size, mtime and ctime, so large data is not re-read on every run)."""
    memo = {} if memo is None else memo
    fp = {"name": name, "spec": {k: v for k, v in spec.items() if k not in NOT_CONTENT}}
    if spec.get("source") == "files":
        files = {}
        for p in resolve_files(name, spec):
            members = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            files.update({str(f): cached_digest(f, memo) for f in members})
        fp["files"] = files
    return fp


# --------------------------------------------------------------------------------------------- shards ---
@dataclass(frozen=True)
class Shard:
    """One unit of tokenising work: files read in order, or a row range of a saved dataset. Each document goes to
    `split` when it is fixed, otherwise to the held-out split with probability `fraction` by its hash. The
    corpus stage's own `train.json`/`heldout.json` (embedded domains) carry their split in their name."""

    files: tuple[str, ...] = ()
    dataset: str | None = None
    hf_split: str | None = None
    rows: tuple[int, int] = (0, 0)
    text_field: str = "text"
    fraction: float = 0.0
    split: str | None = None

    def documents(self) -> Iterator[tuple[str, str]]:
        """(split, document) pairs, in order."""
        if self.dataset:
            yield from self._splits(_hf_rows(self.dataset, self.hf_split, self.text_field, *self.rows))
            return
        for f in map(Path, self.files):
            if f.suffix == ".json":
                yield from ((f.stem, d) for d in json.loads(f.read_text()))
            else:
                yield from self._splits(_read(f, self.text_field))

    def _splits(self, docs) -> Iterator[tuple[str, str]]:
        for d in docs:
            if d.strip():
                yield self.split or ("heldout" if embedded._doc_heldout(d, self.fraction) else "train"), d


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 (a binary or wrongly encoded file) are an error naming the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text's newlines
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MergeMixError(
            f"{path}:{line}: not UTF-8 text (byte {exc.start}); convert the file to UTF-8"
        ) from exc


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, streamed; a line that is not UTF-8 is an error naming it."""
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, 1):
            try:
                yield i, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MergeMixError(f"{path}:{i}: not UTF-8 text; convert the file to UTF-8") from exc


def _read(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".txt":
        yield read_utf8(path)
        return
    if path.suffix == ".jsonl":
        for i, line in utf8_lines(path):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)[text_field]
            except (json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
                raise MergeMixError(
                    f"{path}:{i}: expected a JSON object with a '{text_field}' string"
                ) from exc
            if not isinstance(doc, str):
                raise MergeMixError(f"{path}:{i}: '{text_field}' is not a string")
            yield doc
        return
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise MergeMixError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from exc
    if text_field not in pf.schema_arrow.names:
        raise MergeMixError(f"{path}: no column '{text_field}' (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
        yield from (str(x) for x in batch.column(0).to_pylist() if x)


def _hf_rows(
    path: str, hf_split: str | None, text_field: str, start: int, stop: int, chunk: int = 1024
) -> Iterator[str]:
    ds = _load_hf(path, hf_split, text_field)
    for i in range(start, stop, chunk):
        yield from (str(x) for x in ds[i : min(stop, i + chunk)][text_field] if x)


def shards(
    name: str, spec: Mapping, corpus_dir: Path, fraction: float, shard_bytes: int, swap: bool = False
) -> list[Shard]:
    """The domain as units of work of about `shard_bytes` each: consecutive small files are grouped, a saved
    dataset is cut into row ranges. `swap` (no document fell in the training split) sends every document to
    training, so that a tiny domain still trains."""
    if spec.get("source", "embedded") == "embedded":
        return [Shard(files=tuple(str(corpus_dir / f"{s}.json") for s in SPLITS))]
    field, fixed = spec.get("text_field", "text"), "train" if swap else None
    out, group, size = [], [], 0
    for p in resolve_files(name, spec):
        if p.is_dir():
            ds = _load_hf(str(p), spec.get("split"), field)
            n_bytes = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            k = max(1, min(len(ds), math.ceil(n_bytes / shard_bytes)))
            bounds = [len(ds) * i // k for i in range(k + 1)]
            out += [
                Shard(
                    dataset=str(p),
                    hf_split=spec.get("split"),
                    rows=(a, b),
                    text_field=field,
                    fraction=fraction,
                    split=fixed,
                )
                for a, b in itertools.pairwise(bounds)
                if b > a
            ]
            continue
        group.append(str(p))
        size += p.stat().st_size
        if size >= shard_bytes:
            out.append(Shard(files=tuple(group), text_field=field, fraction=fraction, split=fixed))
            group, size = [], 0
    if group:
        out.append(Shard(files=tuple(group), text_field=field, fraction=fraction, split=fixed))
    return out


def iter_docs(shard_list: list[Shard], split: str) -> Iterator[str]:
    for shard in shard_list:
        yield from (d for s, d in shard.documents() if s == split)


# ----------------------------------------------------------------------------------------- embedded ---
def load_embedded(
    name: str, spec: Mapping, seed: int, heldout_fraction: float
) -> tuple[list[str], list[str]]:
    if name not in embedded.NAMES:
        raise MergeMixError(f"domain '{name}': no embedded corpus of that name ({', '.join(embedded.NAMES)})")
    kwargs = {k: v for k, v in spec.items() if k in ("max_chars", "n_items", "per_doc")}
    train, held = embedded.build(name, seed, heldout_fraction, **kwargs)
    if not train:
        raise MergeMixError(f"domain '{name}' is empty")
    return train, held


def probe(name: str, shard_list: list[Shard]) -> bool:
    """Whether any document falls in the training split (stops at the first one); no text at all is an error."""
    seen = False
    for shard in shard_list:
        for split, _ in shard.documents():
            if split == "train":
                return True
            seen = True
    if not seen:
        raise MergeMixError(f"domain '{name}': its files hold no text")
    return False


def check_source(name: str, spec: Mapping) -> None:
    if spec.get("source", "embedded") not in ("embedded", "files"):
        raise MergeMixError(f"domain '{name}': unknown source '{spec.get('source')}' (embedded, files)")
