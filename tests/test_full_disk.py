"""A full disk (ENOSPC) while an artifact or a cache file is written: one error line naming the path, and nothing
half-written left where a later run could trust it."""

from __future__ import annotations

import errno
import os

import pytest

from mergemix.artifacts import ArtifactStore, write_atomic
from mergemix.errors import MergeMixError


def _full(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_build_that_fills_the_disk_is_one_line_and_leaves_no_artifact(tmp_path):
    store = ArtifactStore(tmp_path / "cache")

    def build(tmp):
        (tmp / "part.bin").write_bytes(b"x" * 1000)
        _full(tmp / "model.safetensors")

    with pytest.raises(
        MergeMixError,
        match=r"no space left on the device to write .*model\.safetensors \(1000 "
        r"bytes written, \d+ bytes free\); nothing half-written is kept",
    ):
        store.get_or_build("base", {"a": 1}, build)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and ".locks" not in p.parts]


def test_torch_wrapped_enospc_is_recognised(tmp_path):
    store = ArtifactStore(tmp_path / "cache")

    def build(tmp):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:603] . unexpected pos ... No space left on device"
        )

    with pytest.raises(MergeMixError, match="no space left on the device"):
        store.get_or_build("base", {"a": 2}, build)


def test_write_atomic_on_a_full_disk_keeps_neither_file(tmp_path, monkeypatch):
    target = tmp_path / "evals.jsonl"
    real = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.fh = real(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, data):
            _full(target.with_name(".tmp"))

    monkeypatch.setattr(os, "fdopen", Full)
    with pytest.raises(MergeMixError, match="no space left on the device to write"):
        write_atomic(target, "{}")
    assert list(tmp_path.iterdir()) == []
