"""The paper's tables and figures, reproduced on the embedded testbed (`make reproduce`).

    python experiments/reproduce.py [--size small] [--seeds 0] [--only table2 ...] [hydra overrides...]

Each step is one `mergemix` command run as its own process; every training run and merge score is a cached
artifact, so a rerun (or an interrupted one) redoes only what is missing, and tables are rebuilt from the run
directories. Steps:

    table1_6   `compare` sweep: uniform, RegMix, proxy-training search, MergeMix, each found mixture trained
               -> Table 1 (capabilities of the trained mixtures) and Table 6 (search cost)
    table2     `validate`: rank consistency of merged vs trained models over 12 mixtures
    table3     `transfer`: alpha* found with the `tiny` model used for the larger model's mixture training
    curves     `curves`: two-domain study, merged vs trained over alpha (paper Sec. 4.2)
    landscape  `landscape`: U and each capability over the simplex; specialist mixtures
    theory     `theory`: task-vector cosines, relative effective curvature, merge-vs-mix gap
    hierarchical `hierarchical`: top-down search (coarse groups, then inside each) vs the flat alpha*
    dynamic    `dynamic`: alpha* re-optimised from the checkpoint at half of the mixture run

Runs go to <paths.root>/reproduce/<size>/, the report to reports/reproduce/<size>/README.md with its PNGs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mergemix.artifacts import write_atomic

ROOT = Path(__file__).resolve().parents[1]
SIZE_OVERRIDES = {
    "micro": ["experiment=micro"],  # tests: the micro experiment's own small budgets
    "tiny": ["experiment=reproduce"],
    # small, sized for 2 h on 2 cores (docs/DECISIONS.md, "Reproduction sizes"): as many base tokens
    # as 4 passes over prose allow; 300k-token mixture runs (= an expert's horizon), 2 training seeds
    # per validation mixture; proxy runs of 60k tokens (20 of them = the experts' 1.2M); 5 curve points
    "small": [
        "experiment=reproduce",
        "base.tokens=3500000",
        "mix.tokens=300000",
        "baseline.trial_tokens=60000",
        "validate.seeds=[0,1]",
        "curves.alphas=[0.1,0.3,0.5,0.7,0.9]",
    ],
}
STRATEGIES = "uniform,regmix,proxy,surrogate"
TITLES = {
    "table1_6": "Tables 1 and 6 — mixtures found by each strategy, trained; search cost",
    "table2": "Table 2 — rank consistency of merged vs trained models",
    "table3": "Table 3 — cross-scale transfer of alpha*",
    "curves": "Two-domain study (Sec. 4.2)",
    "landscape": "Landscapes and specialist mixtures",
    "theory": "Theory diagnostics (Sec. 3.3)",
    "hierarchical": "Hierarchical MergeMix (top-down)",
    "dynamic": "Dynamic re-optimisation at half of the mixture run",
}


def commands(size: str, seeds: list[int], runs: Path, extra: list[str]) -> dict[str, list[str]]:
    base = [*SIZE_OVERRIDES[size], f"model={size}", *extra]
    seed_list = ",".join(map(str, seeds))
    steps = {
        "table1_6": [
            "compare",
            "-m",
            f"strategy={STRATEGIES}",
            f"search_seed={seed_list}",
            *base,
            f"hydra.sweep.dir={runs / 'table1_6'}",
        ],
        "table2": ["validate", *base],
        "table3": [
            "transfer",
            "transfer.source_model=tiny" if size != "tiny" else "transfer.source_model=micro",
            f"transfer.target_model={size}",
            *base,
        ],
        "curves": ["curves", *base],
        "landscape": ["landscape", *base],
        "theory": ["theory", *base],
        "hierarchical": ["hierarchical", *base],
        "dynamic": ["dynamic", *base],
    }
    for name, args in steps.items():
        if name != "table1_6":
            args.append(f"paths.run_dir={runs / name}")
    return steps


def run_step(name: str, args: list[str], runs: Path) -> dict:
    log = runs / f"{name}.log"
    print(f"[reproduce] {name}: mergemix {' '.join(args)}  (log: {log})", flush=True)
    t0 = time.time()
    with open(log, "w") as fh:
        rc = subprocess.call(
            [sys.executable, "-m", "mergemix.cli", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    wall = time.time() - t0
    print(
        f"[reproduce] {name}: {'done' if rc == 0 else f'FAILED (exit {rc})'} in {wall / 60:.1f} min",
        flush=True,
    )
    return {"rc": rc, "wall_s": round(wall, 1), "command": relative("mergemix " + " ".join(args))}


def relative(command: str) -> str:
    """A command as a reader reruns it: paths under the project relative to its root."""
    return command.replace(f"{ROOT}/", "")


# ------------------------------------------------------------------------------------------------ report ---
def table1(sweep: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    if not results:
        return "_no results_"
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["strategy"], []).append(r)
    caps = sorted(results[0]["capabilities"])
    names = {
        "uniform": "uniform (token-proportional)",
        "regmix": "RegMix",
        "proxy": "proxy-training search",
        "surrogate": "MergeMix",
    }
    lines = [
        "| strategy | " + " | ".join([*caps, "U (average)"]) + " | mixture (first seed) |",
        "|---" * (len(caps) + 3) + "|",
    ]
    order = [s for s in ("uniform", "regmix", "proxy", "surrogate") if s in by] + sorted(set(by) - set(names))
    for s in order:
        rs = by[s]
        cells = [_mean_std([r["capabilities"][c] for r in rs]) for c in caps] + [
            _mean_std([r["U"] for r in rs])
        ]
        mix = ", ".join(f"{d} {w:.2f}" for d, w in rs[0]["alpha"].items())
        lines.append(f"| {names.get(s, s)} | " + " | ".join(cells) + f" | {mix} |")
    return "\n".join(lines)


def table6(sweep: Path, params: int | None) -> str:
    table = json.loads((sweep / "comparison.json").read_text())
    ours = table.get("surrogate", {}).get("train_tokens") or None
    head = (
        "| strategy | runs x tokens (training) | FLOPs (6ND train + 2ND eval) | evaluations | "
        "training tokens / MergeMix's |"
    )
    lines = [head, "|---|---|---|---|---|"]
    for s, t in sorted(table.items(), key=lambda kv: -kv[1]["train_tokens"]):
        ratio = f"{t['train_tokens'] / ours:.2f}x" if ours and t["train_tokens"] else "—"
        lines.append(
            f"| {s} | {t['train_tokens']:.3g} | {t['flops']:.3g} | {t['evaluations']:.0f} | {ratio} |"
        )
    note = f"Model size: {params:,} parameters. " if params else ""
    return (
        note
        + "MergeMix's training is its K experts; merged-model evaluations are counted in FLOPs but, as in "
        "the paper, not in the training-token ratio.\n\n" + "\n".join(lines)
    )


def _mean_std(xs: list[float]) -> str:
    import numpy as np

    xs = 100 * np.asarray(xs, float)
    return f"{xs.mean():.1f}" if len(xs) == 1 else f"{xs.mean():.1f} ± {xs.std():.1f}"


def embed(run_dir: Path, out: Path, name: str) -> str:
    """A step's Markdown output verbatim and its figures copied next to the report."""
    parts = [p.read_text().strip() for p in sorted(run_dir.glob("*.md"))]
    for png in sorted(run_dir.glob("*.png")):
        shutil.copy2(png, out / f"{name}_{png.name}")
        parts.append(f"![{png.stem}]({name}_{png.name})")
    return "\n\n".join(parts) or "_no output_"


