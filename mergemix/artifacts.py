"""Content-addressed stage cache: every artifact lives at cache/<stage>/<key>, where the key hashes the inputs
that determine it (config subset, upstream keys, the stage's code version). Artifacts are built in a temporary
directory and renamed into place, so a killed stage never leaves a half artifact; a file lock keeps two processes
from building the same artifact twice. A build may keep what lets a rerun continue (training checkpoints) in the
artifact's stable scratch directory `partial_dir`, removed once the artifact is complete."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergemix.log import log

# Bump a stage's version when its code changes what it produces.
CODE_VERSIONS = {
    "corpus": 1,
    "tokenizer": 1,
    "tokens": 1,
    "base": 1,
    "expert": 1,
    "benchmarks": 1,
    "search": 1,
    "mixture": 1,
    "eval": 2,  # eval 2: lm-eval's exact context truncation
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
    return {
        str(f.relative_to(path)): file_digest(f)
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != "manifest.json"
    }


SMALL_FILE = 1 << 20  # files up to this size are hashed on every read: no timestamp is trusted for them


def cached_digest(path: Path, memo: dict) -> str:
    """sha256 of a file, memoised in `memo` (a JSON object) by its resolved path and its inode, size, mtime and
    ctime: a same-size edit with the mtime put back (`cp -p`, `rsync -t`, `touch -r`) still moves the ctime, which
    no user call sets. Small files are hashed every time."""
    st, name = path.stat(), str(path.resolve())
    if st.st_size <= SMALL_FILE:
        return file_digest(path)
    stamp = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    hit = memo.get(name)
    if not (isinstance(hit, list) and len(hit) == 5 and hit[:4] == stamp and isinstance(hit[4], str)):
        memo[name] = [*stamp, file_digest(path)]
    return memo[name][4]


def tree_digest(path: Path, memo: dict) -> str:
    """One sha256 over the contents of a file or of every file under a directory (by relative path)."""
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    listing = {
        str(f.relative_to(path)) if path.is_dir() else path.name: cached_digest(f, memo) for f in files
    }
    return hashlib.sha256(canonical_json(listing).encode()).hexdigest()


def load_memo(path: Path) -> dict:
    """A digest memo kept by the cache (`cached_digest`); entries of other formats are dropped."""
    return {k: v for k, v in read_json(path, {}).items() if isinstance(v, list) and len(v) == 5}


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (os.umask sets it to read it)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path) -> None:
    """Give a built artifact the modes its files would have had if created plainly (0644/0755 under umask 022):
    some writers (safetensors, mkstemp, mkdtemp) create them private, which other users of a shared cache cannot
    read. Links are left alone."""
    mask = current_umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        st = p.lstat()
        if stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IXUSR):
            os.chmod(p, 0o777 & ~mask)
        elif stat.S_ISREG(st.st_mode):
            os.chmod(p, 0o666 & ~mask)


def open_nofollow(path: Path, flags: int) -> int:
    """os.open of a file in the shared cache that never follows a link planted at its name (nor blocks on a FIFO);
    a link or a non-regular file there is one error line."""
    from mergemix.errors import MergeMixError

    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise MergeMixError(
                f"{path} is a symbolic link or a special file: mergemix only uses regular files in "
                f"its cache; remove it"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MergeMixError(
            f"{path} is a symbolic link or a special file: mergemix only uses regular files in its "
            f"cache; remove it"
        )
    return fd


_VERIFIED: set[Path] = set()  # artifacts whose files this process has checked against their manifest


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def no_space(exc: BaseException, path: Path, written: int | None = None):
    """A full disk (ENOSPC, a quota; also as the text torch and safetensors wrap it in) as one MergeMixError line
    naming the path, else None."""
    from mergemix.errors import MergeMixError

    text = str(exc)
    if not (
        (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
        or "No space left on device" in text
        or "os error 28" in text
    ):
        return None
    where = Path(getattr(exc, "filename", None) or path)
    existing = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    wrote = f"{written} bytes written, " if written is not None else ""
    return MergeMixError(
        f"no space left on the device to write {where} ({wrote}{shutil.disk_usage(existing).free} "
        "bytes free); nothing half-written is kept: free space or point paths.root elsewhere"
    )


def stage_key(stage: str, inputs: dict) -> str:
    payload = canonical_json({"stage": stage, "version": CODE_VERSIONS[stage], "inputs": inputs})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@contextlib.contextmanager
def locked(lock_path: Path, wait: bool = True):
    """An exclusive lock (flock) held across processes while the block runs; yields whether it is held (with
    `wait=False` the block runs at once, without the lock when another process holds it)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(open_nofollow(lock_path, os.O_CREAT | os.O_WRONLY), "w") as fh:  # never truncated
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
        self._memo: dict | None = None  # file digests of users' directories (`ref`), kept in digests.json

    @property
    def memo_path(self) -> Path:
        return self.root / "digests.json"

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def ref(self, path: str | Path) -> str:
        """A location-independent name for an input: `stage/key` inside the store; for a user's directory, the
        digest of its files' contents (`user_ref`: an edited or replaced checkpoint invalidates, whatever its
        timestamps say)."""
        path = Path(path).resolve()
        if path.parent.parent == self.root.resolve():
            return f"{path.parent.name}/{path.name}"
        if self._memo is None:
            self._memo = load_memo(self.memo_path)
        before = dict(self._memo)
        ref = user_ref(path, self._memo)
        if self._memo != before:
            with contextlib.suppress(OSError):  # a read-only cache hashes again next time
                write_atomic(self.memo_path, json.dumps({**load_memo(self.memo_path), **self._memo}))
        return ref

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

    def get_or_build(
        self, stage: str, inputs: dict, build: Callable[[Path], dict | None], leader: str | None = None
    ) -> Path:
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
                manifest = {
                    "stage": stage,
                    "key": key,
                    "inputs": inputs,
                    "created": time.time(),
                    **extra,
                    "digest": content_digest(tmp),
                }
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
                honour_umask(tmp)
                shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover without manifest
                os.rename(tmp, final)
                shutil.rmtree(self.partial_dir(stage, inputs), ignore_errors=True)
            except BaseException as exc:
                full = no_space(exc, tmp, _tree_bytes(tmp))
                shutil.rmtree(tmp, ignore_errors=True)
                if full:
                    raise full from exc
                raise
            finally:
                if leader:
                    marker.unlink(missing_ok=True)
        return final

    def _leader_marker(self, stage: str, key: str) -> Path:
        return self.root / ".locks" / f"{stage}-{key}.leader"

    def follow(
        self,
        stage: str,
        inputs: dict,
        build: Callable[[Path], dict | None],
        leader: str,
        timeout_s: float = 3600,
    ) -> Path:
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
                deadline = (
                    time.time() + timeout_s
                )  # rank 0 writes the manifest right after the last collective
            elif deadline is not None and time.time() > deadline:
                from mergemix.errors import MergeMixError

                raise MergeMixError(f"rank 0 did not complete {stage}/{key} within {timeout_s:.0f} s")
            time.sleep(0.2)
        return self.path(stage, key)


def user_ref(path: Path, memo: dict | None = None) -> str:
    """The name of a user's checkpoint or tokenizer directory in cache keys and manifests: its files' contents."""
    return f"sha256:{tree_digest(Path(path), {} if memo is None else memo)[:32]}"


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file via a temporary sibling + rename, so readers never see a partial file (the sibling is created
    afresh: a link planted at its name is replaced, never written through)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        with os.fdopen(open_nofollow(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY), "wb") as fh:
            fh.write(data if isinstance(data, bytes) else data.encode())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        full = no_space(exc, path)
        if full:
            raise full from exc
        raise
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
