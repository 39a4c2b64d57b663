"""Streaming linear merge for checkpoints too large to hold K + 2 copies in memory.

Every tensor of the base and of the K experts is read from safetensors by memory map (`safetensors.safe_open`),
a block of rows at a time; theta = theta_base + sum_k alpha_k (theta_k - theta_base) is computed in fp32 and
written straight into the output safetensors file in the tensor's stored dtype. safe_open hands out zero-copy
views of the mapped file, and an open file keeps every page it has touched resident, so each reader drops its
mapping and reopens once it has handed out `map_budget` bytes: peak memory is a few blocks plus at most that much
mapped per input, not K + 2 models. Merging stored tensors is exact for any layout (fused or per-expert MoE
weights alike): the merge is element-wise."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from mergemix.errors import MergeMixError
from mergemix.models import check_same_config

WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
BLOCK_ELEMS = 1 << 22  # elements per merged block (16 MiB in fp32)
MAP_BUDGET = 256 << 20  # bytes a reader may map before it reopens its files
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def weight_files(path: str | Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of an HF checkpoint directory (single file or sharded with an index)."""
    path = Path(path)
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise MergeMixError(f"cannot load checkpoint {path}: bad {INDEX} ({exc})") from exc
        return {name: path / f for name, f in weight_map.items()}
    if (path / WEIGHTS).is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path / WEIGHTS), framework="pt") as f:
                return dict.fromkeys(f.keys(), path / WEIGHTS)
        except Exception as exc:
            raise MergeMixError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    raise MergeMixError(f"cannot load checkpoint {path}: no {WEIGHTS} or {INDEX}")


def checkpoint_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in set(weight_files(path).values()))


class Reader:
    """The tensors of one checkpoint by name, read through safe_open mappings that are dropped and reopened
    after `budget` bytes, so a pass over the checkpoint never keeps more than that resident."""

    def __init__(self, path: str | Path, budget: int = MAP_BUDGET):
        self.path, self.files, self.budget = Path(path), weight_files(path), budget
        self.handles: dict[Path, object] = {}
        self.mapped = 0

    def _open(self, name: str):
        from safetensors import safe_open

        file = self.files[name]
        if file not in self.handles:
            try:
                self.handles[file] = safe_open(str(file), framework="pt")
            except Exception as exc:
                raise MergeMixError(
                    f"cannot load checkpoint {self.path}: {str(exc).splitlines()[0]}"
                ) from exc
        return self.handles[file]

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        s = self._open(name).get_slice(name)
        return tuple(s.get_shape()), s.get_dtype()

    def rows(self, name: str, start: int | None, stop: int | None) -> torch.Tensor:
        """Rows start:stop along dim 0 (the whole tensor when start is None): a read-only view of the mapping."""
        f = self._open(name)
        t = f.get_tensor(name) if start is None else f.get_slice(name)[start:stop]
        self.mapped += t.numel() * t.element_size()
        if self.mapped >= self.budget:
            self.close()
        return t

    def close(self) -> None:
        for h in self.handles.values():
            h.__exit__(None, None, None)
        self.handles, self.mapped = {}, 0


def _recorded(path: Path, key: str):
    from mergemix.artifacts import read_json

    m = read_json(path / "manifest.json", {})  # none, or unreadable: no lineage to check
    if key == "self":
        return f"{m['stage']}/{m['key']}" if {"stage", "key"} <= set(m) else None
    return m["inputs"].get("init") if isinstance(m.get("inputs"), dict) else None


_DIGESTS: dict = {}  # file digests of users' checkpoints, memoised for this process


def _ref(path: Path) -> str:
    """The name a pipeline manifest records for a checkpoint (see ArtifactStore.ref)."""
    from mergemix.artifacts import user_ref

    return _recorded(path, "self") or user_ref(path, _DIGESTS)


def check_lineage(base: str | Path, expert: str | Path, name: str) -> None:
    """An expert whose manifest records another base than `base` (its `init`) was trained from another base."""
    recorded = _recorded(Path(expert), "init")
    if recorded and recorded != _ref(Path(base)):
        raise MergeMixError(
            f"expert '{name}' was trained from another base: its manifest records "
            f"'{recorded}', the base is '{_ref(Path(base))}'"
        )


