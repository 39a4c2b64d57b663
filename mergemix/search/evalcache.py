"""Persistent evaluation cache keyed by the merge weights: no candidate is merged and evaluated twice, and a
killed search resumes from what it already evaluated (one JSON line per evaluation, appended and flushed). Only
finite scores are stored; a line that cannot be read (cut by a kill, damaged, non-finite) is skipped, so its
merge is evaluated again."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

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
        if self.path and self.path.is_file():
            for line in self.path.read_text(errors="replace").splitlines():
                if (entry := _read(line)) is not None:
                    self.entries[entry[0]] = entry[1]

    def get_or_eval(self, alpha: Sequence[float], evaluate: Callable[[], dict]) -> dict:
        key = alpha_key(alpha)
        if key in self.entries:
            self.hits += 1
            return self.entries[key]
        self.misses += 1
        result = evaluate()
        check_finite(result, f"merge alpha=({key})")
        self.entries[key] = result
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"key": key, "alpha": list(map(float, alpha)), "result": result}, allow_nan=False) + "\n"
            with open(self.path, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)  # search workers may share the file
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
                fcntl.flock(fh, fcntl.LOCK_UN)
        return result
