"""Stage 9, report: a run's Table-1-style table (Markdown, CSV, PNG), its calibration checks and verdict,
summary.json, and the lines the run prints. The studies (analysis/) report with these helpers too."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mergemix.artifacts import write_atomic
from mergemix.benchmarks.suite import paired_gap
from mergemix.log import log
from mergemix.stages.verdict import verdict


def expert_gains(rows: dict[str, dict], cap_domain: dict[str, str | None], capabilities: dict[str, list[str]],
                 min_sigmas: float = 3.0) -> dict:
    """Each expert's gain on its own capability over the base, with paired-bootstrap noise over the items."""
    base, gains = rows["base"], {}
    for cap, domain in sorted(cap_domain.items()):
        if not domain or f"expert:{domain}" not in rows:
            continue
        exp = rows[f"expert:{domain}"]
        gap = paired_gap(exp, base, capabilities)
        noise, gain = gap["capabilities_std"][cap], gap["capabilities"][cap]
        gains[cap] = {"domain": domain, "base": base["capabilities"][cap], "expert": exp["capabilities"][cap],
                      "gain": gain, "noise_std": noise, "sigmas": gain / max(noise, 1e-12),
                      "clear": bool(gain > min_sigmas * noise)}
    return gains


def tradeoff(seeds_csv: Path, names: list[str]) -> dict:
    """Do the capabilities trade off? True when the best evaluated merge is interior, not a vertex."""
    from mergemix.search.run import read_trials

    alphas, columns = read_trials(seeds_csv, names)
    u = columns["U"]
    vertex = alphas.max(axis=1) > 1 - 1e-9
    return {"best_vertex_U": float(u[vertex].max()) if vertex.any() else None,
            "best_interior_U": float(u[~vertex].max()),
            "best_is_interior": bool(not vertex.any() or u[~vertex].max() > u[vertex].max()),
            "U_spread_std": float(u.std())}


def calibration(rows: dict[str, dict], cap_domain: dict[str, str | None], capabilities: dict[str, list[str]],
                seeds_csv: Path, names: list[str], min_sigmas: float = 3.0) -> dict:
    """The testbed is informative only if each expert clearly lifts its own capability, the capabilities trade
    off and differences exceed the evaluation noise."""
    gains = expert_gains(rows, cap_domain, capabilities, min_sigmas)
    return {"expert_gains": gains, "all_experts_clear": all(g["clear"] for g in gains.values()),
            "tradeoff": tradeoff(seeds_csv, names), "responsiveness": responsiveness(seeds_csv, names, rows["base"])}


def responsiveness(seeds_csv: Path, names: list[str], base: dict, min_ratio: float = 1.0) -> dict:
    """Does each capability respond to the mixture? Its spread over the seed merges (std) against its item noise
    (the base's bootstrap std): a capability whose merged scores move less than the noise cannot rank mixtures,
    and in U it only adds noise."""
    from mergemix.search.run import read_trials

    _, columns = read_trials(seeds_csv, names)
    out = {}
    for cap, noise in (base.get("capabilities_std") or {}).items():
        if cap not in columns:
            continue
        spread = float(np.std(columns[cap]))
        out[cap] = {"merged_spread_std": spread, "item_noise_std": float(noise),
                    "ratio": spread / max(float(noise), 1e-12), "responsive": bool(spread > min_ratio * noise)}
    return out


def u_check(seeds_csv: Path, names: list[str], base: dict, lgbm: dict, seed: int) -> dict:
    """Is a search worth it here? Merged U's spread over the seed merges against its item noise (the base's
    bootstrap std), and how well a surrogate of U ranks unseen merges (5-fold CV Spearman)."""
    from mergemix.search.run import cross_validated_spearman, read_trials

    alphas, columns = read_trials(seeds_csv, names)
    spread, noise = float(np.std(columns["U"])), float(base["U_std"])
    cv = cross_validated_spearman(alphas, {"U": columns["U"]}, lgbm, seed)["U"] if len(alphas) >= 10 else None
    return {"merged_spread_std": spread, "item_noise_std": noise, "ratio": spread / max(noise, 1e-12),
            "cv_spearman": cv}


def log_gains(gains: dict) -> None:
    for cap, g in gains.items():
        log.info(f"  expert:{g['domain']:<6} lifts {cap:<9} {100 * g['base']:6.1f} -> {100 * g['expert']:6.1f}"
              f"  ({g['sigmas']:+.1f} sigma){'' if g['clear'] else '  NOT CLEAR'}")


def margin(a: dict, b: dict, capabilities: dict[str, list[str]]) -> dict:
    """U(a) - U(b) on the same benchmark items, with its paired-bootstrap standard deviation."""
    gap = paired_gap(a, b, capabilities)
    return {"U_diff": gap["U"], "noise_std": gap["U_std"], "sigmas": gap["U"] / max(gap["U_std"], 1e-12),
            "capabilities_diff": gap["capabilities"], "capabilities_std": gap["capabilities_std"]}


def _header_and_values(rows: dict[str, dict]) -> tuple[list[str], dict[str, list[float]]]:
    caps = sorted(next(iter(rows.values()))["capabilities"])
    return ["model", *caps, "U", "U_std"], {name: [100 * r["capabilities"][c] for c in caps] + [100 * r["U"],
                                                   100 * r["U_std"]] for name, r in rows.items()}


def score_table(rows: dict[str, dict]) -> str:
    """Markdown: one row per model, its capability scores, U and U_std (x100)."""
    header, values = _header_and_values(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + " |" for name, vals in values.items()]
    return "\n".join(lines)


