"""A paper-scale run planned on paper: the per-GPU memory of expert training under FSDP and of a candidate
evaluation, and the hours of K experts and N candidate evaluations, from the model's shape on the meta device
(nothing is allocated).

    python scripts/gpu_check.py --plan [--gpus 8] [--mfu 0.329] [--expert-tokens N] [--out reports/gpu_check/plan.md]

Memory per GPU (bytes; P parameters, G GPUs, b micro-batch, s sequence length, d hidden size, V vocabulary):
- sharded state (FSDP FULL_SHARD): 16 P / G = fp32 parameters 4, gradients 4, AdamW's two moments 8;
- gathered units (bf16 compute): 2 (R + 2 U) parameters + 2 U gradients, R the root unit (embeddings, LM head,
  final norm; gathered for the whole step), U the largest decoder layer (one computing, one prefetched);
- activations, bf16, per token and layer (a): attention 4 d + 2 d_kv (norm input and output, q, k, v, attention
  output; SDPA keeps no s x s scores); dense MLP 2 d + 4 f (norm input and output, gate, up, silu(gate), product);
  MoE MLP 2 d + 2 E + 2 k d + 4 f_e (k + shared) (router logits in fp32, tokens gathered to and returned from
  their k experts, each expert's gate, up, silu, product). Kept: 2 b s (sum_l a_l + 3 d) without activation
  checkpointing, 2 b s (L d + max_l a_l + 3 d) with it (each layer's input, one layer recomputed);
- loss: the model's own, 14 b s V (bf16 logits 2, fp32 copy 4, log-softmax 4, its gradient 4); chunked (c tokens
  at a time, speed.py): 6 c V + 4 b s d + 4 V d (one chunk's bf16 and fp32 logits, gradient buffers).
Evaluation per GPU: the merged model in bf16 (2 P), or the bank that merges on the GPU: base, K deltas and the
model, (K + 2) P x 2 (bf16) or x 4 (fp32, the ExpertBank of today); plus one batch's forward: 2 B S max_l a_l +
6 B S V (B, S the benchmark batch and length; an upper bound, as the Evaluator computes the LM head only at the
positions it scores).
Hours: training 6 A T K / (G peak MFU), evaluation 2 A E N / (G peak MFU) (A active parameters, T tokens per expert,
E tokens per candidate, one search worker per GPU)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GIB = 2**30
H100_PEAK = 989e12  # dense bf16 FLOP/s (scripts/gpu_check.py's table)
MEASURED_MFU = 0.329  # reports/gpu_check/: llama_1b, one H200, no activation checkpointing


def shape(model_cfg: dict, vocab_size: int) -> dict:
    """The sizes the formulas need, from the configured model built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    from mergemix.models import active_params, count_params, hf_config

    cfg = hf_config(model_cfg, vocab_size)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    layers = list(model.model.layers)
    layer_params = [count_params(layer) for layer in layers]
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    first_dense = getattr(cfg, "first_k_dense_replace", None)
    moe = [first_dense is not None and i >= first_dense for i in range(len(layers))]
    return {
        "name": model_cfg.get("name"),
        "params": count_params(model),
        "active": active_params(model),
        "root": count_params(model) - sum(layer_params),
        "max_layer": max(layer_params),
        "layers": len(layers),
        "moe_layers": moe,
        "d": cfg.hidden_size,
        "d_kv": cfg.num_key_value_heads * head_dim,
        "f": cfg.intermediate_size,
        "f_e": getattr(cfg, "moe_intermediate_size", 0),
        "experts": getattr(cfg, "n_routed_experts", 0),
        "k": getattr(cfg, "num_experts_per_tok", 0),
        "shared": getattr(cfg, "n_shared_experts", 0),
        "vocab": cfg.vocab_size,
    }


def layer_activations(sh: dict, moe: bool) -> int:
    """Elements a decoder layer keeps for its backward pass, per token (the formula above)."""
    d = sh["d"]
    attention = 4 * d + 2 * sh["d_kv"]
    if not moe:
        return attention + 2 * d + 4 * sh["f"]
    return attention + 2 * d + 2 * sh["experts"] + 2 * sh["k"] * d + 4 * sh["f_e"] * (sh["k"] + sh["shared"])


