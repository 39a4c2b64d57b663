"""GPU check: FSDP/bf16 expert training of a ~1B dense model on one GPU, then a merge and an evaluation on the GPU.
Prints training tokens/s and MFU (model FLOPs utilisation = 6 N tokens/s / the GPU's dense bf16 peak) and writes
them as JSON to $OUT/reports/gpu_check.json (when OUT is set) and to --out-dir.

    scripts/gpu_check.sh                                  # one CUDA GPU, model llama_1b (a few minutes)
    python scripts/gpu_check.py --device cpu --tiny       # the same code path on the micro model (tests)
    python scripts/gpu_check.py --plan --out reports/gpu_check/plan.md   # moe_8b/16b on 8 GPUs, on paper (no GPU)

Data, tokenizer and benchmarks are the embedded micro testbed (built in seconds under --root); two experts are
trained from one randomly initialised base, so the check measures the machinery, not model quality."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched against torch's device name, most specific first.
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "GH200": 989.0,
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key.lower() in device_name.lower():
            return value
    return None


def mfu(
    n_params: int, tokens_per_s: float, peak: float | None, flops_per_token_per_param: int = 6
) -> float | None:
    """Model FLOPs utilisation: flops_per_token_per_param * N * tokens/s over the peak (6 training, 2 inference)."""
    return None if not peak else flops_per_token_per_param * n_params * tokens_per_s / (peak * 1e12)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="micro model and a few steps (a code-path check)")
    ap.add_argument("--model", default="llama_1b", help="a conf/model name (ignored with --tiny)")
    ap.add_argument(
        "--steps", type=int, default=None, help="training steps per expert (default 40; 4 with --tiny)"
    )
    ap.add_argument(
        "--seq-len", type=int, default=None, help="default: the model config's (2048 for llama_1b)"
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global (sequences per step on all devices); default: the model config's",
    )
    ap.add_argument("--precision", default="bf16-mixed")
    ap.add_argument(
        "--strategy",
        choices=["fsdp", "single"],
        default="fsdp",
        help="fsdp: trainer/fsdp.yaml as a cluster runs it; single: one device, no sharding",
    )
    ap.add_argument(
        "--no-activation-checkpointing",
        action="store_true",
        help="keep activations (recomputing them costs a third more compute than MFU counts)",
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak for the MFU")
    ap.add_argument(
        "--plain",
        action="store_true",
        help="training without trainer=gpu's speed settings "
        "(chunked loss, fused AdamW): the effect of those settings",
    )
    ap.add_argument("--compile", action="store_true", help="also torch.compile the decoder (trainer.compile)")
    ap.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="timed candidates of the search loop (default 5; 2 with --tiny; 0 skips it)",
    )
    ap.add_argument(
        "--eval-tokens",
        type=int,
        default=None,
        help="benchmark tokens per candidate, at least (default 1,000,000; 20,000 with --tiny)",
    )
    ap.add_argument("--root", default="outputs/gpu_check", help="cache of the micro testbed")
    ap.add_argument("--out-dir", default=None, help="also write gpu_check.json here")
    return ap.parse_args(argv)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _step_timer(device: str):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Wall time at the end of every optimizer step (after the GPU finished it)."""

        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_end(self, *_):
            _sync(device)
            self.times.append(time.perf_counter())

    return StepTimer()


def speed_settings(trainer_cfg: dict, args) -> dict:
    """trainer=fsdp's speed settings (mergemix/speed.py), all off with --plain, compile with --compile."""
    from mergemix.training import SPEED_KEYS

    speed = {k: None if args.plain else trainer_cfg.get(k) for k in SPEED_KEYS}
    return {**speed, "compile": bool(args.compile)}


