"""Persistent evaluation cache keyed by the merge weights: no candidate is merged and evaluated twice, and a
killed search resumes from what it already evaluated (one JSON line per evaluation, appended and flushed). Search
workers in other processes share the file: a miss first reads what they appended since, then evaluates under a
lock on that merge, so two processes never evaluate the same merge. Only finite scores are stored; a line that
cannot be read (cut by a kill, damaged, non-finite) is skipped, so its merge is evaluated again."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

from mergemix.artifacts import locked
from mergemix.benchmarks.suite import check_finite, is_finite


def alpha_key(alpha: Sequence[float]) -> str:
    return ",".join(f"{a:.6f}" for a in alpha)


def _read(line: str) -> tuple[str, dict] | None:
    try:
        rec = json.loads(line)
        key, result = rec["key"], rec["result"]
    except (json.JSONDecodeError, TypeError, KeyError):
        return None
    ok = isinstance(key, str) and isinstance(result, dict) and isinstance(result.get("U"), (int, float))
    return (key, result) if ok and is_finite(result) else None


class EvalCache:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
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
        whole = data[:data.rfind(b"\n") + 1]  # a line still being written is read next time
        self._offset += len(whole)
        for line in whole.decode(errors="replace").splitlines():
            if (entry := _read(line)) is not None:
                self.entries[entry[0]] = entry[1]

    def _lock_path(self, key: str) -> Path:
        return self.path.parent / f".{self.path.name}.locks" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.lock"

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
            line = json.dumps({"key": key, "alpha": list(map(float, alpha)), "result": result}, allow_nan=False) + "\n"
            with locked(self.path.parent / f".{self.path.name}.lock"), open(self.path, "a") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        self.entries[key] = result
        return result
