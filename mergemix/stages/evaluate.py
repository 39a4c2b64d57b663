"""Stage 6, evaluate: the benchmark suite (tasks built once from their sources and the held-out documents) and a
checkpoint's scores on it, cached by (checkpoint, suite)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from mergemix import artifacts
from mergemix.artifacts import ArtifactStore
from mergemix.stages import data
from mergemix.stages.keys import config_inputs


def build_tasks(
    store: ArtifactStore, cfg: dict, corpus: dict[str, Path], tokenizer_dir: Path, seed: int
) -> Path:
    """Every task's items as `<task>.json`; cloze tasks draw from their domain's held-out documents."""
    b = cfg["benchmarks"]
    files = {
        t: artifacts.file_digest(s["path"])
        for t, s in b["tasks"].items()
        if s.get("source") == "jsonl" and Path(s["path"]).is_file()
    }
    inputs = {
        **config_inputs(cfg, "benchmarks"),
        "heldout": {n: p.name for n, p in corpus.items()},
        "files": files,
        "tokenizer": store.ref(tokenizer_dir),
    }
    lm = {t: s for t, s in b["tasks"].items() if s.get("source") == "lmeval"}
    if lm:  # lm-eval's version and the files under each include_path
        from mergemix.benchmarks import lmeval

        inputs["lmeval"] = lmeval.fingerprint(lm)

    def build(tmp: Path):
        from mergemix.benchmarks.suite import build_task
        from mergemix.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_dir)
        cloze = {s.get("domain") for s in b["tasks"].values() if s.get("builder") == "cloze"}
        held = {n: list(data.docs(cfg, n, p, "heldout")) for n, p in corpus.items() if n in cloze}
        for name, spec in sorted(b["tasks"].items()):
            task = build_task(name, spec, held, seed, tokenizer)
            (tmp / f"{name}.json").write_text(
                json.dumps(
                    {
                        "kind": task.kind,
                        "items": task.items,
                        "max_new_tokens": task.max_new_tokens,
                        "lmeval": task.lmeval,
                    }
                )
            )
        return {"n_items": {t: len(json.loads((tmp / f"{t}.json").read_text())["items"]) for t in b["tasks"]}}

    return store.get_or_build("benchmarks", inputs, build)


def load_suite(cfg: dict, task_dir: Path, tokenizer):
    """The benchmark suite over the built tasks (benchmarks/suite.py)."""
    from mergemix.benchmarks.suite import Suite
    from mergemix.benchmarks.tasks import Task

    b = cfg["benchmarks"]
    tasks = {}
    for name in sorted(b["tasks"]):
        raw = json.loads((task_dir / f"{name}.json").read_text())
        tasks[name] = Task(name, raw["kind"], raw["items"], raw["max_new_tokens"], raw.get("lmeval"))
    caps = {c: spec["tasks"] for c, spec in b["capabilities"].items()}
    return Suite(tokenizer, tasks, caps, b["metric"], b["batch_size"], b["max_length"], b["bootstrap"])


def suite_key(cfg: dict, task_dir: Path) -> str:
    """What determines a score besides the checkpoint: the tasks and how they are scored."""
    return artifacts.stage_key("eval", {"tasks": task_dir.name, **config_inputs(cfg, "eval")})


def autocast(trainer: dict):
    """Evaluation in `trainer.eval_dtype` (None: the checkpoint's own dtype)."""
    import torch

    name = trainer.get("eval_dtype")
    if not name:
        return contextlib.nullcontext()
    return torch.autocast("cpu" if trainer["accelerator"] == "cpu" else "cuda", dtype=getattr(torch, name))


def score_checkpoint(
    store: ArtifactStore, path: Path, key: str, suite: Callable[[], object], trainer: dict
) -> Path:
    """The stored scores (`scores.json`) of a checkpoint on the suite named `key`; `suite` loads it on a miss."""
    from mergemix.benchmarks.suite import check_finite
    from mergemix.models import load_checkpoint

    def build(tmp: Path):
        with autocast(trainer):
            result = suite().evaluate(load_checkpoint(path))
        check_finite(result, f"checkpoint {path}")
        (tmp / "scores.json").write_text(json.dumps(result, indent=2, allow_nan=False))

    return store.get_or_build("eval", {"checkpoint": store.ref(path), "suite": key}, build)