def train_expert(pipe, base_dir: Path, domain: str, out_dir: Path, args, strategy) -> dict:
    from mergemix.models import load_checkpoint
    from mergemix.training import train_causal_lm

    m = pipe.cfg["model"]
    timer = _step_timer(args.device)
    trainer = {
        "accelerator": "gpu" if args.device == "cuda" else "cpu",
        "devices": 1,
        "precision": args.precision,
        "enable_progress_bar": False,
        "gradient_clip_val": 1.0,
        "strategy": strategy,
        "callbacks": [timer],
        **speed_settings(pipe.cfg["trainer"], args),
    }
    optim = {"weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 2, "schedule": "constant"}
    stats = train_causal_lm(
        load_checkpoint(base_dir),
        pipe.tokenizer,
        pipe.arrays,
        {domain: 1.0},
        out_dir,
        args.steps * m["batch_size"] * m["seq_len"],
        m["seq_len"],
        m["batch_size"],
        1e-4,
        0,
        optim,
        trainer,
        desc=f"expert:{domain}",
    )
    warm = min(2, len(timer.times) - 2)  # skip compilation, allocation and FSDP warm-up steps
    steady_steps = len(timer.times) - 1 - warm
    stats["steady_tokens_per_s"] = (
        steady_steps * m["batch_size"] * m["seq_len"] / (timer.times[-1] - timer.times[warm])
    )
    return stats


def scaled_suite(pipe, min_tokens: int):
    """The testbed's multiple-choice tasks, their items repeated until one evaluation feeds at least `min_tokens`
    tokens (a suite the size of a paper's benchmark run; the scores themselves do not matter here)."""
    import dataclasses
    import math

    from mergemix.benchmarks.suite import Suite

    b = pipe.cfg["benchmarks"]
    mc = {n: t for n, t in pipe.suite.tasks.items() if t.kind == "mc" and t.lmeval is None}
    one = Suite(pipe.tokenizer, mc, {"all": list(mc)}, "prob", int(b["batch_size"]), int(b["max_length"]), 0)
    reps = max(1, math.ceil(min_tokens / max(1, one.evaluator.n_tokens())))
    tasks = {n: dataclasses.replace(t, items=t.items * reps) for n, t in mc.items()}
    return Suite(
        pipe.tokenizer, tasks, {"all": list(tasks)}, "prob", int(b["batch_size"]), int(b["max_length"]), 0
    )


def candidate_loop(target, bank, suite, device: str, n: int) -> dict:
    """The search's inner loop on the device: merge theta(alpha) in place into `target` (the bank's base and task
    vectors on the device, the model's own parameters as the one output buffer), then evaluate the suite; one
    untimed candidate first. Against it, a bare batched forward over exactly the evaluator's packed batches."""
    import numpy as np
    import torch

    ev, names = suite.evaluator, bank.names
    alphas = [dict(zip(names, a)) for a in np.random.default_rng(0).dirichlet(np.ones(len(names)), n + 1)]
    merge_s = eval_s = 0.0
    for i, alpha in enumerate(alphas):
        _sync(device)
        t0 = time.perf_counter()
        bank.merge_into(target, alpha)
        _sync(device)
        t1 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            suite.evaluate(target)
        _sync(device)
        if i:  # the first candidate warms up the kernels and the allocator
            merge_s, eval_s = merge_s + t1 - t0, eval_s + time.perf_counter() - t1
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        for batches in ev.plan(ev.packs(target)).values():
            for b in batches:
                _ = target(**ev.forward_inputs(target, b), use_cache=False).logits
    _sync(device)
    forward_s, tokens = time.perf_counter() - t0, ev.n_tokens()
    per_candidate = (merge_s + eval_s) / n
    return {
        "candidates": n,
        "tokens_per_candidate": tokens,
        "merge_s": round(merge_s / n, 4),
        "eval_s": round(eval_s / n, 3),
        "candidates_per_hour": round(3600 / per_candidate, 1),
        "evaluator_tokens_per_s": round(tokens * n / eval_s, 1),
        "forward_tokens_per_s": round(tokens / forward_s, 1),
        "evaluator_vs_forward": round(forward_s * n / eval_s, 3),
    }


def run(args) -> dict:
    import torch

    from mergemix.cli import _quiet, compose, to_plain
    from mergemix.merging import ExpertBank
    from mergemix.models import build_model, count_params, load_checkpoint
    from mergemix.pipeline import Pipeline

    _quiet()
    root = Path(args.root).resolve()
    model = "micro" if args.tiny else args.model
    cfg = to_plain(
        compose(
            [
                "experiment=micro",
                "logger=none",
                f"model={model}",
                f"paths.root={root}",
                f"paths.run_dir={root}/run",
                "trainer=fsdp",
            ]
        )
    )
    for key, value in (("seq_len", args.seq_len), ("batch_size", args.batch_size)):
        if value:
            cfg["model"][key] = value
    m = cfg["model"]
    for stage in (
        "base",
        "experts",
        "mix",
    ):  # the check trains its own steps; the micro budgets must pass validation
        cfg[stage]["tokens"] = max(int(cfg[stage]["tokens"]), args.steps * m["batch_size"] * m["seq_len"])
    strategy = (
        cfg["trainer"]["strategy"] if args.device == "cuda" and args.strategy == "fsdp" else None
    )  # FSDP: CUDA only
    if strategy and args.no_activation_checkpointing:
        strategy = {**strategy, "activation_checkpointing": False}
    pipe = Pipeline(cfg, cfg["paths"]["run_dir"])
    domains = pipe.domain_names[:2]
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    peak = args.peak_tflops or peak_tflops(device_name)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-", dir=root))
    try:
        t0 = time.perf_counter()
        base = build_model(cfg["model"], len(pipe.tokenizer), seed=0)
        n_params = count_params(base)
        base.save_pretrained(str(work / "base"), safe_serialization=True)
        del base
        experts = {d: train_expert(pipe, work / "base", d, work / d, args, strategy) for d in domains}
        train_s = time.perf_counter() - t0
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None

        dev = torch.device(args.device)
        target = load_checkpoint(work / "base").to(dev)
        bank = ExpertBank(target, {d: load_checkpoint(work / d).to(dev) for d in domains})
        alpha = {d: 1 / len(domains) for d in domains}
        _sync(args.device)
        t = time.perf_counter()
        bank.merge_into(target, alpha)
        _sync(args.device)
        merge_s = time.perf_counter() - t
        name, p = next(iter(target.named_parameters()))
        want = bank.base_params[name] + sum(
            a * bank.deltas[name][i].view_as(p) for i, a in enumerate(alpha.values())
        )
        merge_err = float((p.detach() - want).abs().max())

        t = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16):
            result = pipe.suite.evaluate(target)
        _sync(args.device)
        eval_s = time.perf_counter() - t
        eval_tokens = pipe.suite.evaluator.n_tokens()
        loop = (
            candidate_loop(target, bank, scaled_suite(pipe, args.eval_tokens), args.device, args.candidates)
            if args.candidates
            else None
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    train_tps = min(s["steady_tokens_per_s"] for s in experts.values())
    m = cfg["model"]
    return {
        "device": device_name,
        "peak_bf16_tflops": peak,
        "model": model,
        "params": n_params,
        "strategy": (strategy or {}).get("name", "single-process"),
        "precision": args.precision,
        "speed": speed_settings(cfg["trainer"], args),
        "activation_checkpointing": bool((strategy or {}).get("activation_checkpointing")),
        "train": {
            "experts": domains,
            "steps_per_expert": args.steps,
            "batch_size": m["batch_size"],
            "seq_len": m["seq_len"],
            "tokens_per_s": round(train_tps, 1),
            "mfu": mfu(n_params, train_tps, peak),
            "final_loss": {d: s["final_loss"] for d, s in experts.items()},
            "wall_tokens_per_s": {d: s["tokens_per_s"] for d, s in experts.items()},
            "peak_memory_gib": peak_mem,
            "wall_s": round(train_s, 1),
        },
        "merge": {"experts": len(domains), "seconds": round(merge_s, 4), "max_error": merge_err},
        "eval": {
            "seconds": round(eval_s, 2),
            "tokens": eval_tokens,
            "tokens_per_s": round(eval_tokens / eval_s, 1),
            "mfu": mfu(n_params, eval_tokens / eval_s, peak, 2),
            "U": result["U"],
        },
        "candidate_loop": loop and {**loop, "mfu": mfu(n_params, loop["evaluator_tokens_per_s"], peak, 2)},
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--plan"]:  # arithmetic on the meta device: no GPU needed (mergemix/plan.py)
        from mergemix.plan import main as plan

        plan(argv[1:])
        return 0
    args = parse(argv)
    args.steps = args.steps or (4 if args.tiny else 40)
    args.candidates = (2 if args.tiny else 5) if args.candidates is None else args.candidates
    args.eval_tokens = args.eval_tokens or (20_000 if args.tiny else 1_000_000)
    if args.steps < 4:
        print("error: --steps must be at least 4 (two warm-up steps are not timed)", file=sys.stderr)
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: no GPU: CUDA is not available on this machine (the GPU check needs one NVIDIA GPU; "
            "--device cpu --tiny runs its code path on the CPU)",
            file=sys.stderr,
        )
        return 2
    report = run(args)

    def pct(x):
        return "n/a (unknown peak: --peak-tflops)" if x is None else f"{100 * x:.1f}%"

    tr, ev = report["train"], report["eval"]
    print(
        f"gpu_check: {report['device']} (peak {report['peak_bf16_tflops']} TFLOP/s bf16), {report['model']} "
        f"{report['params']:,} params, {report['strategy']} {report['precision']}"
    )
    print(
        f"  train: {tr['steps_per_expert']} steps x {tr['batch_size']} x {tr['seq_len']} tokens per expert: "
        f"{tr['tokens_per_s']:,.0f} tokens/s, MFU {pct(tr['mfu'])}"
        + (f", peak memory {tr['peak_memory_gib']:.1f} GiB" if tr["peak_memory_gib"] else "")
    )
    print(
        f"  merge: {report['merge']['experts']} experts in {report['merge']['seconds']:.3f} s "
        f"(max error {report['merge']['max_error']:.1e}); eval: {ev['tokens']:,} tokens in {ev['seconds']:.2f} s "
        f"({ev['tokens_per_s']:,.0f} tokens/s, MFU {pct(ev['mfu'])}), U {100 * ev['U']:.1f}"
    )
    loop = report["candidate_loop"]
    if loop:
        print(
            f"  candidate loop: {loop['candidates']} x (merge in place + {loop['tokens_per_candidate']:,} tokens): "
            f"{loop['candidates_per_hour']:,.0f} candidates/h (merge {loop['merge_s']:.3f} s, evaluation "
            f"{loop['eval_s']:.2f} s); evaluator {loop['evaluator_tokens_per_s']:,.0f} tokens/s = "
            f"{loop['evaluator_vs_forward']:.2f} x a bare forward ({loop['forward_tokens_per_s']:,.0f} tokens/s)"
        )
    text = json.dumps(report, indent=2)
    dirs = [Path(os.environ["OUT"]) / "reports"] if os.environ.get("OUT") else []
    dirs += [Path(args.out_dir)] if args.out_dir else []
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        tags = (
            f"{'-nockpt' if args.no_activation_checkpointing else ''}{'-plain' if args.plain else ''}"
            f"{'-compile' if args.compile else ''}"
        )
        name = (
            "gpu_check.json"
            if args.strategy == "fsdp" and not tags
            else f"gpu_check-{args.strategy}{tags}.json"
        )
        (d / name).write_text(text)
        print(f"report: {d / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
