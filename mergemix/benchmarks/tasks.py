"""Benchmark tasks: multiple choice scored by log-likelihood (`mc`) or exact-match generation (`gen`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mergemix.data.domains import utf8_lines
from mergemix.errors import MergeMixError


@dataclass
class Task:
    name: str
    kind: str  # "mc" | "gen"
    items: list[dict] = field(default_factory=list)  # mc: context, choices, label; gen: prompt, answer
    max_new_tokens: int = 8
    lmeval: dict | None = None  # set for an lm-eval member: scored by lm-eval (benchmarks/lmeval.py)

    @property
    def score_key(self) -> str:
        """The per-item score of a generation task."""
        return (self.lmeval or {}).get("metric") or "exact_match"

    @property
    def chance(self) -> float:
        if self.kind == "gen" or not self.items:
            return 0.0
        return sum(1.0 / len(it["choices"]) for it in self.items) / len(self.items)


def _text(item: dict, key: str, where: str, numbers: bool = False) -> str:
    """A text field as a string: null, lists or objects are refused rather than turned into their repr."""
    value = item[key]
    ok = isinstance(value, str) or (
        numbers and isinstance(value, (int, float)) and not isinstance(value, bool)
    )
    if not ok:
        raise MergeMixError(
            f"{where}: {key} must be {'text or a number' if numbers else 'text'}, "
            f"got {json.dumps(value)[:40]}"
        )
    return str(value)


def _check_item(item, kind: str, where: str) -> dict:
    if not isinstance(item, dict):
        raise MergeMixError(f"{where}: expected a JSON object, got {json.dumps(item)[:40]}")
    if kind == "mc":
        if not {"context", "choices", "label"} <= set(item):
            raise MergeMixError(f"{where}: a multiple-choice item needs context, choices and label")
        choices, label = item["choices"], item["label"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise MergeMixError(f"{where}: choices must be a list of at least two strings")
        if not all(c.strip() for c in choices):
            raise MergeMixError(f"{where}: a choice is empty (an empty continuation has probability 1)")
        if len(set(choices)) < len(choices):
            raise MergeMixError(
                f"{where}: choices repeat {sorted({c for c in choices if choices.count(c) > 1})}"
            )
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise MergeMixError(f"{where}: label must be an integer index into choices, got {label!r}")
        return {"context": _text(item, "context", where), "choices": choices, "label": label}
    if not {"prompt", "answer"} <= set(item):
        raise MergeMixError(f"{where}: a generation item needs prompt and answer")
    prompt, answer = _text(item, "prompt", where), _text(item, "answer", where, numbers=True).strip()
    if not prompt.strip() or not answer:
        raise MergeMixError(f"{where}: a generation item needs a non-empty prompt and answer")
    return {"prompt": prompt, "answer": answer}


def load_jsonl_task(
    name: str, path: str | Path, kind: str | None = None, limit: int | None = None, max_new_tokens: int = 8
) -> Task:
    """A user benchmark: one JSON object per line, `{context, choices, label}` or `{prompt, answer}`."""
    path = Path(path)
    if not path.is_file():
        raise MergeMixError(f"benchmark '{name}': file not found: {path}")
    items, seen = [], {}
    try:
        lines = list(utf8_lines(path))
    except MergeMixError as exc:
        raise MergeMixError(f"benchmark '{name}': {exc}") from exc
    for i, line in lines:
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MergeMixError(f"benchmark '{name}': {path}:{i} is not valid JSON ({exc.msg})") from exc
        item_kind = kind or ("mc" if isinstance(raw, dict) and "choices" in raw else "gen")
        items.append(_check_item(raw, item_kind, f"benchmark '{name}': {path}:{i}"))
        first = seen.setdefault(json.dumps(items[-1], sort_keys=True), i)
        if first != i:
            raise MergeMixError(
                f"benchmark '{name}': {path}:{i} repeats the item of line {first} (a repeated item "
                "counts twice and understates the bootstrap noise)"
            )
        kind = item_kind
    if not items:
        raise MergeMixError(f"benchmark '{name}': {path} holds no items")
    return Task(name, kind, items[:limit] if limit else items, max_new_tokens)
