"""Shared pieces: side-by-side timing, the machine's description, model sizes, a tokenizer and benchmark tasks."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 2048  # the pipeline's default tokenizer size (conf/config.yaml)


# ------------------------------------------------------------------------------------------------ timing ---
def alternate(sides: dict[str, Callable[[], float | None]], repeats: int, warmup: int = 1) -> dict[str, list]:
    """Run every side once per round, `repeats` rounds after `warmup` untimed ones, first side alternating.
    A side may return its own elapsed seconds (e.g. without its warm-up steps); otherwise its wall time counts."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list] = {k: [] for k in sides}
    for r in range(repeats):
        for k in list(sides) if r % 2 == 0 else list(reversed(sides)):
            t0 = time.perf_counter()
            own = sides[k]()
            times[k].append(own if isinstance(own, float) else time.perf_counter() - t0)
    return times


def ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios: each pair ran back to back, so a noisy neighbour cancels out."""
    return statistics.median(a / b for a, b in zip(num, den))


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ------------------------------------------------------------------------------------------------ machine ---
def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def mem_available() -> int:
    return _meminfo("MemAvailable")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            cpu,
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(_meminfo("MemTotal") / 2**30, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        **{p: _version(p) for p in ("transformers", "pytorch-lightning", "lm-eval", "mergekit")},
        "loadavg_1min_start": round(os.getloadavg()[0], 2),
    }


# ------------------------------------------------------------------------------------------------- models ---
def model_cfg(name: str) -> dict:
    """A named size from conf/model/*.yaml, as `build_model` wants it."""
    cfg = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    return {**cfg, "max_position_embeddings": cfg["seq_len"]}


def build(cfg: dict, seed: int = 0, vocab: int = VOCAB):
    from mergemix.models import build_model

    return build_model(cfg, vocab, seed)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# -------------------------------------------------------------------------------------- tokenizer, tasks ---
def tokenizer_and_tasks(workdir: Path, n_items: int) -> tuple[object, dict]:
    """A byte-level BPE on embedded prose + arithmetic, and two multiple-choice tasks: prose cloze (one-token
    choices: one forward scores all four) and arithmetic (multi-token choices: one sequence per choice)."""
    from mergemix.benchmarks import embedded as bench_tasks
    from mergemix.data import embedded
    from mergemix.data.tokenizer import train_tokenizer

    prose, prose_held = embedded.build("prose", 0, 0.1, max_chars=400_000)
    math, _ = embedded.build("math", 0, 0.1, n_items=2000)
    tok = train_tokenizer(prose + math, VOCAB, workdir / "tokenizer")

    def single(word: str) -> bool:
        return len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1

    return tok, {
        "prose_cloze": bench_tasks.cloze("prose_cloze", prose_held, n_items, 0, 400, 150, single),
        "math_mc": bench_tasks.synthetic_mc("math_mc", "math", n_items, 0),
    }
