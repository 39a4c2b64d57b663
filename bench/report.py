"""The four headline figures (each at the largest size measured), their goals, and bench.md / bench.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

# key: (what it is, comparison, goal)
GOALS = {
    "merge_copy_ratio": ("merge bandwidth / copy bandwidth", ">=", 0.7),
    "eval_forward_ratio": ("Evaluator time / bare forward time (fp32)", "<=", 1.3),
    "eval_lmeval_speedup": ("lm-eval HFLM time / Evaluator time (fp32)", ">=", 10.0),
    "train_plain_ratio": ("Lightning tokens/s / plain loop tokens/s", ">=", 0.9),
    "stream_rss_ratio": ("streaming merge peak RSS / (1.2 x model size + largest tensor)", "<=", 1.0),
    "search_workers_speedup": ("search wall time, 1 worker / 2 workers (same alpha*)", ">=", 1.6),
}


def _largest(rows: list[dict], **match) -> dict | None:
    rows = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return max(rows, key=lambda r: r["params"]) if rows else None


def assemble(
    info,
    quick,
    plan,
    merge_rows,
    eval_rows,
    train_rows,
    scaling_rows,
    check,
    notes,
    sections,
    wall,
    stream_rows=None,
    workers_row=None,
) -> dict:
    m = _largest(merge_rows, threads=max(r["threads"] for r in merge_rows))  # the session's threads
    e = _largest(eval_rows)
    t = _largest(train_rows, precision=plan["train"][-1][1])
    heads = {
        "merge_copy_ratio": (
            m["ratio"],
            (f"{m['size']} ({m['params'] / 1e6:.0f}M params), K={m['K']}, threads={m['threads']}"),
        ),
        "eval_forward_ratio": (e["forward_ratio"], f"{e['size']} ({e['params'] / 1e6:.1f}M params)"),
        "eval_lmeval_speedup": (e.get("lmeval_speedup"), f"{e['size']} ({e['params'] / 1e6:.1f}M params)"),
        "train_plain_ratio": (t["ratio"], f"{t['size']} ({t['params'] / 1e6:.1f}M params), {t['precision']}"),
    }
    st = _largest(stream_rows or [])
    heads["stream_rss_ratio"] = (
        (
            st["rss_goal_ratio"],
            (f"{st['size']} bf16, K={st['K']}: peak RSS {st['rss_model_ratio']:.2f} x model"),
        )
        if st
        else (None, "-")
    )
    w = workers_row
    heads["search_workers_speedup"] = (
        w["speedup"] if w and w["same_alpha"] else None,
        (
            f"{w['setting']}, {w['torch_threads']} torch threads"
            + ("" if w["same_alpha"] else ": alpha* differs")
        )
        if w
        else "-",
    )
    goals = {}
    for key, (what, op, goal) in GOALS.items():
        value, at = heads[key]
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        goals[key] = {"what": what, "at": at, "goal": f"{op} {goal:g}", "met": met}
    if info["loadavg_1min_start"] > 0.5 * info["cores"]:
        notes = notes + [
            (
                f"1-min load average {info['loadavg_1min_start']} on {info['cores']} cores at the start: "
                "other processes were running, absolute times are inflated; the paired ratios hold up "
                "better."
            )
        ]
        if info["torch_threads"] > 1:
            notes = notes + [
                (
                    "With a busy neighbour every multi-threaded torch call can wait a scheduler slice "
                    "for its second thread (milliseconds per call): compare the merge's 1-thread rows, "
                    "or rerun with `BENCH_ARGS=--threads 1`."
                )
            ]
    if info["mergekit"] == "not installed":
        notes = notes + ["mergekit: not installed, comparison skipped"]
    return {
        **{k: v for k, (v, _) in heads.items()},
        "goals": goals,
        "quick": quick,
        "wall_s": round(wall, 1),
        "machine": info,
        "notes": notes,
        "sections": sections,
        "merge": merge_rows,
        "eval": eval_rows,
        "train": train_rows,
        "scaling": scaling_rows,
        "scaling_check": check,
        "streaming": stream_rows or [],
        "workers": [workers_row] if workers_row else [],
    }


# ---------------------------------------------------------------------------------------------- markdown ---
def _fmt(v, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return ", ".join(f"{k} {x:{spec}}" for k, x in v.items())
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec) if spec else str(v)


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> list[str]:
    out = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(k), f) for _, k, f in cols) + " |" for r in rows]
    return out + [""]


def markdown(res: dict) -> str:
    mach = res["machine"]
    lines = [
        f"# MergeMix benchmarks{' (--quick)' if res['quick'] else ''}",
        "",
        (
            f"CPU {mach['cpu']} ({mach['cpu_capability']}), {mach['cores']} cores, {mach['ram_gib']} GiB RAM; "
            f"torch {mach['torch']} with {mach['torch_threads']} threads; transformers {mach['transformers']}, "
            f"pytorch-lightning {mach['pytorch-lightning']}, lm-eval {mach['lm-eval']}, mergekit {mach['mergekit']}, "
            f"Python {mach['python']}. 1-min load average {mach['loadavg_1min_start']} at the start, "
            f"{mach['loadavg_1min_end']} at the end; {res['wall_s']:.0f} s in all."
        ),
        "",
        (
            "Each figure times its two sides back to back in alternating rounds; ratios are medians of the "
            "per-round ratios, times are medians."
        ),
        "",
        "## Headline (largest size measured)",
        "",
    ]
    lines += _table(
        [{"key": f"`{k}`", "value": res[k], **g} for k, g in res["goals"].items()],
        [
            ("figure", "key", ""),
            ("what", "what", ""),
            ("value", "value", ".3g"),
            ("goal", "goal", ""),
            ("met", "met", ""),
            ("at", "at", ""),
        ],
    )
    lines += [
        "## Merge: `ExpertBank.merge_into` vs copy of the same bytes",
        "",
        (
            "Bytes moved = params x 4 x (K + 2): read base and K task vectors, write the model. The copy makes "
            "one call per parameter too, through buffers walked in order beyond the cache."
        ),
        "",
    ]
    lines += _table(
        res["merge"],
        [
            ("size", "size", ""),
            ("params", "params", ",d"),
            ("K", "K", "d"),
            ("threads", "threads", "d"),
            ("GB moved", "gb_moved", ".2f"),
            ("merge s", "merge_s", ".4f"),
            ("copy s", "copy_s", ".4f"),
            ("merge GB/s", "merge_gbps", ".1f"),
            ("copy GB/s", "copy_gbps", ".1f"),
            ("merge / copy", "ratio", ".2f"),
        ],
    )
    lines += [
        "## Candidate evaluation: Evaluator vs bare forward vs lm-eval",
        "",
        (
            "Tasks: prose cloze (one-token choices) and arithmetic multiple choice (multi-token choices). The "
            "Evaluator packs each item's choices into one prefix-tree row (context and shared continuation "
            "prefixes once); `tokens` / `padded` are what its forward passes feed. The bare forward runs "
            "`model(...).logits` over exactly those packed batches (same tokens, tree masks and positions). "
            "lm-eval time is one `simple_evaluate` call (HFLM in memory, local YAML + JSONL tasks, offline, batch "
            "size 64) with the TaskManager built beforehand; `lm-eval in forward s` is the part of it spent inside "
            "HFLM's model calls, over `lm-eval padded` tokens. `acc` compared in fp32."
        ),
        "",
    ]
    lines += _table(
        res["eval"],
        [
            ("size", "size", ""),
            ("params", "params", ",d"),
            ("items", "items", "d"),
            ("rows", "rows", "d"),
            ("batches", "batches", "d"),
            ("tokens", "tokens", "d"),
            ("padded", "padded_tokens", "d"),
            ("Evaluator s", "evaluator_s", ".3f"),
            ("forward s", "forward_s", ".3f"),
            ("Eval / fwd", "forward_ratio", ".2f"),
            ("bf16 Eval / fwd", "forward_ratio_bf16", ".2f"),
            ("lm-eval s", "lm_eval_s", ".2f"),
            ("lm-eval batches", "lm_eval_forward_calls", "d"),
            ("lm-eval padded", "lm_eval_padded_tokens", "d"),
            ("lm-eval in forward s", "lm_eval_forward_s", ".2f"),
            ("lm-eval / Eval", "lmeval_speedup", ".1f"),
            ("bf16 lm-eval / Eval", "lmeval_speedup_bf16", ".1f"),
            ("acc ours", "acc_ours", ".4f"),
            ("acc lm-eval", "acc_lm_eval", ".4f"),
            ("identical", "acc_identical", ""),
        ],
    )
    lines += [
        "## Training: Lightning vs plain torch loop",
        "",
        (
            "Same init, AdamW groups, LR schedule, gradient clipping, precision and batches; warm-up steps "
            "excluded from the timing. `same weights`: both sides end with bit-identical parameters."
        ),
        "",
    ]
    lines += _table(
        res["train"],
        [
            ("size", "size", ""),
            ("params", "params", ",d"),
            ("precision", "precision", ""),
            ("timed steps", "steps", "d"),
            ("tokens/step", "tokens_per_step", "d"),
            ("Lightning tok/s", "lightning_tok_s", ",.0f"),
            ("plain tok/s", "plain_tok_s", ",.0f"),
            ("Lightning / plain", "ratio", ".3f"),
            ("same weights", "same_weights", ""),
        ],
    )
    lines += [
        "## Streaming merge: peak memory of `mergemix merge` on a large checkpoint",
        "",
        (
            "A synthetic bf16 Llama checkpoint (base + K experts as safetensors) merged by `export_merge(stream="
            "True)` in a fresh subprocess; peak RSS from `getrusage` (it includes the interpreter and torch, "
            "`RSS before`). `in-memory GB`: what the ExpertBank path would hold ((K + 2) fp32 models)."
        ),
        "",
    ]
    lines += _table(
        res.get("streaming", []),
        [
            ("size", "size", ""),
            ("params", "params", ",d"),
            ("K", "K", "d"),
            ("model GB", "model_gb", ".2f"),
            ("largest tensor GB", "largest_gb", ".3f"),
            ("merge s", "merge_s", ".1f"),
            ("read GB/s", "read_gbps", ".2f"),
            ("RSS before GB", "rss_before_gb", ".2f"),
            ("peak RSS GB", "rss_peak_gb", ".2f"),
            ("peak / model", "rss_model_ratio", ".2f"),
            ("(peak - before) / model", "rss_merge_ratio", ".2f"),
            ("goal / model", "limit_ratio", ".2f"),
            ("in-memory GB", "in_memory_gb", ".1f"),
        ],
    )
    c = res["scaling_check"]
    lines += [
        "## Search cost scaling",
        "",
        (
            "One candidate = merge K experts + `Suite.evaluate` (bf16 autocast, bootstrap 200) on the tasks "
            "above; N seed candidates cost N candidates (the surrogate fit and search are not included). "
            f"Check: a real loop of {c['N']} candidates ({c['size']}, K={c['K']}) took {c['loop_s']:.2f} s "
            f"against {c['predicted_s']:.2f} s predicted. Plot: `bench_scaling.png`."
        ),
        "",
    ]
    lines += _table(
        res["scaling"],
        [
            ("size", "size", ""),
            ("params", "params", ",d"),
            ("K", "K", "d"),
            ("merge s", "merge_s", ".4f"),
            ("evaluate s", "evaluate_s", ".3f"),
            ("candidate s", "candidate_s", ".3f"),
            ("N=20 s", "N20_s", ".1f"),
            ("N=40 s", "N40_s", ".1f"),
            ("N=80 s", "N80_s", ".1f"),
        ],
    )
    lines += [
        "## Search workers: `search.n_workers` 1 vs 2",
        "",
        (
            "The same search from the cached base and experts with a fresh evaluation cache each time, on one and "
            "on two processes (fanout.py: each on half the torch threads); times include loading experts and "
            "benchmarks."
        ),
        "",
    ]
    lines += _table(
        res.get("workers", []),
        [
            ("setting", "setting", ""),
            ("torch threads", "torch_threads", "d"),
            ("W=1 s", "W1_s", ".1f"),
            ("W=2 s", "W2_s", ".1f"),
            ("W=1 / W=2", "speedup", ".2f"),
            ("same alpha*", "same_alpha", ""),
        ],
    )
    lines += ["## Sections", ""]
    lines += _table(
        res["sections"],
        [("section", "section", ""), ("wall s", "wall_s", ".1f"), ("load at start", "loadavg_1min", ".2f")],
    )
    if res["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in res["notes"]], ""]
    return "\n".join(lines)


def write(res: dict, out: Path) -> None:
    (out / "bench.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    (out / "bench.md").write_text(markdown(res))


def headline(res: dict) -> str:
    return "\n".join(
        f"{k} = {_fmt(res[k], '.3g')} (goal {g['goal']}, met: {g['met']}; {g['at']})"
        for k, g in res["goals"].items()
    )
