"""The frontier's statistics and report: points grouped over seeds, costs as multiples of the reference MergeMix
point's total compute, the crossing multiple per seed with a seed-bootstrap interval, whether the testbed
discriminates at all, and the Markdown, README block and plot built from them.

Defined before anything was computed:
- A point's Δ is its retrained U minus the reference's at the same seed; its interval is the paired t interval.
- The crossing multiple of a trial-training family at one seed: the total-compute multiple at which its retrained U
  first reaches the reference's at that seed minus δ (δ = 0, and δ = 1 U as a non-inferiority margin), interpolated
  in log cost between the two budgets around the crossing; none when it never does (then it is above the largest
  multiple tried). Its median over seeds, with a 95% percentile interval over seed resamples.
- A testbed discriminates when a one-way ANOVA of retrained U over every strategy point with at least 3 seeds
  rejects equal means at p < 0.05: elsewhere mixtures' differences are within seed noise and no multiple is claimed."""

from __future__ import annotations

import json

import numpy as np

from mergemix.analysis.frontier import FAMILIES, TRIAL_FAMILIES

DELTAS = {"delta_0": 0.0, "delta_1": 0.01}  # U is in 0-1: 0.01 = 1 U
MATCH_FAMILY = "proxy_full"  # the strongest trial-training family: full-horizon proxy search


def group(points: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in points:
        out.setdefault(p["family"] + json.dumps(p["settings"], sort_keys=True), []).append(p)
    return out


def paired_ci(diffs: list[float]) -> list[float] | None:
    """Mean paired difference's two-sided 95% t interval (None below two pairs)."""
    from scipy import stats

    if len(diffs) < 2:
        return None
    d = np.asarray(diffs, dtype=float)
    lo, hi = (
        stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d)) if d.std() > 0 else (d[0], d[0])
    )
    return [float(lo), float(hi)]


