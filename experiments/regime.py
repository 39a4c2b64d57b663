"""Regime study: where do merged models rank mixtures like trained ones? `mergemix validate` under several expert
and mixture recipes, each with two training seeds (the noise ceiling), summarised side by side.

    python experiments/regime.py [--only NAME ...] [--report-only] [hydra overrides for every regime...]

Regimes vary the expert horizon, the expert learning rate and the mixture horizon (the default: experts 100k tokens
at LR 1e-3, mixtures 800k tokens). Runs go to <paths.root>/regime/<name>/
(trained mixtures and merges are cached artifacts, shared between regimes where their inputs agree); the summary to
reports/validation/regime.{md,json,png}."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REGIMES = {  # name: (what, overrides); the default recipe is experts 100k tokens at LR 1e-3, mixtures 800k
    "e50k": ("experts 50k tokens", ["experts.tokens=50000"]),
    "e100k": ("experts 100k tokens (the default)", []),
    "e300k": ("experts 300k tokens", ["experts.tokens=300000"]),
    "e800k": ("experts 800k tokens (= the mixture horizon)", ["experts.tokens=800000"]),
    "e300k_lr3e-4": ("experts 300k tokens, LR 3e-4", ["experts.tokens=300000", "experts.lr=3e-4"]),
    "e300k_lr3e-3": ("experts 300k tokens, LR 3e-3", ["experts.tokens=300000", "experts.lr=3e-3"]),
    "e300k_mix300k": ("experts 300k tokens, mixtures 300k tokens", ["experts.tokens=300000", "mix.tokens=300000"]),
}
SERIES = ("overall", "code", "instruct", "language", "math")


def run(name: str, overrides: list[str], runs: Path) -> int:
    log = runs / f"{name}.log"
    print(f"[regime] {name}: {REGIMES[name][0]} (log: {log})", flush=True)
    with open(log, "w") as fh:
        return subprocess.call([sys.executable, "-m", "mergemix.cli", "validate", *REGIMES[name][1], *overrides,
                                f"paths.run_dir={runs / name}"], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})


def summarise(runs: Path) -> dict:
    """{regime: {metric: {series: (rho, lo, hi, ceiling)}, "merged_U_range", "trained_U_range"}}"""
    out = {}
    for name in REGIMES:
        path = runs / name / "validation.json"
        if not path.is_file():
            continue
        v = json.loads(path.read_text())
        row = {"what": REGIMES[name][0], "seeds": v["training_seeds"], "n": len(v["mixtures"])}
        for m, block in v["by_metric"].items():
            rho, nc = block["spearman"], block["noise_ceiling"]

            def at(b, s):
                return (b["overall"], *b["interval"]["overall"]) if s == "overall" else \
                    (b["capabilities"][s], *b["interval"]["capabilities"][s])

            row[m] = {s: [*at(rho, s), at(nc["spearman"], s)[0] if nc else None] for s in SERIES
                      if s == "overall" or s in rho["capabilities"]}
            scores = block["scores"]
            row[m]["merged_U_range"] = [min(scores["merged"]["overall"]), max(scores["merged"]["overall"])]
            trained = [u for t in scores["trained"].values() for u in t["overall"]]
            row[m]["trained_U_range"] = [min(trained), max(trained)]
        out[name] = row
    return out


def markdown(table: dict, metric: str) -> str:
    intro = (f"Spearman ρ of merged vs trained over the same mixtures under `{metric}`, mean over training seeds "
             "[95% bootstrap interval]; in brackets after it, the noise ceiling (trained seed vs trained seed).")
    lines = [intro, "",
             "| regime | " + " | ".join("U" if s == "overall" else s for s in SERIES) + " | merged U range | "
             "trained U range |", "|---" * (len(SERIES) + 3) + "|"]
    for row in table.values():
        r = row[metric]
        cells = []
        for s in SERIES:
            rho, lo, hi, nc = r[s]
            cells.append(f"{rho:.2f} [{lo:.2f}, {hi:.2f}] ({'—' if nc is None else f'{nc:.2f}'})")
        lines.append(f"| {row['what']} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{100 * a:.1f}–{100 * b:.1f}" for a, b in (r["merged_U_range"],
                                                                            r["trained_U_range"])) + " |")
    return "\n".join(lines)


def plot(table: dict, path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(1, len(table))
    for i, (name, row) in enumerate(table.items()):
        r = row[metric]
        x = np.arange(len(SERIES)) + i * width
        rho = np.array([r[s][0] for s in SERIES])
        err = np.array([[r[s][0] - r[s][1], r[s][2] - r[s][0]] for s in SERIES]).T
        ax.bar(x, rho, width, yerr=err, capsize=2, label=name)
        ax.scatter(x, [r[s][3] if r[s][3] is not None else np.nan for s in SERIES], marker="_", s=120,
                   color="k", zorder=3)
    ax.axhline(0.9, ls="--", lw=0.8, color="grey")
    ax.set_xticks(np.arange(len(SERIES)) + 0.4 - width / 2, ["U" if s == "overall" else s for s in SERIES])
    ax.set_ylabel(f"Spearman ρ merged vs trained ({metric})")
    ax.set_title("bars: merged vs trained (95% CI); black ticks: trained seed vs seed; dashed: the paper's 0.9",
                 fontsize=8)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(REGIMES))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--report-dir", default=str(ROOT / "reports" / "validation"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    runs = Path(os.environ.get("MERGEMIX_HOME", ROOT / "outputs")) / "regime"
    runs.mkdir(parents=True, exist_ok=True)
    failed = [] if args.report_only else [n for n in args.only or REGIMES if run(n, args.overrides, runs)]
    table = summarise(runs)
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "regime.json").write_text(json.dumps(table, indent=2))
    (out / "regime.md").write_text("\n\n".join(f"### `{m}`\n\n{markdown(table, m)}" for m in ("prob", "acc")
                                               if table and m in next(iter(table.values()))) + "\n")
    if table:
        plot(table, out / "regime.png", "prob")
    print((out / "regime.md").read_text())
    if failed:
        raise SystemExit(f"[regime] failed: {', '.join(failed)} (logs in {runs})")


if __name__ == "__main__":
    main()