def training_memory(
    sh: dict,
    gpus: int,
    micro_batch: int,
    seq_len: int,
    checkpointing: bool,
    loss_chunk: int | None,
    fsdp: bool = True,
) -> dict:
    """Bytes per GPU of expert training, by part (fsdp=False: one process holding everything, no gathering)."""
    tokens, d, v = micro_batch * seq_len, sh["d"], sh["vocab"]
    acts = [layer_activations(sh, m) for m in sh["moe_layers"]]
    kept = sh["layers"] * d + max(acts) if checkpointing else sum(acts)
    loss = 6 * loss_chunk * v + 4 * tokens * d + 4 * v * d if loss_chunk else 14 * tokens * v
    parts = {
        "state": 16 * sh["params"] / (gpus if fsdp else 1),
        "gathered": 2 * (sh["root"] + 2 * sh["max_layer"]) + 2 * sh["max_layer"] if fsdp else 0,
        "activations": 2 * tokens * (kept + 3 * d),
        "loss": loss,
    }
    return {**parts, "total": sum(parts.values())}


def evaluation_memory(sh: dict, k: int, batch: int, length: int) -> dict:
    """Bytes on one GPU of a candidate evaluation: the model alone or the bank merging on the GPU, plus a batch."""
    tokens = batch * length
    batch_bytes = (
        2 * tokens * max(layer_activations(sh, m) for m in sh["moe_layers"]) + 6 * tokens * sh["vocab"]
    )
    return {
        "merged_bf16": 2 * sh["params"] + batch_bytes,
        "bank_bf16": 2 * (k + 2) * sh["params"] + batch_bytes,
        "bank_fp32": 4 * (k + 2) * sh["params"] + batch_bytes,
        "batch": batch_bytes,
    }


def hours(
    sh: dict,
    experts: int,
    expert_tokens: float,
    candidates: int,
    eval_tokens: float,
    gpus: int,
    mfu: float,
    peak: float = H100_PEAK,
) -> dict:
    rate = gpus * peak * mfu  # useful FLOP/s of the node
    train = 6 * sh["active"] * expert_tokens * experts / rate / 3600
    evaluate = 2 * sh["active"] * eval_tokens * candidates / rate / 3600
    return {"train_h": train, "eval_h": evaluate, "total_h": train + evaluate}


# ------------------------------------------------------------------------------------------------- report ---
def _gib(x: float) -> str:
    return f"{x / GIB:.1f}"


def check_1b(measured: Path) -> list[str]:
    """The formula against the llama_1b memory measured on one GPU (reports/gpu_check/*.json)."""
    from mergemix.cli import compose, to_plain

    rows = []
    for path in sorted(measured.glob("gpu_check*.json")):
        rep = json.loads(path.read_text())
        tr = rep["train"]
        if not tr.get("peak_memory_gib"):
            continue
        cfg = to_plain(compose([f"model={rep['model']}"]))
        sh = shape(cfg["model"], cfg["tokenizer"]["vocab_size"])
        fsdp = rep["strategy"] == "fsdp"
        est = training_memory(
            sh, 1, tr["batch_size"], tr["seq_len"], rep["activation_checkpointing"], None, fsdp
        )
        rows.append(
            f"| {path.name} | {rep['model']}, {rep['strategy']}, checkpointing "
            f"{rep['activation_checkpointing']}, micro-batch {tr['batch_size']} x {tr['seq_len']} | "
            f"{tr['peak_memory_gib']:.3g} | {est['total'] / GIB:.3g} | "
            f"{est['total'] / GIB / tr['peak_memory_gib']:.2f} |"
        )
    return rows


