"""Table 1 analogue: MergeMix vs the token-proportional mixture, both really trained, over several seeds.

    python experiments/table1.py [--seeds 0 1 2] [hydra overrides...]

Writes reports/table1.md and reports/table1.json (per seed and mean ± std of U and of each capability)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mergemix.cli import _quiet, compose, to_plain
from mergemix.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="reports")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    _quiet()
    runs = {}
    for seed in args.seeds:
        cfg = to_plain(compose([*args.overrides, f"seed={seed}", "run_name=table1"]))
        run_dir = Path(cfg["paths"]["root"]) / "runs" / "table1" / f"seed{seed}"
        runs[seed] = Pipeline(cfg, run_dir).run()
    rows = ["uniform (trained)", "mergemix (trained)", "mergemix (merge)", "base"]
    caps = sorted(runs[args.seeds[0]]["rows"]["base"]["capabilities"])
    table = {r: {c: [100 * runs[s]["rows"][r]["capabilities"][c] for s in args.seeds] for c in caps} for r in rows}
    for r in rows:
        table[r]["U"] = [100 * runs[s]["rows"][r]["U"] for s in args.seeds]
    lines = [f"Seeds {args.seeds}; overrides {args.overrides or 'none'}. Mean ± std over seeds, x100 above chance.",
             "", "| mixture | " + " | ".join([*caps, "U"]) + " |", "|---" * (len(caps) + 2) + "|"]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(f"{np.mean(v):.1f} ± {np.std(v):.1f}" for v in table[r].values()) + " |")
    wins = sum(runs[s]["mergemix_vs_uniform"]["U_diff"] > 0 for s in args.seeds)
    lines += ["", f"MergeMix above uniform in {wins}/{len(args.seeds)} seeds.",
              "alpha* per seed: " + "; ".join(f"{s}: {runs[s]['alpha_star']}" for s in args.seeds)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table1.md").write_text("\n".join(lines) + "\n")
    (out / "table1.json").write_text(json.dumps({"seeds": args.seeds, "table": table,
                                                 "alpha_star": {s: runs[s]["alpha_star"] for s in args.seeds}},
                                                indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
