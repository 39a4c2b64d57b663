"""Persistent evaluation cache keyed by the merge weights: no candidate is merged and evaluated twice, and a
killed search resumes from what it already evaluated (one JSON line per evaluation, appended and flushed). Search
workers in other processes share the file: a miss first reads what they appended since, then evaluates under a
lock on that merge, so two processes never evaluate the same merge. Only finite scores are stored; a line that
cannot be read (cut by a kill, damaged, non-finite) is skipped, so its merge is evaluated again. Each line carries
a digest of its record and of the merges it scores (the cache file's name keys base, experts, suite and scale):
an edited line, or one copied from another cache, fails it and is evaluated again, with a warning."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

from mergemix.artifacts import canonical_json, locked, open_nofollow
from mergemix.benchmarks.suite import check_finite, is_finite
from mergemix.log import log


def alpha_key(alpha: Sequence[float]) -> str:
    return ",".join(f"{a:.6f}" for a in alpha)


def _digest(scope: str, record: dict) -> str:
    return hashlib.sha256(canonical_json({"scope": scope, **record}).encode()).hexdigest()[:32]


def record_line(scope: str, alpha: Sequence[float], result: dict) -> str:
    """One cache line: the merge's key and weights, its result, and their digest (`scope`: the cache's name)."""
    record = json.loads(
        json.dumps(
            {"key": alpha_key(alpha), "alpha": list(map(float, alpha)), "result": result}, allow_nan=False
        )
    )  # digested as it is read back
    return json.dumps({**record, "digest": _digest(scope, record)}) + "\n"


def _read(line: str, scope: str) -> tuple[str, dict] | None:
    """(key, result) of a line whose digest holds; lines from before digests were written have none and are
    evaluated again, like damaged ones: nothing in them can be told from an edit."""
    try:
        rec = json.loads(line)
        key, alpha, result, digest = rec["key"], rec["alpha"], rec["result"], rec["digest"]
    except (json.JSONDecodeError, TypeError, KeyError):
        return None
    if digest != _digest(scope, {"key": key, "alpha": alpha, "result": result}):
        return None
    ok = isinstance(key, str) and isinstance(result, dict) and isinstance(result.get("U"), (int, float))
    return (key, result) if ok and is_finite(result) and _scores(alpha, key) else None


def _scores(alpha, key: str) -> bool:
    """The line's weights are the merge its key names."""
    try:
        return alpha_key([float(a) for a in alpha]) == key
    except (TypeError, ValueError):
        return False


class EvalCache:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.scope = self.path.stem if self.path else ""
        self.entries: dict[str, dict] = {}
        self.hits = self.misses = 0
        self._offset = 0  # bytes of the file read so far (whole lines only)
        self._refresh()
        self._known = set(self.entries)  # cached before this search: hits; evaluated here: misses
        self._joined: set[str] = set()  # asked for, and evaluated meanwhile by another process (a worker)

    @property
    def joined(self) -> int:
        return len(self._joined)

    def _refresh(self) -> None:
        """Take in the lines appended since the last read (by this or another process)."""
        if not (self.path and self.path.is_file()):
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        whole = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self._offset += len(whole)
        failed = 0
        for line in whole.decode(errors="replace").splitlines():
            if (entry := _read(line, self.scope)) is not None:
                self.entries[entry[0]] = entry[1]
            else:
                failed += bool(line.strip())
        if failed:
            log.warning(
                f"{failed} line(s) of the evaluation cache {self.path} fail their digest (edited, damaged, or "
                f"written before lines carried one): those merges are evaluated again"
            )

    def _lock_path(self, key: str) -> Path:
        return (
            self.path.parent
            / f".{self.path.name}.locks"
            / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.lock"
        )

    def get_or_eval(self, alpha: Sequence[float], evaluate: Callable[[], dict]) -> dict:
        key = alpha_key(alpha)
        if key not in self.entries:
            with locked(self._lock_path(key)) if self.path else nullcontext():
                self._refresh()  # another worker may have evaluated it meanwhile
                if key not in self.entries:
                    return self._evaluate(key, alpha, evaluate)
        if key in self._known:
            self.hits += 1
        else:
            self._joined.add(key)
        return self.entries[key]

    def try_eval(self, alpha: Sequence[float], evaluate: Callable[[], dict]) -> bool:
        """Evaluate `alpha` unless it is cached or another process is evaluating it right now (then skip: the
        caller goes on to the next merge). True when it is in the cache afterwards."""
        key = alpha_key(alpha)
        self._refresh()
        if key in self.entries or not self.path:
            return key in self.entries
        with locked(self._lock_path(key), wait=False) as held:
            if not held:
                return False
            self._refresh()
            if key not in self.entries:
                self._evaluate(key, alpha, evaluate)
        return True

    def _evaluate(self, key: str, alpha: Sequence[float], evaluate: Callable[[], dict]) -> dict:
        self.misses += 1
        self._known.add(key)
        result = evaluate()
        check_finite(result, f"merge alpha=({key})")
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = record_line(self.scope, alpha, result)
            appending = os.O_CREAT | os.O_WRONLY | os.O_APPEND
            with (
                locked(self.path.parent / f".{self.path.name}.lock"),
                os.fdopen(open_nofollow(self.path, appending), "a") as fh,
            ):
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        self.entries[key] = result
        return result
