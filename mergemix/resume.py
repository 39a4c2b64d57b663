"""Resumable training: full Lightning checkpoints (weights, optimizer, LR schedule, loop counters, RNG) written
every few steps into an artifact's stable scratch directory (`ArtifactStore.partial_dir`), and the newest
complete one to continue from. The data order continues through `PlanSampler`'s start (training.py)."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch

from mergemix.errors import MergeMixError
from mergemix.log import log


def checkpoint_interval(setting, steps: int) -> int:
    """`trainer.checkpoint_every_n_steps`: null -> about every 10% of the steps, 0 -> never, N -> every N."""
    if setting is None:
        return max(1, steps // 10)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise MergeMixError(
            f"trainer.checkpoint_every_n_steps must be null (every ~10% of the steps), 0 (never) or "
            f"a positive number of steps, got {setting!r}"
        )
    return setting


def latest_checkpoint(directory: Path | None) -> tuple[Path, int] | None:
    """(path, step) of the newest complete checkpoint: incomplete ones still carry their `.tmp` suffix. A checkpoint
    is data only: one that cannot be read as weights and plain values (damaged on disk, or holding objects whose
    loading could run code, as one planted in a shared cache would) is removed, with a warning, and training starts
    over. `trainer.fit(..., weights_only=True)` then loads what was checked here."""
    found = sorted(directory.glob("step-*.ckpt")) if directory is not None and directory.is_dir() else []
    if not found:
        return None
    try:
        check_data_only(found[-1])
    except Exception:  # noqa: BLE001 - any failure to read means the checkpoint cannot be resumed from
        log.warning(
            f"checkpoint {found[-1]} cannot be read as weights and plain values (damaged, or holding code): "
            f"it is ignored and training starts over"
        )
        _remove(found[-1])
        return None
    return found[-1], int(found[-1].stem.split("-")[1])


def check_data_only(path: Path) -> None:
    """Raise unless every pickle in the checkpoint loads without running code: a Lightning file through
    `torch.load(weights_only=True)`; an FSDP sharded directory's DCP metadata (which torch.distributed.checkpoint
    reads with plain pickle) and non-tensor items through an unpickler that knows only DCP's metadata classes, its
    `meta.pt` through `torch.load(weights_only=True)`."""
    if path.is_symlink() or not (path.is_file() or path.is_dir()):
        raise ValueError(f"{path} is not a regular file or directory")
    if path.is_file():
        torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    with open(path / ".metadata", "rb") as fh:
        meta = _DataOnly(fh).load()
    for index, info in meta.storage_data.items():
        if isinstance(meta.state_dict_metadata[index.fqn], BytesStorageMetadata):
            if info.transform_descriptors or Path(info.relative_path).name != info.relative_path:
                raise ValueError(f"{path}: item {index.fqn} is stored in a way mergemix does not check")
            with open(path / info.relative_path, "rb") as fh:
                fh.seek(info.offset)
                torch.load(io.BytesIO(fh.read(info.length)), map_location="cpu", weights_only=True)
    for other in path.iterdir():
        if other.name != ".metadata" and other.suffix != ".distcp":
            torch.load(other, map_location="cpu", weights_only=True)


_DCP = "torch.distributed.checkpoint"
_DATA_CLASSES = {
    *(
        (f"{_DCP}.metadata", n)
        for n in (
            "Metadata",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "TensorProperties",
            "MetadataIndex",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        )
    ),
    (f"{_DCP}.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
    ("torch.serialization", "_get_layout"),
}  # a name -> torch.layout table


class _DataOnly(pickle.Unpickler):
    """An unpickler that builds DCP's metadata records and torch's dtypes, layouts and sizes, and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) in _DATA_CLASSES:
            return super().find_class(module, name)
        value = getattr(torch, name, None) if module == "torch" else None
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            return value
        raise pickle.UnpicklingError(f"{module}.{name} is not data")


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # another user's scratch directory: leave it, train without it
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def _rng_states() -> dict:
    """Torch (CPU, CUDA) and Python RNG states, as types `torch.load(weights_only=True)` accepts."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate()}


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


class PeriodicCheckpoint(pl.Callback):
    """Every `checkpoint_interval(every)` optimizer steps (not at the last: the artifact follows), right after the
    step, a checkpoint `step-<n>.ckpt` in `directory`. It is written under a `.tmp` name and renamed (FSDP's sharded
    directories too, after Trainer.save_checkpoint's barrier), so a kill leaves the previous one intact; that one is
    then removed."""

    def __init__(self, directory: Path, every: int | None):
        checkpoint_interval(every, 1)  # a bad setting fails before training
        self.directory, self.setting, self.every, self.last_saved, self.rng = (
            Path(directory),
            every,
            0,
            -1,
            None,
        )

    def on_train_start(self, trainer, pl_module) -> None:
        self.every = checkpoint_interval(self.setting, trainer.max_steps)
        self.last_saved = trainer.global_step  # never mid-accumulation: only once a step has been taken
        if (
            self.rng is not None
        ):  # here, not at load time: the dataloader's iterator has drawn its seed by now
            _set_rng_states(self.rng)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["mergemix_rng"] = _rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.rng = checkpoint.get("mergemix_rng")

    def on_train_batch_end(self, trainer, *_) -> None:
        step = trainer.global_step
        if not self.every or step == self.last_saved or step % self.every or step >= trainer.max_steps:
            return
        self.last_saved = step
        final = self.directory / f"step-{step:08d}.ckpt"
        tmp = final.with_name(final.name + ".tmp")
        if trainer.is_global_zero:
            self.directory.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a killed run
                _remove(tmp)
        trainer.strategy.barrier("mergemix-checkpoint-dir")
        trainer.save_checkpoint(tmp, weights_only=False)  # the full training state
        if trainer.is_global_zero:
            os.replace(tmp, final)
            for old in self.directory.glob("step-*.ckpt"):
                if old != final:
                    _remove(old)