def write_report(size: str, runs: Path, out: Path, status: dict, seeds: list[int]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    info = runs / "info.json"
    params = json.loads(info.read_text())["total_params"] if info.is_file() else None
    total = sum(s["wall_s"] for s in status.values())
    intro = (
        f"Produced by `make reproduce` (`python experiments/reproduce.py --size {size} --seeds "
        f"{' '.join(map(str, seeds))}`); steps of this run took {total / 60:.0f} min in all (cached steps "
        "cost only their loading). Scores are x100 above chance. Each section names the command that made it; "
        "rerun it to refresh one table (cached runs are reused)."
    )
    lines = [f"# The paper's tables on the embedded testbed — `{size}` model", "", intro, ""]
    for name, st in status.items():
        lines += [
            f"## {TITLES[name]}",
            "",
            f"`{relative(st['command'])}` — {st['wall_s'] / 60:.1f} min"
            + ("" if st["rc"] == 0 else f" — **FAILED (exit {st['rc']}), see {name}.log**"),
            "",
        ]
        if st["rc"] != 0:
            continue
        if name == "table1_6":
            sweep = runs / "table1_6"
            lines += [
                "### Table 1 analogue",
                "",
                table1(sweep),
                "",
                "### Table 6 analogue",
                "",
                table6(sweep, params),
                "",
            ]
            if (sweep / "cost_curves.png").is_file():
                shutil.copy2(sweep / "cost_curves.png", out / "cost_curves.png")
                lines += ["![cost curves](cost_curves.png)", ""]
        else:
            lines += [embed(runs / name, out, name), ""]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=sorted(SIZE_OVERRIDES))
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="search seeds of the strategy comparison"
    )
    ap.add_argument(
        "--only", nargs="+", choices=list(TITLES), help="run these steps (the report keeps the rest)"
    )
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    ap.add_argument("--report-dir", help="default: reports/reproduce/<size>")
    ap.add_argument("overrides", nargs="*", help="hydra overrides for every step")
    args = ap.parse_args()
    home = Path(os.environ.get("MERGEMIX_HOME", ROOT / "outputs"))
    runs = home / "reproduce" / args.size
    runs.mkdir(parents=True, exist_ok=True)
    status_path = runs / "status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    steps = commands(args.size, args.seeds, runs, args.overrides)
    if not args.report_only:
        info = subprocess.run(
            [sys.executable, "-m", "mergemix.cli", "info", f"model={args.size}"],
            check=False,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if info.returncode == 0:
            (runs / "info.json").write_text(info.stdout[info.stdout.index("{") :])
        for name in args.only or list(steps):
            done = run_step(name, steps[name], runs)  # other drivers may run other steps at the same time
            status = {**(json.loads(status_path.read_text()) if status_path.is_file() else {}), name: done}
            write_atomic(status_path, json.dumps(status, indent=2))
    report = write_report(
        args.size,
        runs,
        Path(args.report_dir or ROOT / "reports" / "reproduce" / args.size),
        {n: status[n] for n in TITLES if n in status},
        args.seeds,
    )
    print(f"[reproduce] report: {report}")
    failed = [n for n, s in status.items() if s["rc"] != 0]
    if failed:
        raise SystemExit(f"[reproduce] failed steps: {', '.join(failed)} (see their logs in {runs})")


if __name__ == "__main__":
    main()
