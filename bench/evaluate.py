"""Candidate evaluation: the Evaluator against a bare batched forward over exactly its packed batches, and
against lm-eval's HFLM (in memory, same tasks as local YAML + JSONL, fully offline): speed and equal `acc`.

The bare forward is `model(...).logits` over the same tokens the Evaluator feeds: its packed rows (each item's
context and shared continuation prefixes once) with their tree masks and positions. It computes the LM head at
every position; the Evaluator only where a log-prob is needed, and adds the scoring."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import alternate, build, med, model_cfg, n_params, ratio
from mergemix.benchmarks import lmeval
from mergemix.benchmarks.evaluator import Evaluator

BATCH = 64  # the pipeline's benchmarks.batch_size, for both evaluators


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def bare_forward(model, ev: Evaluator) -> None:
    for batches in ev.plan(ev.packs(model)).values():
        for b in batches:
            _ = model(**ev.forward_inputs(model, b), use_cache=False).logits


# ------------------------------------------------------------------------------------------------ lm-eval ---
lmeval_available = lmeval.available


def lmeval_tasks(workdir: Path, tasks: dict) -> object:
    """Our tasks as lm-eval task YAMLs over local JSONL files; a TaskManager that sees only them."""
    return lmeval.export_tasks(workdir, tasks, prefix="mm_")


def lmeval_runner(model, tok, tm, names: list[str], model_time: list | None = None, per_item: bool = False):
    """A function running lm-eval's simple_evaluate on `model`: {task: acc}, or {task: per-item acc in item
    order} with `per_item`. (seconds, padded tokens) of each of HFLM's model calls are appended to `model_time`."""
    hflm = lmeval.hflm(model, tok, BATCH)
    if model_time is not None:
        call = hflm._model_call

        def timed_call(*args, **kwargs):
            t0 = time.perf_counter()
            out = call(*args, **kwargs)
            model_time.append((time.perf_counter() - t0, args[0].numel()))
            return out

        hflm._model_call = timed_call

    def run() -> dict:
        out = lmeval.run(hflm, [f"mm_{n}" for n in names], tm, log_samples=per_item)
        if per_item:
            return {n: lmeval.mc_scores(lmeval.samples(out, f"mm_{n}"))["acc"] for n in names}
        return {n: float(out["results"][f"mm_{n}"]["acc,none"]) for n in names}

    return run


# ---------------------------------------------------------------------------------------------------- run ---
def _under(bf16: bool, fn):
    def side() -> None:
        with autocast(bf16):
            fn()

    return side


def measure(size: str, tok, tasks: dict, repeats: int, tm=None) -> dict:
    """Evaluator, bare forward and lm-eval (when `tm` is given) in fp32 and under bf16 autocast, side by side;
    then `acc` of the Evaluator and of lm-eval item by item, both in fp32."""
    model = build(model_cfg(size), vocab=len(tok)).eval()
    ev = Evaluator(tok, tasks, BATCH, 256)
    sides, lm_fwd = {}, {"": [], "_bf16": []}
    for bf16, sfx in ((False, ""), (True, "_bf16")):
        sides[f"evaluator{sfx}"] = _under(bf16, lambda: ev.per_item(model))
        sides[f"forward{sfx}"] = _under(bf16, lambda: bare_forward(model, ev))
        if tm is not None:
            sides[f"lm_eval{sfx}"] = _under(bf16, lmeval_runner(model, tok, tm, list(tasks), lm_fwd[sfx]))
    t = alternate(sides, repeats)
    plan = [b for bs in ev.plan(ev.packs(model)).values() for b in bs]
    row = {
        "size": size,
        "params": n_params(model),
        "items": sum(len(x.items) for x in tasks.values()),
        "rows": sum(int(b.input_ids.shape[0]) for b in plan),
        "batches": len(plan),
        "tokens": sum(b.n_tokens for b in plan),
        "padded_tokens": sum(b.input_ids.numel() for b in plan),
        **{f"{k}_s": med(v) for k, v in t.items()},
    }
    for sfx in ("", "_bf16"):
        row[f"forward_ratio{sfx}"] = ratio(t[f"evaluator{sfx}"], t[f"forward{sfx}"])
        if tm is not None:
            row[f"lmeval_speedup{sfx}"] = ratio(t[f"lm_eval{sfx}"], t[f"evaluator{sfx}"])
            runs = repeats + 1  # with the untimed warm-up round
            row[f"lm_eval_forward_s{sfx}"] = sum(s for s, _ in lm_fwd[sfx]) / runs
            row[f"lm_eval_forward_calls{sfx}"] = len(lm_fwd[sfx]) // runs
            row[f"lm_eval_padded_tokens{sfx}"] = sum(n for _, n in lm_fwd[sfx]) // runs
    ours = {n: s["acc"] for n, s in ev.per_item(model).items()}
    row["acc_ours"] = {n: float(a.mean()) for n, a in ours.items()}
    if tm is not None:
        theirs = lmeval_runner(model, tok, tm, list(tasks), per_item=True)()
        row["acc_lm_eval"] = {n: float(a.mean()) for n, a in theirs.items()}
        row["acc_identical"] = all(np.array_equal(ours[n], theirs[n]) for n in tasks)  # item by item
    return row


def run(sizes: list[str], tok, tasks: dict, workdir: Path, repeats: int) -> tuple[list[dict], list[str]]:
    notes = []
    tm = lmeval_tasks(workdir, tasks) if lmeval_available() else None
    if tm is None:
        notes.append("lm-eval not installed: the lm-eval comparison was skipped (`make bench` installs it)")
    rows = []
    for size in sizes:
        rows.append(measure(size, tok, tasks, repeats, tm))
        r = rows[-1]
        print(
            f"  eval {size}: evaluator / bare forward {r['forward_ratio']:.2f}"
            + (
                f", lm-eval / evaluator {r['lmeval_speedup']:.1f}x, acc identical {r['acc_identical']}"
                if tm is not None
                else ""
            ),
            flush=True,
        )
    return rows, notes