def plan(
    models: list[str],
    gpus: int,
    mfu: float,
    expert_tokens: float | None,
    candidates: int,
    eval_tokens: float,
    measured: Path | None,
    command: str,
) -> str:
    from mergemix.cli import compose, to_plain

    lines = [
        "# Paper-scale plan (computed, not measured)",
        "",
        (
            f"Generated by `{command}`: every figure below is "
            "arithmetic on the configured shapes (mergemix/plan.py states the formulas); the models are built on "
            "the meta device. Trainer settings are trainer=fsdp's (FULL_SHARD, bf16, chunked loss). The MFU "
            f"assumed ({100 * mfu:.1f}%) counts active parameters; the default is the dense 1B's measured MFU, and an "
            "MoE's small expert matrices and routing usually reach less: read the hours as a lower bound."
        ),
        "",
    ]
    for name in models:
        cfg = to_plain(compose([f"model={name}", "trainer=fsdp"]))
        m, tr = cfg["model"], cfg["trainer"]
        sh = shape(m, cfg["tokenizer"]["vocab_size"])
        k = len(cfg["domains"]["sources"])
        micro = int(tr.get("micro_batch_size") or max(1, m["batch_size"] // gpus))
        chunk = tr.get("chunked_loss")
        tokens = float(expert_tokens or cfg["experts"]["tokens"])
        lines += [
            (
                f"## {name}: {sh['params'] / 1e9:.2f}B parameters, {sh['active'] / 1e9:.2f}B active, "
                f"{gpus} x H100 80 GB"
            ),
            "",
            (
                f"Micro-batch {micro} x {m['seq_len']} tokens per GPU, loss chunk {chunk}; K = {k} experts "
                f"(the configured domains)."
                + (
                    f" model.batch_size {m['batch_size']} is less than {gpus} GPUs: "
                    f"train with model.batch_size >= {gpus}; this plan assumes one sequence per GPU."
                    if m["batch_size"] < gpus
                    else ""
                )
            ),
            "",
            ("| expert training, GiB per GPU | state | gathered | activations | loss | total |"),
            "|---|---|---|---|---|---|",
        ]
        for ckpt in (False, True):
            mem = training_memory(sh, gpus, micro, m["seq_len"], ckpt, chunk)
            lines.append(
                f"| activation checkpointing {'on' if ckpt else 'off'} | "
                + " | ".join(_gib(mem[p]) for p in ("state", "gathered", "activations", "loss", "total"))
                + " |"
            )
        b = cfg["benchmarks"]
        ev = evaluation_memory(sh, k, int(b["batch_size"]), int(b["max_length"]))
        h = hours(sh, k, tokens, candidates, eval_tokens, gpus, mfu)
        per_billion = hours(sh, 1, 1e9, 0, 0, gpus, mfu)["train_h"]
        lines += [
            "",
            (
                f"Candidate evaluation on one GPU (batch {b['batch_size']} x {b['max_length']} tokens: "
                f"{_gib(ev['batch'])} GiB at most): merged model in bf16 {_gib(ev['merged_bf16'])} GiB; the bank "
                f"merging on the GPU {_gib(ev['bank_bf16'])} GiB in bf16, {_gib(ev['bank_fp32'])} GiB in fp32."
            ),
            "",
            (
                f"Hours on the node at MFU {100 * mfu:.1f}%: {per_billion:.3g} h per expert and billion tokens; "
                f"{k} experts x {tokens:,.0f} tokens {h['train_h']:.3g} h; {candidates} candidates x "
                f"{eval_tokens:,.0f} tokens {h['eval_h']:.3g} h (one search worker per GPU); "
                f"{h['total_h']:.3g} h in all."
            ),
            "",
        ]
    if measured is not None:
        rows = check_1b(measured)
        if rows:
            lines += [
                "## The formula against the measurement",
                "",
                f"The GPU check's runs on one GPU ({measured}), the model's own loss:",
                "",
                "| report | run | measured peak GiB | formula GiB | formula / measured |",
                "|---|---|---|---|---|",
                *rows,
                "",
                (
                    "Peak memory as torch's allocator reports it (max_memory_allocated); the formula leaves out "
                    "the allocator's fragmentation and transient buffers."
                ),
                "",
            ]
    return "\n".join(lines)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["moe_8b", "moe_16b"])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument(
        "--mfu", type=float, default=MEASURED_MFU, help="assumed MFU (default: the measured 1B's)"
    )
    ap.add_argument(
        "--expert-tokens", type=float, default=None, help="tokens per expert (default: experts.tokens)"
    )
    ap.add_argument("--candidates", type=int, default=40)
    ap.add_argument("--eval-tokens", type=float, default=1e6, help="benchmark tokens per candidate")
    ap.add_argument("--measured", type=Path, default=Path("reports/gpu_check"))
    ap.add_argument("--out", type=Path, default=None, help="write the plan here (markdown)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    command = " ".join(["python scripts/gpu_check.py --plan", *argv])
    text = plan(
        args.models,
        args.gpus,
        args.mfu,
        args.expert_tokens,
        args.candidates,
        args.eval_tokens,
        args.measured if args.measured.is_dir() else None,
        command.strip(),
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return text