def write_table(run_dir: Path, rows: dict[str, dict]) -> str:
    header, values = _header_and_values(rows)
    with open(run_dir / "table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows([name, *(round(v, 3) for v in vals)] for name, vals in values.items())
    table = score_table(rows)
    write_atomic(run_dir / "table.md", "Capability scores, normalised against chance (x100); U = macro-average.\n\n"
                 + table + "\n")
    plot_scores(run_dir / "table.png", rows)
    return table


def plot_scores(path: Path, rows: dict[str, dict]) -> None:
    import matplotlib.pyplot as plt

    n_cols = len(next(iter(rows.values()))["capabilities"]) + 1
    fig, ax = plt.subplots(figsize=(1.6 * n_cols + 3, 4))
    draw_scores(ax, rows)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_scores(ax, rows: dict[str, dict]) -> None:
    """Grouped bars of each row's capability scores and U, with their bootstrap std, into `ax`."""
    caps = sorted(next(iter(rows.values()))["capabilities"])
    cols = [*caps, "U"]
    width = 0.8 / len(rows)
    for i, (name, r) in enumerate(rows.items()):
        vals = [100 * r["capabilities"][c] for c in caps] + [100 * r["U"]]
        errs = [100 * r["capabilities_std"][c] for c in caps] + [100 * r["U_std"]]
        ax.bar(np.arange(len(cols)) + i * width, vals, width, yerr=errs, label=name, capsize=2)
    ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, cols)
    ax.set_ylabel("score above chance (x100)")
    ax.set_xlabel("capability (U: their macro-average)")
    ax.set_title("Capability scores per model", fontsize=10)
    ax.legend(fontsize=7, ncol=2)


def write_summary(run_dir: Path, summary: dict) -> None:
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=float))


# ------------------------------------------------------------------------------------------- the run ---
@dataclass(frozen=True)
class RunResults:
    rows: dict[str, dict]  # scores: base, expert:<domain>, uniform (trained), mergemix (trained), mergemix (merge)
    search: dict  # the search's search.json
    search_dir: Path
    domain_names: list[str]
    uniform: dict[str, float]  # the token-proportional mixture
    token_counts: dict[str, int]
    artifacts: dict  # the paths summary.json names
    lgbm: dict  # the surrogate's settings (search.lgbm), for the U-level check
    seed: int  # the search seed


def report_run(run_dir: Path, results: RunResults, capabilities: dict[str, list[str]],
               cap_domain: dict[str, str | None]) -> dict:
    """mixture.yaml, seeds.csv, table.{md,csv,png} and summary.json in the run directory; the summary."""
    from mergemix.search.run import copy_trials

    rows, search, names = results.rows, results.search, results.domain_names
    shutil.copy2(results.search_dir / "mixture.yaml", run_dir / "mixture.yaml")
    copy_trials(results.search_dir / "seeds.csv", run_dir / "seeds.csv", names)
    table = write_table(run_dir, rows)
    calib = calibration(rows, cap_domain, capabilities, results.search_dir / "seeds.csv", names)
    worth = u_check(results.search_dir / "seeds.csv", names, rows["base"], results.lgbm, results.seed)
    trained = margin(rows["mergemix (trained)"], rows["uniform (trained)"], capabilities)
    judged = verdict(calib, worth, search.get("alpha_choice"), trained)
    summary = {
        "alpha_star": search["alpha_star"], "uniform_mixture": results.uniform, "predicted": search["predicted"],
        "rows": {k: {"capabilities": v["capabilities"], "capabilities_std": v["capabilities_std"],
                     "U": v["U"], "U_std": v["U_std"], "tasks": v["tasks"]} for k, v in rows.items()},
        "mergemix_vs_uniform": trained, "search_worth": worth,
        "calibration": calib, "verdict": judged, "surrogate_cv_spearman": search["surrogate_cv_spearman"],
        "domain_tokens": results.token_counts, "artifacts": results.artifacts,
    }
    write_summary(run_dir, summary)
    log_summary(table, summary)
    return summary


def log_summary(table: str, s: dict) -> None:
    """alpha*, the table, the calibration checks and the verdict, as the run's last lines."""
    fmt = ", ".join(f"{d}={w:.3f}" for d, w in s["alpha_star"].items())
    uni = ", ".join(f"{d}={w:.3f}" for d, w in s["uniform_mixture"].items())
    log.info(f"\nalpha* (MergeMix): {fmt}\nuniform (token-proportional): {uni}\n\n{table}\n")
    log.info("calibration:")
    log_gains(s["calibration"]["expert_gains"])
    t = s["calibration"]["tradeoff"]
    log.info(f"  best merge interior: {t['best_is_interior']} (interior U {100 * t['best_interior_U']:.1f}"
             f" vs best vertex U {100 * (t['best_vertex_U'] or float('nan')):.1f}; seed U spread std"
             f" {100 * t['U_spread_std']:.1f})")
    w = s["search_worth"]
    log.info(f"  merged U spread over the seed merges {100 * w['merged_spread_std']:.2f} vs item noise "
             f"{100 * w['item_noise_std']:.2f} ({w['ratio']:.1f}x); surrogate CV Spearman of U "
             f"{'n/a' if w['cv_spearman'] is None else format(w['cv_spearman'], '.2f')}")
    m = s["mergemix_vs_uniform"]
    log.info(f"MergeMix vs uniform (trained, one training seed): U {100 * m['U_diff']:+.2f} (paired item noise std"
             f" {100 * m['noise_std']:.2f}, {m['sigmas']:+.1f} sigma; seed-to-seed noise is larger: "
             "reports/frontier)")
    for line in s["verdict"]["findings"]:
        log.info(f"  - {line}")
    log.info(f"verdict: {s['verdict']['line']}")
