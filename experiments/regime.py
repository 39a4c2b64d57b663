"""Regime study: where do merged models rank mixtures like trained ones? `mergemix validate` under several expert
and mixture recipes, each with two training seeds (the noise ceiling), summarised side by side.

    python experiments/regime.py [--testbed embedded|files] [--only NAME ...] [--report-only] [overrides...]

Regimes vary the expert horizon, the expert learning rate and the mixture horizon (the default: experts 300k tokens
at LR 3e-4, mixtures 800k tokens). Runs go to <paths.root>/regime[-files]/<name>/
(trained mixtures and merges are cached artifacts, shared between regimes where their inputs agree); the summary to
reports/validation/regime[-files].{md,json,png}. `--testbed files` runs the same regimes on the file testbed
(experiments/testbed_files.py, declared through --config-dir as a user would), where the recipe was not chosen."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGIMES = {  # name: (what, overrides); the default recipe is experts 300k tokens at LR 3e-4, mixtures 800k
    "e50k": ("experts 50k tokens, LR 1e-3", ["experts.tokens=50000", "experts.lr=1e-3"]),
    "e100k": ("experts 100k tokens, LR 1e-3", ["experts.tokens=100000", "experts.lr=1e-3"]),
    "e300k": ("experts 300k tokens, LR 1e-3", ["experts.tokens=300000", "experts.lr=1e-3"]),
    "e800k": (
        "experts 800k tokens (= the mixture horizon), LR 1e-3",
        ["experts.tokens=800000", "experts.lr=1e-3"],
    ),
    "e300k_lr3e-4": ("experts 300k tokens, LR 3e-4 (the default)", []),
    "e300k_lr3e-3": ("experts 300k tokens, LR 3e-3", ["experts.tokens=300000", "experts.lr=3e-3"]),
    "e300k_mix300k": (
        "experts 300k tokens, LR 1e-3, mixtures 300k tokens",
        ["experts.tokens=300000", "experts.lr=1e-3", "mix.tokens=300000"],
    ),
}


def testbed_args(testbed: str, home: Path) -> list[str]:
    """The CLI arguments that select a testbed (none for the embedded one)."""
    if testbed == "embedded":
        return []
    sys.path.insert(0, str(ROOT / "experiments"))
    import testbed_files

    return [
        "--config-dir",
        str(testbed_files.ensure(home / "testbeds" / "files")),
        "domains=files4",
        "benchmarks=files4",
    ]


def run(name: str, overrides: list[str], runs: Path) -> int:
    log = runs / f"{name}.log"
    print(f"[regime] {name}: {REGIMES[name][0]} (log: {log})", flush=True)
    with open(log, "w") as fh:
        return subprocess.call(
            [
                sys.executable,
                "-m",
                "mergemix.cli",
                "validate",
                *REGIMES[name][1],
                *overrides,
                f"paths.run_dir={runs / name}",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


def split_config_dir(args: list[str]) -> tuple[list[str], str | None]:
    """(overrides, config dir) of CLI arguments that may hold `--config-dir DIR`."""
    if "--config-dir" not in args:
        return list(args), None
    i = args.index("--config-dir")
    return [*args[:i], *args[i + 2 :]], args[i + 1]


def expert_step_sum(overrides: list[str]) -> float:
    """Σ η over an expert's optimizer steps (LR x steps; warm-up counted at its ramp): how far the recipe moves an
    expert, the expansion parameter ηT of the paper's second-order analysis."""
    from mergemix.cli import compose, to_plain
    from mergemix.training import lr_factor

    cfg = to_plain(compose(*split_config_dir(list(overrides))))
    e, m = cfg["experts"], cfg["model"]
    steps = int(e["tokens"]) // (m["seq_len"] * m["batch_size"])
    return float(e["lr"]) * sum(
        lr_factor(t, steps, int(e["warmup_steps"]), e["schedule"], 0.2, 0.1) for t in range(steps)
    )


def summarise(runs: Path, overrides: list[str] = ()) -> dict:
    """{regime: {"eta_T", metric: {series: (rho, lo, hi, ceiling), "merged_U_range", "trained_U_range"}}}"""
    out = {}
    for name in REGIMES:
        path = runs / name / "validation.json"
        if not path.is_file():
            continue
        v = json.loads(path.read_text())
        row = {
            "what": REGIMES[name][0],
            "seeds": v["training_seeds"],
            "n": len(v["mixtures"]),
            "eta_T": expert_step_sum([*REGIMES[name][1], *overrides]),
            "mix_tokens": v["mix_tokens"],
        }
        for m, block in v["by_metric"].items():
            rho, nc = block["spearman"], block["noise_ceiling"]

            def at(b, s):
                return (
                    (b["overall"], *b["interval"]["overall"])
                    if s == "overall"
                    else (b["capabilities"][s], *b["interval"]["capabilities"][s])
                )

            row[m] = {
                s: [*at(rho, s), at(nc["spearman"], s)[0] if nc else None]
                for s in ["overall", *sorted(rho["capabilities"])]
            }
            scores = block["scores"]
            row[m]["merged_U_range"] = [min(scores["merged"]["overall"]), max(scores["merged"]["overall"])]
            trained = [u for t in scores["trained"].values() for u in t["overall"]]
            row[m]["trained_U_range"] = [min(trained), max(trained)]
        out[name] = row
    return out


