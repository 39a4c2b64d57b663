"""Merge bandwidth: `ExpertBank.merge_into` against a plain `dst.copy_(src)` moving the same bytes.

A merge of K experts into a model of P parameters reads the base and K task vectors and writes the model once:
P * 4 * (K + 2) bytes, in one call per parameter. The copy moves as many bytes (src + dst) in one call per
parameter too, each (K + 2) / 2 times that parameter's size, through buffers of at least 2 x 256 MiB walked in
order (far beyond the last-level cache): same bytes, same call pattern. The ratio is merge / copy bandwidth."""

from __future__ import annotations

import torch

from bench.common import alternate, build, med, mem_available, model_cfg, ratio
from mergemix.merging import ExpertBank

COPY_CHUNK = 256 * 2**20  # bytes: the least size of each copy buffer
NOISE = 1e-3  # experts = base + small random noise

# Synthetic Llama shapes with a Llama-2-sized vocabulary; HUGE is TinyLlama's shape (1.03B with tied embeddings).
LARGE = {
    "hidden_size": 768,
    "num_layers": 12,
    "num_heads": 12,
    "num_kv_heads": 12,
    "intermediate_size": 2048,
    "max_position_embeddings": 1024,
}
HUGE = {
    "hidden_size": 2048,
    "num_layers": 22,
    "num_heads": 32,
    "num_kv_heads": 4,
    "intermediate_size": 5632,
    "max_position_embeddings": 2048,
}


def count(cfg: dict, vocab: int) -> int:
    """Parameters of a config, on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build(cfg, vocab=vocab).parameters())


def synthetic_bank(base, k: int, seed: int = 0) -> ExpertBank:
    """A bank of k experts = base + N(0, NOISE^2) noise, built from task vectors directly: the expert models
    never exist, so a 1B bank needs (k + 1) x 4 GB, not (2k + 1) x 4 GB. Same layout as `ExpertBank.__init__`
    (tests/test_bench.py checks that both merge alike)."""
    gen = torch.Generator().manual_seed(seed)
    bank = ExpertBank.__new__(ExpertBank)
    bank.names = [f"e{i}" for i in range(k)]
    bank.base_params = {n: p.detach().clone() for n, p in base.named_parameters()}
    bank.deltas = {
        n: torch.randn(k, p.numel(), generator=gen).mul_(NOISE) for n, p in base.named_parameters()
    }
    return bank


def copier(numels: list[int], k: int):
    """A function making one copy per parameter of (k + 2) / 2 times its size (read + written)."""
    calls = [n * (k + 2) // 2 for n in numels]
    cap = max(max(calls), COPY_CHUNK // 4)
    src, dst = torch.rand(cap), torch.empty(cap)

    def copy_all() -> None:
        off = 0
        for n in calls:
            off = 0 if off + n > cap else off
            dst[off : off + n].copy_(src[off : off + n])
            off += n

    return copy_all


def measure(cfg: dict, vocab: int, k: int, repeats: int, threads: list[int]) -> list[dict]:
    """One row per torch thread count: merge and copy timed side by side."""
    model = build(cfg, vocab=vocab)
    bank = synthetic_bank(model, k)
    numels = [p.numel() for p in model.parameters()]
    n_bytes, weights, copy = sum(numels) * 4 * (k + 2), [1.0 / k] * k, copier(numels, k)
    rows, default = [], torch.get_num_threads()
    for n in threads:
        torch.set_num_threads(n)
        try:
            t = alternate({"merge": lambda: bank.merge_into(model, weights), "copy": copy}, repeats)
        finally:
            torch.set_num_threads(default)
        rows.append(
            {
                "params": sum(numels),
                "K": k,
                "threads": n,
                "gb_moved": n_bytes / 1e9,
                "merge_s": med(t["merge"]),
                "copy_s": med(t["copy"]),
                "merge_gbps": n_bytes / 1e9 / med(t["merge"]),
                "copy_gbps": n_bytes / 1e9 / med(t["copy"]),
                "ratio": ratio(t["copy"], t["merge"]),
            }
        )
    return rows


def fit_huge(k: int, vocab: int, budget: float) -> tuple[dict | None, str]:
    """The 1B shape, or fewer layers until model + bank + copy buffers fit in `budget` bytes."""
    for layers in (22, 16, 12):
        cfg = {**HUGE, "num_layers": layers}
        if count(cfg, vocab) * 4 * (k + 2) + 2**31 <= budget:  # + the copy buffers
            return cfg, "" if layers == 22 else f"1B shape cut to {layers} layers to fit in memory"
    return None, f"1B skipped: the smallest 1B-class bank does not fit in {budget / 2**30:.1f} GiB"


def run(quick: bool, repeats: int) -> tuple[list[dict], list[str]]:
    """Rows of (size, K, threads), largest size last, and notes on what was cut or skipped. Every size runs at
    the session's torch threads and, when that is more than one, single-threaded too: with a busy neighbour a
    multi-threaded call can wait a scheduler slice for its second thread."""
    threads = sorted({torch.get_num_threads(), 1}, reverse=True)
    plan, notes = [("5M", model_cfg("small"), 2048, (2, 4, 8))], []
    if not quick:
        plan.append(("100M", LARGE, 32000, (2, 4, 8)))
        cfg, note = fit_huge(2, 32000, 0.8 * mem_available())
        if cfg is not None:
            plan.append((f"{count(cfg, 32000) / 1e9:.2f}B", cfg, 32000, (2,)))
        notes += [note] if note else []
        notes.append(
            "K > 2 at 1B does not fit in RAM (the bank holds base + K task vectors in fp32); "
            "streaming merges are a separate piece of work"
        )
    rows = []
    for label, cfg, vocab, ks in plan:
        for k in ks:
            for row in measure(cfg, vocab, k, repeats, threads):
                rows.append({"size": label, **row})
                print(
                    f"  merge {label} K={k} threads={row['threads']}: {row['ratio']:.2f} of copy bandwidth "
                    f"({row['merge_gbps']:.1f} vs {row['copy_gbps']:.1f} GB/s)",
                    flush=True,
                )
    return rows, notes
