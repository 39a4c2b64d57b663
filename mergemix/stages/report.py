"""Stage 9, report: a run's Table-1-style table (Markdown, CSV, PNG), its calibration checks and verdict,
summary.json, and the lines the run prints. The studies (analysis/) report with these helpers too."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from itertools import islice, pairwise
from pathlib import Path

import numpy as np

from mergemix.artifacts import write_atomic
from mergemix.benchmarks.suite import paired_gap
from mergemix.log import log
from mergemix.stages.verdict import verdict


def expert_gains(
    rows: dict[str, dict],
    cap_domain: dict[str, str | None],
    capabilities: dict[str, list[str]],
    min_sigmas: float = 3.0,
) -> dict:
    """Each expert's gain on its own capability over the base, with paired-bootstrap noise over the items."""
    base, gains = rows["base"], {}
    for cap, domain in sorted(cap_domain.items()):
        if not domain or f"expert:{domain}" not in rows:
            continue
        exp = rows[f"expert:{domain}"]
        gap = paired_gap(exp, base, capabilities)
        noise, gain = gap["capabilities_std"][cap], gap["capabilities"][cap]
        gains[cap] = {
            "domain": domain,
            "base": base["capabilities"][cap],
            "expert": exp["capabilities"][cap],
            "gain": gain,
            "noise_std": noise,
            "sigmas": gain / max(noise, 1e-12),
            "clear": bool(gain > min_sigmas * noise),
        }
    return gains


def tradeoff(seeds_csv: Path, names: list[str]) -> dict:
    """Do the capabilities trade off? True when the best evaluated merge is interior, not a vertex."""
    from mergemix.search.run import read_trials

    alphas, columns = read_trials(seeds_csv, names)
    u = columns["U"]
    vertex = alphas.max(axis=1) > 1 - 1e-9
    return {
        "best_vertex_U": float(u[vertex].max()) if vertex.any() else None,
        "best_interior_U": float(u[~vertex].max()),
        "best_is_interior": bool(not vertex.any() or u[~vertex].max() > u[vertex].max()),
        "U_spread_std": float(u.std()),
    }


def calibration(
    rows: dict[str, dict],
    cap_domain: dict[str, str | None],
    capabilities: dict[str, list[str]],
    seeds_csv: Path,
    names: list[str],
    merged: list[dict],
    min_sigmas: float = 3.0,
) -> dict:
    """The testbed is informative only if each expert clearly lifts its own capability, the capabilities trade
    off and differences between mixtures exceed the evaluation noise (`merged`: the seed merges' results)."""
    gains = expert_gains(rows, cap_domain, capabilities, min_sigmas)
    noise = merged_noise(merged, capabilities)
    return {
        "expert_gains": gains,
        "all_experts_clear": all(g["clear"] for g in gains.values()),
        "tradeoff": tradeoff(seeds_csv, names),
        "merged_noise": noise,
        "responsiveness": responsiveness(merged, noise),
    }


def merged_noise(merged: list[dict], capabilities: dict[str, list[str]], pairs: int = 10) -> dict[str, float]:
    """The item noise that separates two merges, per capability and for U: the paired-bootstrap std of the
    difference of consecutive seed merges (same items), over sqrt(2) (one merge's share), averaged over `pairs`
    pairs. Two mixtures are told apart on the same items, so this, not one model's item std, is the yardstick."""
    if (
        len(merged) < 10
    ):  # a spread over a handful of merges says nothing (the cache no longer holds the rest)
        return {}
    gaps = [paired_gap(a, b, capabilities) for a, b in islice(pairwise(merged), pairs)]
    out = {c: float(np.mean([g["capabilities_std"][c] for g in gaps]) / np.sqrt(2)) for c in capabilities}
    return {**out, "U": float(np.mean([g["U_std"] for g in gaps]) / np.sqrt(2))}


def responsiveness(merged: list[dict], noise: dict[str, float], min_ratio: float = 2.0) -> dict:
    """Does each capability respond to the mixture? Its spread over the seed merges (std) against the paired item
    noise of one merge: a capability whose merged scores move less than twice that cannot rank mixtures, and in U
    it only adds noise."""
    out = {}
    for cap in (c for c in noise if c != "U"):
        spread = float(np.std([r["capabilities"][cap] for r in merged]))
        out[cap] = {
            "merged_spread_std": spread,
            "item_noise_std": noise[cap],
            "ratio": spread / max(noise[cap], 1e-12),
            "responsive": bool(spread > min_ratio * noise[cap]),
        }
    return out


def u_check(merged: list[dict], noise: dict[str, float], alphas, lgbm: dict, seed: int) -> dict:
    """Is a search worth it here? Merged U's spread over the seed merges against the paired item noise of one
    merge, and how well a surrogate of U ranks unseen merges (5-fold CV Spearman)."""
    from mergemix.search.run import cross_validated_spearman

    u = np.array([r["U"] for r in merged])
    if len(u) < 3 or not noise:  # the merges are no longer in the evaluation cache: nothing to check
        return {"merged_spread_std": None, "item_noise_std": None, "ratio": None, "cv_spearman": None}
    spread, item = float(u.std()), float(noise["U"])
    cv = cross_validated_spearman(np.asarray(alphas), {"U": u}, lgbm, seed)["U"] if len(u) >= 10 else None
    return {
        "merged_spread_std": spread,
        "item_noise_std": item,
        "ratio": spread / max(item, 1e-12),
        "cv_spearman": cv,
    }