def _row(ps: list[dict], ref: dict[int, dict], ref_total: float, ref_train: float) -> dict:
    u = np.array([p["U"] for p in ps])
    paired = [p["U"] - ref[p["seed"]]["U"] for p in ps if p["seed"] in ref]

    def mean(key):
        vals = [p[key] for p in ps if p.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    total = mean("total_flops")
    return {
        "family": ps[0]["family"],
        "label": FAMILIES[ps[0]["family"]],
        "settings": ps[0]["settings"],
        "seeds": sorted(p["seed"] for p in ps),
        "U_mean": float(u.mean()),
        "U_std": float(u.std(ddof=1)) if len(u) > 1 else 0.0,
        "U_item_std": mean("U_std"),
        "diff_vs_reference": float(np.mean(paired)) if paired else None,
        "diff_ci95": paired_ci(paired),
        "train_tokens": mean("train_tokens"),
        "train_flops": mean("train_flops"),
        "eval_flops": mean("eval_flops"),
        "total_flops": total,
        "evaluations": mean("evaluations"),
        "multiple_total": total / ref_total if total else None,
        "multiple_train": mean("train_flops") / ref_train if mean("train_flops") else None,
        "retrained": all(p.get("retrained") for p in ps),
        "merged_U": mean("merged_U"),
    }


def crossing(curve: list[tuple[float, float]], target: float) -> float | None:
    """The cost at which a (cost, U) curve ordered by cost first reaches `target`, interpolated in log cost; the
    first cost if it starts there; None if it never does."""
    for i, (cost, u) in enumerate(curve):
        if u >= target:
            if i == 0:
                return float(cost)
            (c0, u0) = curve[i - 1]
            f = (target - u0) / (u - u0)
            return float(np.exp(np.log(c0) + f * (np.log(cost) - np.log(c0))))
    return None


def _finite(x) -> float | None:
    return float(x) if np.isfinite(x) else None


def match(points: list[dict], ref: dict[int, dict], family: str, n_boot: int = 10000) -> dict:
    """The family's crossing multiple per seed (over the reference's total FLOPs at that seed) at each margin."""
    seeds = sorted(s for s in {p["seed"] for p in points if p["family"] == family} if s in ref)
    curves = {
        s: sorted((p["total_flops"], p["U"]) for p in points if p["family"] == family and p["seed"] == s)
        for s in seeds
    }
    out = {
        "basis": "total_flops",
        "family": family,
        "seeds": seeds,
        "max_multiple_tried": max(
            (c[-1][0] / ref[s]["total_flops"] for s, c in curves.items()), default=None
        ),
    }
    rng = np.random.default_rng(0)
    for name, delta in DELTAS.items():
        per = {s: crossing(c, ref[s]["U"] - delta) for s, c in curves.items()}
        per = {s: None if v is None else v / ref[s]["total_flops"] for s, v in per.items()}
        vals = np.array([np.inf if v is None else v for v in per.values()])
        if not len(vals):
            out[name] = {"median": None, "ci95": None, "per_seed": {}}
            continue
        boots = np.median(rng.choice(vals, (n_boot, len(vals))), axis=1)  # inf: never reached within the grid
        ci = [np.percentile(boots, 2.5, method="lower"), np.percentile(boots, 97.5, method="higher")]
        out[name] = {
            "median": _finite(np.median(vals)),
            "ci95": [_finite(x) for x in ci],
            "per_seed": {str(s): v for s, v in per.items()},
        }
    return out


def discrimination(rows: list[dict], points: list[dict], min_seeds: int = 3) -> dict:
    """One-way ANOVA of retrained U over the strategy points with >= min_seeds seeds (see the module's text)."""
    from scipy import stats

    groups = [g for g in group(points).values() if len(g) >= min_seeds]
    u = [[p["U"] for p in g] for g in groups]
    if len(u) < 2:  # too few seeds to tell: not tested (None), and no multiple is claimed
        return {"discriminates": None, "p_value": None, "n_points": len(u), "spread_over_noise": None}
    f = stats.f_oneway(*u)
    means = [np.mean(x) for x in u]
    within = float(np.sqrt(np.mean([np.var(x, ddof=1) for x in u])))
    return {
        "discriminates": bool(f.pvalue < 0.05),
        "p_value": float(f.pvalue),
        "F": float(f.statistic),
        "n_points": len(u),
        "U_spread_over_points": float(np.std(means, ddof=1)),
        "seed_noise_std": within,
        "spread_over_noise": float(np.std(means, ddof=1) / within) if within > 0 else None,
    }


def summarise(points: list[dict], reference: dict) -> dict:
    """Rows per point (family + settings), the reference, the crossing multiples and the discrimination test."""
    groups = group(points)
    ref_key = "mergemix" + json.dumps(reference, sort_keys=True)
    if ref_key not in groups:
        raise ValueError(f"no reference MergeMix point {reference} among the results")
    ref = {p["seed"]: p for p in groups[ref_key]}
    ref_total = float(np.mean([p["total_flops"] for p in ref.values()]))
    ref_train = float(np.mean([p["train_flops"] for p in ref.values()]))
    rows = [_row(ps, ref, ref_total, ref_train) for ps in groups.values()]
    rows.sort(key=lambda r: (list(FAMILIES).index(r["family"]), r["multiple_total"] or 0))
    ref_row = next(r for r in rows if r["family"] == "mergemix" and r["settings"] == reference)
    by_family = {
        fam: match(points, ref, fam) for fam in TRIAL_FAMILIES if any(p["family"] == fam for p in points)
    }
    disc = discrimination(rows, points)
    refine = refine_vs_strongest(rows, groups)
    return {
        "reference": {
            "settings": reference,
            **{
                k: ref_row[k]
                for k in (
                    "U_mean",
                    "U_std",
                    "seeds",
                    "train_tokens",
                    "train_flops",
                    "eval_flops",
                    "total_flops",
                )
            },
        },
        "match": by_family.get(MATCH_FAMILY),
        "by_family": by_family,
        "discriminates": disc["discriminates"],
        "discrimination": disc,
        "refine_vs_strongest": refine,
        "points": rows,
    }


def refine_vs_strongest(rows: list[dict], groups: dict[str, list[dict]]) -> list[dict]:
    """Each refine point against the strongest trial-training point (highest mean retrained U among those with the
    most seeds): the paired difference over their common seeds with its t interval, and the compute ratio."""
    trials = [r for r in rows if r["family"] in TRIAL_FAMILIES]
    if not trials:
        return []
    most = max(len(r["seeds"]) for r in trials)
    best = max((r for r in trials if len(r["seeds"]) == most), key=lambda r: r["U_mean"])
    by_seed = {p["seed"]: p for p in groups[best["family"] + json.dumps(best["settings"], sort_keys=True)]}
    out = []
    for r in (r for r in rows if r["family"] == "refine"):
        ps = groups["refine" + json.dumps(r["settings"], sort_keys=True)]
        d = [p["U"] - by_seed[p["seed"]]["U"] for p in ps if p["seed"] in by_seed]
        out.append(
            {
                "settings": r["settings"],
                "strongest": {
                    "family": best["family"],
                    "settings": best["settings"],
                    "U_mean": best["U_mean"],
                },
                "seeds": len(d),
                "diff": float(np.mean(d)) if d else None,
                "diff_ci95": paired_ci(d),
                "compute_ratio": r["total_flops"] / best["total_flops"],
            }
        )
    return out


# ------------------------------------------------------------------------------------------------ text ---
def settings_text(s: dict) -> str:
    parts = []
    for k, v in s.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1000:
            v = f"{v / 1000:g}k"
        parts.append(f"{k.replace('_', ' ')} {v}")
    return ", ".join(parts) or "—"


def multiple_text(m: dict | None, delta: str = "delta_0") -> str:
    """A family's crossing at one margin, median [interval], as a reader needs it (e.g. '6.1x [4.2x, >15.0x]')."""
    if not m or not m[delta]["per_seed"]:
        return "—"

    def one(x):
        return f">{m['max_multiple_tried']:.1f}x" if x is None else f"{x:.2f}x"

    lo, hi = m[delta]["ci95"]
    return f"{one(m[delta]['median'])} [{one(lo)}, {one(hi)}]"


def headline(summary: dict) -> str:
    """One sentence per testbed: what the frontier shows, worded by what it can claim."""
    m, d = summary["match"], summary["discrimination"]
    if summary["discriminates"] is None:
        return (
            "Too few seeds to test whether this testbed discriminates mixtures (fewer than two strategy points "
            "with 3 seeds): no multiple is claimed yet."
        )
    if not summary["discriminates"]:
        return (
            f"This testbed does not discriminate mixtures (ANOVA over {d['n_points']} strategy points, "
            f"p = {_f(d['p_value'], 2)}): their retrained U differ within seed noise, so no multiple is "
            "claimed here."
        )
    if not m:
        return "No full-horizon proxy search ran here: no multiple to report."
    fam = FAMILIES[m["family"]]
    return (
        f"{fam} reaches MergeMix's retrained U at {multiple_text(m)} its total compute (median over "
        f"{len(m['seeds'])} seeds [95% seed-bootstrap interval]); within a 1 U margin at "
        f"{multiple_text(m, 'delta_1')}."
    )


def _f(x, digits=2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _diff(r: dict, digits: int = 2) -> str:
    """Δ vs the reference with its interval, in U."""
    if r["diff_vs_reference"] is None:
        return "—"
    ci = r["diff_ci95"]
    return f"{100 * r['diff_vs_reference']:+.{digits}f}" + (
        f" [{100 * ci[0]:+.{digits}f}, {100 * ci[1]:+.{digits}f}]" if ci else ""
    )


def _u(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def markdown(summary: dict, title: str) -> str:
    ref, d = summary["reference"], summary["discrimination"]
    lines = [
        f"### {title}",
        "",
        f"**{headline(summary)}**",
        "",
        (
            f"Reference: MergeMix with {settings_text(ref['settings'])}: retrained U {_u(ref['U_mean'])} ± "
            f"{_u(ref['U_std'])} (std over {len(ref['seeds'])} seeds), {ref['total_flops']:.3g} FLOPs in all "
            f"({ref['train_flops']:.3g} training, {ref['eval_flops']:.3g} evaluation)."
        ),
        "",
        (
            f"Discrimination: one-way ANOVA over {d['n_points']} points with ≥ 3 seeds, p = "
            f"{_f(d['p_value'], 3)}; spread of point means {_u(d.get('U_spread_over_points'))} U against a "
            f"seed noise of {_u(d.get('seed_noise_std'))} U."
        ),
        "",
        (
            "| strategy | settings | seeds | retrained U (mean ± std) | Δ vs MergeMix [95% CI] | × total compute | "
            "× training | training tokens | evaluations |"
        ),
        "|" + "---|" * 9,
    ]
    for r in summary["points"]:
        lines.append(
            f"| {r['label']} | {settings_text(r['settings'])} | {len(r['seeds'])} | "
            f"{_u(r['U_mean'])} ± {_u(r['U_std'])} | {_diff(r)} | {_f(r['multiple_total'])} | "
            f"{_f(r['multiple_train'])} | {r['train_tokens']:.3g} | {r['evaluations']:.0f} |"
        )
    for c in summary.get("refine_vs_strongest", []):
        lines += ["", refine_text(c)]
    lines += [
        "",
        (
            "Crossing multiples (total compute at which the family's retrained U reaches MergeMix's, per seed, "
            "interpolated in log cost; median [95% seed-bootstrap interval]):"
        ),
        "",
        "| family | δ = 0 | δ = 1 U | per seed (δ = 0) | largest tried |",
        "|---|---|---|---|---|",
    ]
    for fam, m in summary["by_family"].items():
        per = ", ".join(
            f"{s}: {'—' if v is None else f'{v:.2f}'}" for s, v in m["delta_0"]["per_seed"].items()
        )
        lines.append(
            f"| {FAMILIES[fam]} | {multiple_text(m)} | {multiple_text(m, 'delta_1')} | {per} | "
            f"{_f(m['max_multiple_tried'])}x |"
        )
    cons = summary.get("consistency")
    rows = {k: v for k, v in (cons or {}).items() if isinstance(v, dict) and "rho_U" in v}
    if rows:
        caps = list(next(iter(rows.values()))["rho"])
        lines += [
            "",
            (
                f"Merged vs retrained U over the {cons['n_points']} trained points ({cons['n_mixtures']} "
                "distinct mixtures) above: Spearman ρ [95% bootstrap interval over points]:"
            ),
            "",
            "| merge | ρ(U) | " + " | ".join(f"ρ {c}" for c in caps) + " |",
            "|" + "---|" * (2 + len(caps)),
        ]
        for name, c in rows.items():
            lo, hi = c["ci_U"]
            lines.append(
                f"| {name} | {_f(c['rho_U'])} [{_f(lo)}, {_f(hi)}] | "
                + " | ".join(_f(v) for v in c["rho"].values())
                + " |"
            )
    return "\n".join(lines) + "\n"


def refine_text(c: dict) -> str:
    """One sentence: a refine point against the strongest trial-training point."""
    st, diff = c["strongest"], _diff({"diff_vs_reference": c["diff"], "diff_ci95": c["diff_ci95"]})
    return (
        f"Refine ({settings_text(c['settings'])}) against the strongest trial-training point "
        f"({FAMILIES[st['family']]}, {settings_text(st['settings'])}): {diff} U over {c['seeds']} common seeds, "
        f"at {c['compute_ratio']:.2f}x its total compute."
    )


def readme_block(data: dict) -> str:
    """The README's results block, built from frontier.json alone (a test checks the README holds it)."""
    lines = [
        f"From `reports/frontier/frontier.json` (`{data['command']}`"
        + (f", {data['wall_s'] / 60:.0f} min on 2 cores" if data.get("wall_s") else "")
        + "):",
        "",
    ]
    for name, s in data["testbeds"].items():
        ref = s["reference"]
        lines += [
            f"**{name}** — {headline(s)}",
            "",
            "| strategy | settings | seeds | retrained U | Δ vs MergeMix [95% CI] | × total compute |",
            "|---|---|---|---|---|---|",
        ]
        for r in s["points"]:
            if (
                r["family"] in ("mergemix", "refine", "token", "manual")
                or r["family"] == "proxy_full"
                and r["settings"].get("runs") in (4, 8, 15)
                or r["family"] in ("proxy", "regmix_full")
                and r["settings"].get("runs") in (8, 15, 40)
            ):
                lines.append(
                    f"| {r['label']} | {settings_text(r['settings'])} | {len(r['seeds'])} | "
                    f"{_u(r['U_mean'])} ± {_u(r['U_std'])} | {_diff(r, 1)} | {_f(r['multiple_total'])} |"
                )
        lines += [
            "",
            (
                f"MergeMix reference: {_u(ref['U_mean'])} ± {_u(ref['U_std'])} over {len(ref['seeds'])} "
                "seeds (experts redrawn per seed)."
            ),
            "",
        ]
        lines += [f"- {refine_text(c)}" for c in s.get("refine_vs_strongest", [])] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ plot ---
STYLES = {
    "mergemix": ("C3", "*"),
    "refine": ("C4", "P"),
    "proxy": ("C0", "o"),
    "regmix": ("C1", "s"),
    "proxy_full": ("C0", "D"),
    "regmix_full": ("C1", "D"),
    "regmix_small": ("C2", "^"),
}


def plot(summaries: dict[str, dict], path) -> None:
    import matplotlib.pyplot as plt

    fig = draw(summaries)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw(summaries: dict[str, dict]):
    """The frontier figure: one panel per testbed, retrained U against total compute, every line in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(7 * len(summaries), 5.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], summaries.items()):
        for fam, (color, marker) in STYLES.items():
            by = {}
            for r in (r for r in s["points"] if r["family"] == fam):
                by.setdefault(json.dumps({k: v for k, v in r["settings"].items() if k != "runs"}), []).append(
                    r
                )
            for key, rs in by.items():
                rs.sort(key=lambda r: r["multiple_total"])
                extra = {k: v for k, v in json.loads(key).items() if k in ("correction",) and v != "none"}
                label = FAMILIES[fam] + (f" ({', '.join(map(str, extra.values()))})" if extra else "")
                marker = {"gain": "X"}.get(extra.get("correction"), marker)  # refine's designs apart
                ax.errorbar(
                    [r["multiple_total"] for r in rs],
                    [100 * r["U_mean"] for r in rs],
                    yerr=[100 * r["U_std"] for r in rs],
                    color=color,
                    marker=marker,
                    capsize=3,
                    linestyle="none" if fam in ("mergemix", "refine") else "-",
                    label=label,
                    markersize=11 if fam in ("mergemix", "refine") else 5,
                    alpha=0.9,
                )
        for fam, ls in (("token", ":"), ("manual", "--")):
            for r in (r for r in s["points"] if r["family"] == fam):
                ax.axhline(
                    100 * r["U_mean"], color="gray", linestyle=ls, label=f"{FAMILIES[fam]} (no search)"
                )
        ref = s["reference"]
        ax.axhline(100 * ref["U_mean"], color="C3", alpha=0.35, label="MergeMix reference (mean)")
        ax.set_xscale("log")
        ax.set_xlabel("search compute before the final run (training + evaluation FLOPs, × MergeMix)")
        ax.set_ylabel("retrained U of the chosen mixture (×100 above chance)")
        verdict = "" if s["discriminates"] else " — does not discriminate"
        ax.set_title(
            f"{name}: retrained U vs total search compute (mean ± std over seeds){verdict}", fontsize=9
        )
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    fig.legend(list(seen.values()), list(seen), fontsize=8, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig
