"""`make bench`: merge, candidate evaluation, training and search scaling, each against its baseline in one run.

    .venv/bin/python bench/bench.py [--quick] [--threads N] [--out reports]

Writes <out>/bench.md, <out>/bench.json and <out>/bench_scaling.png. Figures are ratios of the two sides timed
back to back in alternating rounds (medians), so they hold up on a busy machine better than absolute times."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `bench` and `mergemix`
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
    "WANDB_MODE": "disabled",
}.items():
    os.environ.setdefault(key, value)

import torch  # noqa: E402 - after the offline environment above

from bench import common, evaluate, merge, report, scaling, streaming, train, workers  # noqa: E402

# What each mode measures: sizes, items per task, training steps, rounds.
PLANS = {
    "quick": {
        "eval_sizes": ["tiny"],
        "items": 50,
        "train": [("tiny", "bf16-mixed")],
        "steps": 8,
        "warmup": 2,
        "scaling_sizes": ["micro", "tiny"],
        "repeats": 3,
        "eval_repeats": 2,
        "train_repeats": 2,
        "worker_repeats": 2,
    },
    "full": {
        "eval_sizes": ["tiny", "small"],
        "items": 200,
        "train": [("tiny", "bf16-mixed"), ("small", "bf16-mixed")],
        "steps": 30,
        "warmup": 3,
        "scaling_sizes": ["micro", "tiny", "small"],
        "repeats": 5,
        "eval_repeats": 3,
        "train_repeats": 3,
        "worker_repeats": 3,
    },
}


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in (
        "pytorch_lightning",
        "lightning",
        "lightning.pytorch",
        "lightning_fabric",
        "lm-eval",
        "lm_eval",
        "transformers",
        "datasets",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def section(name: str, fn):
    print(f"[bench] {name}", flush=True)
    t0, load0 = time.time(), os.getloadavg()[0]
    out = fn()
    return out, {"section": name, "wall_s": round(time.time() - t0, 1), "loadavg_1min": round(load0, 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes only: a smoke check (< 2 min)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    ap.add_argument("--out", type=Path, default=common.ROOT / "reports")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    plan = PLANS["quick" if args.quick else "full"]
    t0, info, sections = time.time(), common.machine(), []
    with tempfile.TemporaryDirectory(prefix="mergemix-bench-") as tmp:
        work = Path(tmp)
        (tok, tasks), s = section(
            "tokenizer and tasks", lambda: common.tokenizer_and_tasks(work, plan["items"])
        )
        sections.append(s)
        (merge_rows, merge_notes), s = section("merge", lambda: merge.run(args.quick, plan["repeats"]))
        sections.append(s)
        (stream_rows, stream_notes), s = section("streaming merge", lambda: streaming.run(args.quick, work))
        sections.append(s)
        (eval_rows, eval_notes), s = section(
            "evaluation", lambda: evaluate.run(plan["eval_sizes"], tok, tasks, work, plan["eval_repeats"])
        )
        sections.append(s)
        train_rows, s = section(
            "training", lambda: train.run(plan["train"], plan["steps"], plan["warmup"], plan["train_repeats"])
        )
        sections.append(s)
        (scaling_rows, check), s = section(
            "scaling", lambda: scaling.run(plan["scaling_sizes"], tok, tasks, plan["repeats"])
        )
        sections.append(s)
        (workers_row, worker_notes), s = section(
            "search workers", lambda: workers.run(args.quick, work / "workers", plan["worker_repeats"])
        )
        sections.append(s)
    args.out.mkdir(parents=True, exist_ok=True)
    scaling.plot(scaling_rows, args.out / "bench_scaling.png")
    info["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    result = report.assemble(
        info,
        args.quick,
        plan,
        merge_rows,
        eval_rows,
        train_rows,
        scaling_rows,
        check,
        merge_notes + eval_notes + stream_notes + worker_notes,
        sections,
        time.time() - t0,
        stream_rows=stream_rows,
        workers_row=workers_row,
    )
    report.write(result, args.out)
    print(report.headline(result), flush=True)
    return result


if __name__ == "__main__":
    main()