def log_gains(gains: dict) -> None:
    for cap, g in gains.items():
        log.info(
            f"  expert:{g['domain']:<6} lifts {cap:<9} {100 * g['base']:6.1f} -> {100 * g['expert']:6.1f}"
            f"  ({g['sigmas']:+.1f} sigma){'' if g['clear'] else '  NOT CLEAR'}"
        )


def margin(a: dict, b: dict, capabilities: dict[str, list[str]]) -> dict:
    """U(a) - U(b) on the same benchmark items, with its paired-bootstrap standard deviation."""
    gap = paired_gap(a, b, capabilities)
    return {
        "U_diff": gap["U"],
        "noise_std": gap["U_std"],
        "sigmas": gap["U"] / max(gap["U_std"], 1e-12),
        "capabilities_diff": gap["capabilities"],
        "capabilities_std": gap["capabilities_std"],
    }


def _header_and_values(rows: dict[str, dict]) -> tuple[list[str], dict[str, list[float]]]:
    caps = sorted(next(iter(rows.values()))["capabilities"])
    return ["model", *caps, "U", "U_std"], {
        name: [100 * r["capabilities"][c] for c in caps] + [100 * r["U"], 100 * r["U_std"]]
        for name, r in rows.items()
    }


def score_table(rows: dict[str, dict]) -> str:
    """Markdown: one row per model, its capability scores, U and U_std (x100)."""
    header, values = _header_and_values(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + " |" for name, vals in values.items()]
    return "\n".join(lines)