def markdown(table: dict, metric: str) -> str:
    intro = (
        f"Spearman ρ of merged vs trained over the same mixtures under `{metric}`, mean over training seeds "
        "[95% bootstrap interval]; in brackets after it, the noise ceiling (trained seed vs trained seed)."
    )
    series = [s for s in next(iter(table.values()))[metric] if not s.endswith("_range")]
    lines = [
        intro,
        "",
        "| regime | expert Σ η | "
        + " | ".join("U" if s == "overall" else s for s in series)
        + " | merged U range | trained U range |",
        "|---" * (len(series) + 4) + "|",
    ]
    for row in table.values():
        r = row[metric]
        cells = []
        for s in series:
            rho, lo, hi, nc = r[s]
            cells.append(f"{rho:.2f} [{lo:.2f}, {hi:.2f}] ({'—' if nc is None else f'{nc:.2f}'})")
        lines.append(
            f"| {row['what']} | {row['eta_T']:.3f} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(
                f"{100 * a:.1f}–{100 * b:.1f}" for a, b in (r["merged_U_range"], r["trained_U_range"])
            )
            + " |"
        )
    return "\n".join(lines)


def dodge(table: dict) -> dict[str, float]:
    """Each regime's x (Σ η), regimes at the same Σ η spread side by side (log scale) instead of on top."""
    same: dict[float, list[str]] = {}
    for name, row in table.items():
        same.setdefault(round(row["eta_T"], 6), []).append(name)
    return {
        n: eta * 10 ** (0.03 * (j - (len(ns) - 1) / 2)) for eta, ns in same.items() for j, n in enumerate(ns)
    }


def draw(table: dict):
    """ρ of U against how far the experts move (Σ η), for both metrics; the noise ceiling dashed; one colour per
    regime, named in the legend. Returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    xs = dodge(table)
    for ax, metric in zip(axes, ("prob", "acc")):
        for i, (name, row) in enumerate(table.items()):
            rho, lo, hi, ceiling = row[metric]["overall"]
            x, marker = xs[name], "o" if row["mix_tokens"] == 800_000 else "s"
            ax.errorbar(
                x,
                rho,
                yerr=[[rho - lo], [hi - rho]],
                fmt=marker,
                capsize=3,
                color=f"C{i}",
                label=f"{name}: {row['what']}",
            )
            if ceiling is not None:
                ax.hlines(ceiling, x * 0.94, x * 1.06, colors=f"C{i}", linestyles="--", lw=1)
        ax.axhline(0.9, lw=0.6, color="k", ls=":")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([0.01, 0.02, 0.05, 0.1, 0.2, 0.5], ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5"])
        ax.set_xlabel("expert Σ η (LR x steps)")
        ax.set_title(f"U under {metric}: merged vs trained ρ (95% CI)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Spearman ρ")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle(
        "Merge-vs-train rank consistency by expert regime (dashes: noise ceiling; squares: 300k-token "
        "mixtures)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.03 + 0.035 * ((len(table) + 1) // 2), 1, 1))
    return fig


def plot(table: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = draw(table)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testbed", choices=["embedded", "files"], default="embedded")
    ap.add_argument("--only", nargs="+", choices=list(REGIMES))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--report-dir", default=str(ROOT / "reports" / "validation"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    home = Path(os.environ.get("MERGEMIX_HOME", ROOT / "outputs"))
    suffix = "" if args.testbed == "embedded" else f"-{args.testbed}"
    runs = home / f"regime{suffix}"
    runs.mkdir(parents=True, exist_ok=True)
    overrides = [*testbed_args(args.testbed, home), *args.overrides]
    failed = [] if args.report_only else [n for n in args.only or REGIMES if run(n, overrides, runs)]
    table = summarise(runs, overrides)
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"regime{suffix}.json").write_text(json.dumps(table, indent=2))
    (out / f"regime{suffix}.md").write_text(
        "\n\n".join(
            f"### `{m}`\n\n{markdown(table, m)}"
            for m in ("prob", "acc")
            if table and m in next(iter(table.values()))
        )
        + "\n"
    )
    if table:
        plot(table, out / f"regime{suffix}.png")
    print((out / f"regime{suffix}.md").read_text())
    if failed:
        raise SystemExit(f"[regime] failed: {', '.join(failed)} (logs in {runs})")


if __name__ == "__main__":
    main()
