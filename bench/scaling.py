"""Search cost: one candidate = merge K experts + evaluate the suite (as the search stage does: bf16 autocast,
`Suite.evaluate` with its bootstrap); N seed candidates cost N times that. Table and PNG over K, N and size."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench.common import alternate, build, med, model_cfg, n_params
from bench.merge import synthetic_bank
from mergemix.benchmarks.suite import Suite

KS, NS = (2, 4, 8), (20, 40, 80)


def measure(size: str, tok, tasks: dict, repeats: int) -> list[dict]:
    model = build(model_cfg(size), vocab=len(tok))
    suite = Suite(tok, tasks, {t: [t] for t in tasks}, metric="prob", batch_size=64, max_length=256)
    rows = []
    for k in KS:
        bank = synthetic_bank(model, k)
        alphas = iter(np.random.default_rng(k).dirichlet(np.ones(k), 1000).tolist())

        def evaluate():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                suite.evaluate(model)

        def merge(bank=bank, alphas=alphas):
            bank.merge_into(model, next(alphas))

        t = alternate({"merge": merge, "evaluate": evaluate}, repeats)
        cost = med(t["merge"]) + med(t["evaluate"])
        rows.append(
            {
                "size": size,
                "params": n_params(model),
                "K": k,
                "merge_s": med(t["merge"]),
                "evaluate_s": med(t["evaluate"]),
                "candidate_s": cost,
                **{f"N{n}_s": n * cost for n in NS},
            }
        )
    return rows


def check_linear(size: str, tok, tasks: dict, k: int = 4, n: int = 20) -> dict:
    """A real loop of n candidates back to back, against the n x (median candidate) prediction."""
    model = build(model_cfg(size), vocab=len(tok))
    suite = Suite(tok, tasks, {t: [t] for t in tasks}, metric="prob", batch_size=64, max_length=256)
    bank = synthetic_bank(model, k)
    t0 = time.perf_counter()
    for alpha in np.random.default_rng(0).dirichlet(np.ones(k), n).tolist():
        bank.merge_into(model, alpha)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            suite.evaluate(model)
    return {"size": size, "K": k, "N": n, "loop_s": time.perf_counter() - t0}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for i, s in enumerate(sizes):
        mine = [r for r in rows if r["size"] == s]
        color = f"C{i}"
        a.plot([r["K"] for r in mine], [r["candidate_s"] for r in mine], "o-", color=color, label=s)
        a.plot([r["K"] for r in mine], [r["merge_s"] for r in mine], "x:", color=color)
        for r, style in zip(mine, (":", "--", "-")):
            b.plot(NS, [r[f"N{n}_s"] for n in NS], style, color=color, marker="o", label=f"{s} K={r['K']}")
    a.set(
        xlabel="experts K",
        ylabel="seconds per candidate",
        yscale="log",
        xticks=list(KS),
        title="one candidate (solid) and its merge (dotted)",
    )
    b.set(
        xlabel="seed candidates N",
        ylabel="seconds",
        yscale="log",
        xticks=list(NS),
        title="search: N candidates",
    )
    a.legend(fontsize=8)
    b.legend(fontsize=7, ncol=len(sizes))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(sizes: list[str], tok, tasks: dict, repeats: int) -> tuple[list[dict], dict]:
    rows = []
    for size in sizes:
        rows += measure(size, tok, tasks, repeats)
        print(
            f"  scaling {size}: "
            + ", ".join(f"K={r['K']} {r['candidate_s']:.3f}s" for r in rows[-len(KS) :]),
            flush=True,
        )
    check = check_linear(sizes[0], tok, tasks)
    pred = next(r for r in rows if r["size"] == check["size"] and r["K"] == check["K"])["candidate_s"]
    check["predicted_s"] = check["N"] * pred
    return rows, check
