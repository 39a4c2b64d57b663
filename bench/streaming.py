"""Streaming merge memory: peak RSS of `export_merge(stream=True)` (what `mergemix merge` runs on large
checkpoints) on a synthetic checkpoint, a bf16 base and two experts as safetensors, measured in a fresh
subprocess (`resource.getrusage` ru_maxrss) and compared with the goal 1.2 x model size + largest tensor. The
in-memory ExpertBank merge would hold (K + 2) fp32 models: that figure is reported beside it, not run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import ROOT
from bench.merge import HUGE, LARGE

VOCAB, NOISE, K = 32000, 1e-3, 2
SCRIPT = """
import json, resource, sys, time
from transformers import AutoConfig  # noqa: F401 - imported before the baseline: the merge needs it
from mergemix.merging import export_merge

def peak():  # Linux carries the parent's peak RSS over fork + exec into ru_maxrss: reset VmHWM and read it
    try:
        return next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

try:
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
base, out, *experts = sys.argv[1:]
before = peak()
t0 = time.perf_counter()
export_merge(base, experts, [1 / len(experts)] * len(experts), out, stream=True)
print(json.dumps({"rss_before": before, "rss_peak": peak(), "merge_s": time.perf_counter() - t0}))
"""


def tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a Llama checkpoint's stored tensors (tied embeddings once), from the meta device."""
    from mergemix.models import build_model

    with torch.device("meta"):
        model = build_model({**cfg, "seq_len": cfg["max_position_embeddings"]}, VOCAB, 0)
    return sorted((n, tuple(p.shape)) for n, p in model.named_parameters())


def write_checkpoint(path: Path, cfg: dict, specs, noise_seed: int | None) -> int:
    """A bf16 checkpoint written tensor by tensor (never a whole model in memory): the base when `noise_seed`
    is None, else base + N(0, NOISE^2). Returns the bytes of its tensors."""
    from mergemix.models import hf_config
    from mergemix.streaming import _write_header

    path.mkdir(parents=True)
    hf_config({**cfg, "seq_len": cfg["max_position_embeddings"]}, VOCAB).to_json_file(
        str(path / "config.json")
    )
    with open(path / "model.safetensors", "wb") as fh:
        _write_header(fh, [(n, s, "BF16") for n, s in specs])
        for i, (_, shape) in enumerate(specs):
            t = torch.randn(shape, generator=torch.Generator().manual_seed(i)).mul_(0.02)
            if noise_seed is not None:
                t.add_(
                    torch.randn(
                        shape, generator=torch.Generator().manual_seed(10_000 * (noise_seed + 1) + i)
                    ),
                    alpha=NOISE,
                )
            fh.write(t.to(torch.bfloat16).reshape(-1).view(torch.uint8).numpy().tobytes())
    return sum(2 * math.prod(s) for _, s in specs)


def measure(cfg: dict, label: str, work: Path) -> dict:
    specs = tensor_specs(cfg)
    params = sum(math.prod(s) for _, s in specs)
    need = (K + 2) * 2 * params * 2.2  # base + experts + output, with room to spare
    if shutil.disk_usage(work).free < need:
        return {
            "size": label,
            "params": params,
            "skipped": f"needs {need / 2**30:.1f} GiB free disk in {work}",
        }
    root = work / f"stream-{label}"
    shutil.rmtree(root, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        model_bytes = write_checkpoint(root / "base", cfg, specs, None)
        experts = [root / f"e{k}" for k in range(K)]
        for k, p in enumerate(experts):
            write_checkpoint(p, cfg, specs, k)
        write_s = time.perf_counter() - t0
        res = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(root / "base"), str(root / "out"), *map(str, experts)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"streaming merge failed: {res.stderr.strip().splitlines()[-1:]}")
        m = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    largest = 2 * max(math.prod(s) for _, s in specs)
    limit = 1.2 * model_bytes + largest
    return {
        "size": label,
        "params": params,
        "K": K,
        "model_gb": model_bytes / 1e9,
        "largest_gb": largest / 1e9,
        "write_s": write_s,
        "merge_s": m["merge_s"],
        "read_gbps": (K + 1) * model_bytes / 1e9 / m["merge_s"],
        "rss_before_gb": m["rss_before"] / 1e9,
        "rss_peak_gb": m["rss_peak"] / 1e9,
        "rss_model_ratio": m["rss_peak"] / model_bytes,
        "rss_merge_ratio": (m["rss_peak"] - m["rss_before"]) / model_bytes,
        "limit_ratio": limit / model_bytes,
        "rss_goal_ratio": m["rss_peak"] / limit,
        "in_memory_gb": (K + 2) * 4 * params / 1e9,
    }


def run(quick: bool, work: Path) -> tuple[list[dict], list[str]]:
    """One row: ~110M parameters with --quick, else the 1.03B TinyLlama shape (3 x 2.1 GB files on disk)."""
    label, cfg = ("110M", LARGE) if quick else ("1.03B", HUGE)
    row = measure(cfg, label, work)
    if "skipped" in row:
        return [], [f"streaming merge at {label} skipped: {row['skipped']}"]
    print(
        f"  stream merge {label}: peak RSS {row['rss_peak_gb']:.2f} GB = {row['rss_model_ratio']:.2f} x model "
        f"({row['model_gb']:.2f} GB; goal <= {row['limit_ratio']:.2f} x), {row['merge_s']:.1f} s",
        flush=True,
    )
    return [row], []