def write_table(
    run_dir: Path, rows: dict[str, dict], capabilities: dict[str, list[str]] | None = None
) -> str:
    header, values = _header_and_values(rows)
    with open(run_dir / "table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows([name, *(round(v, 3) for v in vals)] for name, vals in values.items())
    table = score_table(rows)
    write_atomic(
        run_dir / "table.md",
        "Capability scores, normalised against chance (x100); U = macro-average.\n\n" + table + "\n",
    )
    plot_scores(run_dir / "table.png", rows, capabilities)
    return table


def plot_scores(path: Path, rows: dict[str, dict], capabilities: dict[str, list[str]] | None = None) -> None:
    import matplotlib.pyplot as plt

    fig = draw_table(rows, capabilities)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_table(rows: dict[str, dict], capabilities: dict[str, list[str]] | None = None):
    """table.png: each model's scores (left) and its difference to the reference, uniform (trained) or else the
    base, with the paired item noise that separates two models on the same items (right). Returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = len(next(iter(rows.values()))["capabilities"]) + 1
    ref = reference_row(rows)
    fig, axes = plt.subplots(
        1, 2 if ref else 1, figsize=((2.4 if ref else 1.6) * n_cols + 4, 4.2), squeeze=False
    )
    draw_scores(axes[0][0], rows, errors=False)
    if ref:
        draw_gaps(axes[0][1], rows, ref, capabilities)
    fig.suptitle(
        "Capability scores per model" + (f" and their difference to {ref}" if ref else ""), fontsize=10
    )
    fig.tight_layout()
    return fig


def reference_row(rows: dict[str, dict]) -> str | None:
    """The row the others are compared with: uniform (trained), else the base; None if neither is there."""
    return next((r for r in ("uniform (trained)", "base") if r in rows and len(rows) > 1), None)


def gap_to(row: dict, ref: dict, capabilities: dict[str, list[str]] | None) -> tuple[dict, dict, bool]:
    """(difference, its std, paired) per capability and U: the paired bootstrap over the same items when both
    rows hold them, else the two item stds combined (unpaired: wider)."""
    if capabilities and "items" in row and "items" in ref:
        g = paired_gap(row, ref, capabilities)
        return {**g["capabilities"], "U": g["U"]}, {**g["capabilities_std"], "U": g["U_std"]}, True
    diff = {c: row["capabilities"][c] - ref["capabilities"][c] for c in row["capabilities"]}
    std = {
        c: float(np.hypot(row["capabilities_std"][c], ref["capabilities_std"][c]))
        for c in row["capabilities"]
    }
    return (
        {**diff, "U": row["U"] - ref["U"]},
        {**std, "U": float(np.hypot(row["U_std"], ref["U_std"]))},
        False,
    )


def draw_gaps(ax, rows: dict[str, dict], ref: str, capabilities: dict[str, list[str]] | None) -> None:
    """Each model's score minus the reference's per capability and U (x100), error bars +-2 std of the
    difference, colours as in draw_scores."""
    cols = [*sorted(rows[ref]["capabilities"]), "U"]
    width, paired = 0.8 / len(rows), True
    for i, (name, r) in enumerate(rows.items()):
        if name == ref:
            continue
        diff, std, p = gap_to(r, rows[ref], capabilities)
        paired &= p
        ax.bar(
            np.arange(len(cols)) + i * width,
            [100 * diff[c] for c in cols],
            width,
            color=f"C{i}",
            yerr=[200 * std[c] for c in cols],
            capsize=2,
            label=name,
            error_kw={"lw": 0.8},
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, cols)
    ax.set_ylabel(f"score minus {ref} (x100)")
    ax.set_xlabel("capability (U: their macro-average)")
    noise = "paired item noise, same items" if paired else "item noise of both (unpaired)"
    ax.set_title(f"Difference to {ref} (error bars: ±2 std, {noise})", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def draw_scores(ax, rows: dict[str, dict], errors: bool = True) -> None:
    """Grouped bars of each row's capability scores and U (with `errors`, their item bootstrap std), into `ax`."""
    caps = sorted(next(iter(rows.values()))["capabilities"])
    cols = [*caps, "U"]
    width = 0.8 / len(rows)
    for i, (name, r) in enumerate(rows.items()):
        vals = [100 * r["capabilities"][c] for c in caps] + [100 * r["U"]]
        errs = [100 * r["capabilities_std"][c] for c in caps] + [100 * r["U_std"]]
        ax.bar(
            np.arange(len(cols)) + i * width,
            vals,
            width,
            yerr=errs if errors else None,
            label=name,
            capsize=2,
            color=f"C{i}",
        )
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
    rows: dict[
        str, dict
    ]  # scores: base, expert:<domain>, uniform (trained), mergemix (trained), mergemix (merge)
    search: dict  # the search's search.json
    search_dir: Path
    domain_names: list[str]
    uniform: dict[str, float]  # the token-proportional mixture
    token_counts: dict[str, int]
    artifacts: dict  # the paths summary.json names
    merged: list[dict]  # the seed merges' results (items included), in seeds.csv's order
    merged_alphas: list  # their mixtures
    lgbm: dict  # the surrogate's settings (search.lgbm), for the U-level check
    seed: int  # the search seed


def report_run(
    run_dir: Path, results: RunResults, capabilities: dict[str, list[str]], cap_domain: dict[str, str | None]
) -> dict:
    """mixture.yaml, seeds.csv, table.{md,csv,png} and summary.json in the run directory; the summary."""
    from mergemix.search.run import copy_trials

    rows, search, names = results.rows, results.search, results.domain_names
    shutil.copy2(results.search_dir / "mixture.yaml", run_dir / "mixture.yaml")
    copy_trials(results.search_dir / "seeds.csv", run_dir / "seeds.csv", names)
    table = write_table(run_dir, rows, capabilities)
    calib = calibration(
        rows, cap_domain, capabilities, results.search_dir / "seeds.csv", names, results.merged
    )
    worth = u_check(results.merged, calib["merged_noise"], results.merged_alphas, results.lgbm, results.seed)
    trained = margin(rows["mergemix (trained)"], rows["uniform (trained)"], capabilities)
    judged = verdict(calib, worth, search.get("alpha_choice"), trained)
    summary = {
        "alpha_star": search["alpha_star"],
        "uniform_mixture": results.uniform,
        "predicted": search["predicted"],
        "rows": {
            k: {
                "capabilities": v["capabilities"],
                "capabilities_std": v["capabilities_std"],
                "U": v["U"],
                "U_std": v["U_std"],
                "tasks": v["tasks"],
            }
            for k, v in rows.items()
        },
        "mergemix_vs_uniform": trained,
        "search_worth": worth,
        "calibration": calib,
        "verdict": judged,
        "surrogate_cv_spearman": search["surrogate_cv_spearman"],
        "domain_tokens": results.token_counts,
        "artifacts": results.artifacts,
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
    log.info(
        f"  best merge interior: {t['best_is_interior']} (interior U {100 * t['best_interior_U']:.1f}"
        f" vs best vertex U {100 * (t['best_vertex_U'] or float('nan')):.1f}; seed U spread std"
        f" {100 * t['U_spread_std']:.1f})"
    )
    w = s["search_worth"]
    if w["ratio"] is not None:
        log.info(
            f"  merged U spread over the seed merges {100 * w['merged_spread_std']:.2f} vs paired item noise "
            f"{100 * w['item_noise_std']:.2f} ({w['ratio']:.1f}x); surrogate CV Spearman of U "
            f"{'n/a' if w['cv_spearman'] is None else format(w['cv_spearman'], '.2f')}"
        )
    m = s["mergemix_vs_uniform"]
    log.info(
        f"MergeMix vs uniform (trained, one training seed): U {100 * m['U_diff']:+.2f} (paired item noise std"
        f" {100 * m['noise_std']:.2f}, {m['sigmas']:+.1f} sigma; seed-to-seed noise is larger: "
        "reports/frontier)"
    )
    for line in s["verdict"]["findings"]:
        log.info(f"  - {line}")
    log.info(f"verdict: {s['verdict']['line']}")