def check_inputs(base: Reader, experts: dict[str, Reader]) -> None:
    """Same config, same tensor names, shapes and dtypes as the base, and the base as recorded parent."""
    from transformers import AutoConfig

    def config(path: Path) -> dict:
        try:
            return AutoConfig.from_pretrained(str(path), local_files_only=True).to_dict()
        except Exception as exc:
            raise MergeMixError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}") from exc

    base_cfg = config(base.path)
    for name, r in experts.items():
        check_lineage(base.path, r.path, name)
        check_same_config(base_cfg, config(r.path), name)
        missing, extra = sorted(set(base.files) - set(r.files)), sorted(set(r.files) - set(base.files))
        if missing or extra:
            raise MergeMixError(
                f"expert '{name}' does not have the base's tensors (missing {missing[:3]}, "
                f"extra {extra[:3]}): it was not trained from this base"
            )
        for t in base.files:
            if base.header(t) != r.header(t):
                raise MergeMixError(
                    f"expert '{name}' was not trained from this base: tensor {t} is "
                    f"{r.header(t)} vs the base's {base.header(t)} (shape, dtype)"
                )
        r.close()
    base.close()


def _write_header(fh, entries: list[tuple[str, tuple[int, ...], str]]) -> None:
    """The safetensors header: tensors laid out back to back in `entries` order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dtype in entries:
        size = DTYPES[dtype].itemsize * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    fh.write(struct.pack("<Q", len(raw)) + raw)


def _raise_non_finite(name: str, span, base: Reader, experts) -> None:
    for who, r in [("the base", base), *((f"expert '{n}'", r) for n, _, r in experts)]:
        if not torch.isfinite(r.rows(name, *span)).all():
            raise MergeMixError(f"{who} has NaN or Inf weights (first in {name}); refusing to merge it")


@torch.no_grad()
def _merge_tensor(name: str, shape, base: Reader, experts: list[tuple[str, float, Reader]], fh, block: int):
    rows = shape[0] if shape else 1
    per_block = max(1, block // max(1, math.prod(shape[1:])))
    for start in range(0, rows, per_block):
        span = (start, min(rows, start + per_block)) if shape else (None, None)
        b = base.rows(name, *span)
        if b.is_floating_point():  # copies: the views are read-only mappings
            acc, b32 = b.to(torch.float32, copy=True), b.float()
            for _, a, r in experts:
                acc.add_(r.rows(name, *span).to(torch.float32, copy=True).sub_(b32), alpha=a)
            if not math.isfinite(acc.sum().item()):  # NaN/Inf anywhere propagates into the sum (0 * NaN too)
                _raise_non_finite(name, span, base, experts)
            b = acc.to(b.dtype)
        fh.write(b.contiguous().reshape(-1).view(torch.uint8).numpy())


def stream_merge(
    base_path: str | Path,
    expert_paths: dict[str, str | Path],
    weights: dict[str, float],
    out_dir: str | Path,
    block: int = BLOCK_ELEMS,
    map_budget: int = MAP_BUDGET,
) -> Path:
    """Write theta(alpha)'s weights into `out_dir`, laid out like the base's (same shards and index).
    `weights` must already be checked (simplex, one per expert); every input is checked before anything is
    written. `out_dir` is written in place: `export_merge` builds into a temporary directory and renames it."""
    base = Reader(base_path, map_budget)
    readers = {n: Reader(p, map_budget) for n, p in expert_paths.items()}
    check_inputs(base, readers)
    experts = [(n, float(weights[n]), readers[n]) for n in sorted(readers)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: dict[Path, list[str]] = {}
    for t, f in base.files.items():
        shards.setdefault(f, []).append(t)
    try:
        for file, names in shards.items():
            entries = [(t, *base.header(t)) for t in sorted(names)]
            with open(out_dir / file.name, "wb") as fh:
                _write_header(fh, entries)
                for t, shape, _ in entries:
                    _merge_tensor(t, shape, base, experts, fh, block)
    finally:
        for r in (base, *readers.values()):
            r.close()
    if (Path(base_path) / INDEX).is_file():
        (out_dir / INDEX).write_bytes((Path(base_path) / INDEX).read_bytes())
    return out_dir
