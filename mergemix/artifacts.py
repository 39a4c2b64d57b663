"""Content-addressed stage cache: every artifact lives at cache/<stage>/<key>, where the key hashes the inputs
that determine it (config subset, upstream keys, the stage's code version). Artifacts are built in a temporary
directory and renamed into place, so a killed stage never leaves a half artifact; a file lock keeps two processes
from building the same artifact twice. A build may keep what lets a rerun continue (training checkpoints) in the
artifact's stable scratch directory `partial_dir`, removed once the artifact is complete."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergemix.log import log

# Bump a stage's version when its code changes what it produces.
CODE_VERSIONS = {
    "corpus": 1, "tokenizer": 1, "tokens": 1, "base": 1, "expert": 1, "benchmarks": 1,
    "search": 1, "mixture": 1, "eval": 2,  # eval 2: lm-eval's exact context truncation
}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_digest(path: Path) -> dict[str, str]:
    """sha256 of every file of an artifact directory but its manifest, by relative path."""
    return {str(f.relative_to(path)): file_digest(f) for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != "manifest.json"}


_VERIFIED: set[Path] = set()  # artifacts whose files this process has checked against their manifest


def stage_key(stage: str, inputs: dict) -> str:
    payload = canonical_json({"stage": stage, "version": CODE_VERSIONS[stage], "inputs": inputs})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@contextlib.contextmanager
def locked(lock_path: Path, wait: bool = True):
    """An exclusive lock (flock) held across processes while the block runs; yields whether it is held (with
    `wait=False` the block runs at once, without the lock when another process holds it)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ArtifactStore:
    """`store.get_or_build(stage, inputs, build)` returns the artifact directory, building it at most once."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def ref(self, path: str | Path) -> str:
        """A location-independent name for an input: `stage/key` inside the store; for a user's directory, its
        absolute path and the newest modification time of its files (so an edited checkpoint invalidates)."""
        path = Path(path).resolve()
        if path.parent.parent == self.root.resolve():
            return f"{path.parent.name}/{path.name}"
        mtimes = [f.stat().st_mtime_ns for f in path.iterdir()] if path.is_dir() else [path.stat().st_mtime_ns]
        return f"{path}@{max(mtimes, default=0)}"

    def partial_dir(self, stage: str, inputs: dict) -> Path:
        """Scratch space that survives a killed build of this artifact: keyed like it, so only a rerun with the same
        inputs finds it."""
        return self.root / stage / f".partial-{stage_key(stage, inputs)}"

    def is_complete(self, stage: str, key: str) -> bool:
        """The artifact is there with a readable manifest, and its files are as built (hashed once per process;
        manifests from before digests were recorded are taken as they are)."""
        path = self.path(stage, key)
        if path in _VERIFIED and (path / "manifest.json").is_file():
            return True
        try:
            digest = read_manifest(path).get("digest")
        except (OSError, ValueError, AttributeError):
            return False
        if digest is not None and content_digest(path) != digest:
            log.warning(f"{stage}/{key} in {self.root} was damaged after it was built: rebuilding it")
            return False
        _VERIFIED.add(path)
        return True

    def get_or_build(self, stage: str, inputs: dict, build: Callable[[Path], dict | None],
                     leader: str | None = None) -> Path:
        """`leader` (a distributed launch's id) is announced while building, so that the other ranks of the same
        launch join the build (`follow`) while those of another launch wait for the result."""
        key = stage_key(stage, inputs)
        final = self.path(stage, key)
        if self.is_complete(stage, key):
            return final
        with locked(self.root / ".locks" / f"{stage}-{key}.lock"):
            if self.is_complete(stage, key):  # built by another process while we waited
                return final
            for stale in final.parent.glob(f".tmp-{key}-*"):  # of killed builds: the lock is ours
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".tmp-{key}-{os.getpid()}"
            tmp.mkdir(parents=True)
            marker = self._leader_marker(stage, key)
            if leader:
                write_atomic(marker, leader)
            try:
                extra = build(tmp) or {}
                manifest = {"stage": stage, "key": key, "inputs": inputs, "created": time.time(), **extra,
                            "digest": content_digest(tmp)}
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
                shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover without manifest
                os.rename(tmp, final)
                shutil.rmtree(self.partial_dir(stage, inputs), ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            finally:
                if leader:
                    marker.unlink(missing_ok=True)
        return final

    def _leader_marker(self, stage: str, key: str) -> Path:
        return self.root / ".locks" / f"{stage}-{key}.leader"

    def follow(self, stage: str, inputs: dict, build: Callable[[Path], dict | None], leader: str,
               timeout_s: float = 3600) -> Path:
        """For a secondary rank of a distributed build: once rank 0 of the same launch (`leader`) announces that it
        builds this artifact, run `build` into a scratch directory (it takes part in the collectives, writes nothing
        that is kept); return when the artifact is complete, also when another launch built it."""
        import tempfile

        key = stage_key(stage, inputs)
        marker, deadline = self._leader_marker(stage, key), None
        while not self.is_complete(stage, key):
            if deadline is None and marker.is_file() and marker.read_text() == leader:
                with tempfile.TemporaryDirectory(prefix=f"mergemix-{stage}-") as scratch:
                    build(Path(scratch))
                deadline = time.time() + timeout_s  # rank 0 writes the manifest right after the last collective
            elif deadline is not None and time.time() > deadline:
                from mergemix.errors import MergeMixError
                raise MergeMixError(f"rank 0 did not complete {stage}/{key} within {timeout_s:.0f} s")
            time.sleep(0.2)
        return self.path(stage, key)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file via a temporary sibling + rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    os.replace(tmp, path)


def read_json(path: Path, default: dict) -> dict:
    """A JSON object kept by the cache (not an artifact), or `default` when it is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default
    return value if isinstance(value, dict) else default


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())
