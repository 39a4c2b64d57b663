"""The cost-quality frontier (the paper's Figure 1, top): every mixture-search strategy at several costs, each found
mixture trained at `mix.tokens` and scored, over several search seeds.

    MergeMix        experts of each `frontier.expert_tokens`, `frontier.budgets` merges; with its corrections
    proxy search    an Optuna (TPE) study whose trials are trained runs of `trial_tokens`; after n runs its answer
                    is the best run (one study per length and seed, its first n trials give the point for n)
    RegMix          Dirichlet trials around the token prior, LightGBM per capability, top-k mean of >= 100k
                    simulated mixtures (fitted on the first n runs)
    full horizon    the proxy study with runs of `mix.tokens` (the paper's "manual / RegMix at the target scale":
                    RegMix fitted on those same runs)
    small proxies   RegMix with proxies of a smaller model (`frontier.small_model`, its own base charged), the
                    mixture transferred to the target model (RegMix's own design)
    token, manual   the token-proportional mixture and a manual prior, no search

Cost is what was trained: runs are cut to whole batches, FLOPs are 6·N·D (N of the model that trained, so small
proxies cost their size). A point's multiple is its training FLOPs over the reference MergeMix point's (= the
training-token multiple for runs of the same model). Jobs are independent processes over one shared artifact cache:
a rerun (or a killed run) redoes only what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mergemix.artifacts import write_atomic
from mergemix.errors import MergeMixError
from mergemix.search.cost import trained_tokens

FAMILIES = {"mergemix": "MergeMix", "proxy": "proxy search", "regmix": "RegMix", "proxy_full": "proxy search, full",
            "regmix_full": "RegMix, full", "regmix_small": "RegMix, small proxies", "token": "token-proportional",
            "manual": "manual prior"}
TRIAL_FAMILIES = ("proxy", "regmix", "proxy_full", "regmix_full", "regmix_small")


# -------------------------------------------------------------------------------------------------- jobs ---
def jobs(cfg: dict) -> list[dict]:
    """Every unit of work (one search at one seed, all its points): seed by seed, the most expensive first, so that
    an interrupted run leaves whole seeds."""
    f, out = cfg["frontier"], []
    for seed in f["seeds"]:
        out.append({"kind": "fixed", "seed": seed, "cost": 2})
        cheapest, reference = (min(f["expert_tokens"]), min(f["budgets"])), (cfg["experts"]["tokens"],
                                                                             cfg["search"]["budget"])
        for e in f["expert_tokens"]:
            for n in f["budgets"]:
                variant = (e, n) != reference and seed not in (f.get("variant_seeds") or f["seeds"])
                if ((e, n) != cheapest or len(f["expert_tokens"]) * len(f["budgets"]) == 1) and not variant:
                    out.append({"kind": "mergemix", "seed": seed, "experts": e, "budget": n, "cost": 2})
        for corr in f["corrections"]:
            out.append({"kind": "mergemix", "seed": seed, "experts": int(cfg["experts"]["tokens"]),
                        "budget": int(cfg["search"]["budget"]), "correction": corr, "cost": 2})
        for fam in ("proxy", "regmix"):
            for t in f["trial_tokens"]:
                out.append({"kind": fam, "seed": seed, "trial_tokens": t, "counts": f["trial_counts"], "cost": 4})
        out.append({"kind": "full", "seed": seed, "counts": f["full_counts"], "cost": 10})
        if f.get("small_model"):
            out.append({"kind": "small", "seed": seed, "trial_tokens": f["small_trial_tokens"],
                        "counts": f["small_counts"], "cost": 3})
    return sorted(out, key=lambda j: (j["seed"], -j["cost"]))


def job_id(job: dict) -> str:
    keys = [k for k in ("kind", "experts", "budget", "correction", "trial_tokens") if k in job]
    return "-".join(str(job[k]) for k in keys) + f"-s{job['seed']}"


def finished(job: dict, out_dir: Path) -> list[dict] | None:
    """The job's written points, if they hold every count it asks for (a larger count reruns it; its runs are
    cached, so only the new ones train); else None."""
    path = Path(out_dir) / f"{job_id(job)}.json"
    if not path.is_file():
        return None
    points = json.loads(path.read_text())
    have = {p["settings"].get("runs") for p in points}
    return points if "counts" not in job or set(job["counts"]) <= have else None


def run_job(cfg: dict, job: dict, out_dir: Path, small_model: dict | None = None) -> list[dict]:
    """Run one job (cached artifacts make a repeat cheap) and write its points to out_dir/<job id>.json."""
    from mergemix.pipeline import Pipeline

    path = Path(out_dir) / f"{job_id(job)}.json"
    if (done := finished(job, out_dir)) is not None:
        return done
    pipe = Pipeline({**cfg, "search_seed": int(job["seed"])}, out_dir)
    points = {"fixed": _fixed, "mergemix": _mergemix, "proxy": _proxy, "regmix": _regmix, "full": _full,
              "small": _small}[job["kind"]](pipe, job, small_model)
    write_atomic(path, json.dumps(points, indent=1, default=float))
    return points


def _point(pipe, family: str, settings: dict, alpha: dict, train: list[tuple[int, int]], evaluations: int,
           eval_params: int) -> dict:
    """Train `alpha` at mix.tokens (data order = the search seed), score it, and record the search's cost:
    `train` lists (trained tokens, parameters) of every run the search paid for; its `evaluations` ran on a model
    of `eval_params` parameters."""
    total = sum(alpha.values())
    alpha = {n: float(alpha[n]) / total for n in pipe.domain_names}
    scores = pipe.evaluate_checkpoint(pipe.train_mixture(alpha, family))
    n_eval = pipe.suite.evaluator.n_tokens()
    return {"family": family, "label": FAMILIES[family], "settings": settings, "seed": pipe.search_seed,
            "alpha": alpha, "U": scores["U"], "U_std": scores["U_std"], "capabilities": scores["capabilities"],
            "train_tokens": int(sum(t for t, _ in train)), "train_flops": float(sum(6.0 * t * p for t, p in train)),
            "eval_flops": float(2.0 * eval_params * n_eval * evaluations), "evaluations": int(evaluations)}


def _params(pipe) -> int:
    """Active parameters of the pipeline's model (= all of them for a dense model)."""
    from mergemix.models import active_params, load_checkpoint

    return active_params(load_checkpoint(pipe.base_dir))


def _fixed(pipe, job, _small) -> list[dict]:
    from mergemix.search.baselines import manual_prior

    prior = pipe.cfg["frontier"]["manual_prior"]
    return [_point(pipe, "token", {}, dict(pipe.uniform_mixture), [], 0, 0),
            _point(pipe, "manual", {"prior": prior}, manual_prior(prior, pipe.domain_names), [], 0, 0)]


# the merge variants a MergeMix point or the consistency table can use: config sections patched over the run's
VARIANTS = {"merge": {}, "recovery": {"search": {"calibration": "recovery"}}, "lora": {"experts": {"kind": "lora"}}}


def variant(cfg: dict, name: str | None) -> dict:
    """The config with variant `name` applied: one of VARIANTS, or scale<s> (extrapolated merges, s = float)."""
    if name and name.startswith("scale"):
        patch = {"search": {"merge_scale": float(name[len("scale"):])}}
    elif (name or "merge") in VARIANTS:
        patch = VARIANTS[name or "merge"]
    else:
        raise MergeMixError(f"unknown frontier variant '{name}' (choose from {sorted(VARIANTS)} or scale<s>)")
    return {**cfg, **{k: {**cfg[k], **v} for k, v in patch.items()}}


def _mergemix(pipe, job, _small) -> list[dict]:
    corr = job.get("correction")
    cfg = variant(pipe.cfg, corr)
    p = pipe.derive(experts={**cfg["experts"], "tokens": int(job["experts"])},
                    search={**cfg["search"], "budget": int(job["budget"])})
    result = p.search_result
    n, m = _params(p), cfg["model"]
    train = [(trained_tokens(job["experts"], m), n)] * len(p.domain_names)  # LoRA experts: the same tokens
    if corr == "recovery":
        train.append((trained_tokens(cfg["mix"]["tokens"], m), n))  # the token-proportional run it calibrates on
    settings = {"expert_tokens": int(job["experts"]), "budget": int(job["budget"]), "correction": corr or "none"}
    point = _point(p, "mergemix", settings, result["alpha_star"], train, int(result["cost"]["evaluations"]), n)
    point.update(merged_U=result["verified"].get("U"),
                 switched_to_best_merge=result.get("alpha_choice", {}).get("switched_to_best_merge"))
    return [point]


def _trials(pipe, job, kind: str, trial_tokens: int, small=None):
    """The trial runs of one proxy study (TPE) or RegMix design, at the largest count; (history, objective)."""
    from mergemix.search.baselines import proxy_search, proxy_study_path, regmix

    spec = {**pipe.cfg["search"], **pipe.cfg["baseline"], "baseline": kind, "budget": max(job["counts"]),
            "trial_tokens": int(trial_tokens), "sampler": "tpe", "prior_concentration": 10}
    runner = small or pipe
    if kind == "proxy":
        _, obj = proxy_search(runner, spec, pipe.search_seed, proxy_study_path(runner, spec, pipe.search_seed))
    else:
        _, obj = regmix(runner, spec, pipe.search_seed)
    return obj.history, obj, spec


def _prefix_points(pipe, family, history, counts, run_cost, settings, fit, extra=()) -> list[dict]:
    """One point per count n: the strategy's answer from its first n runs, charged n runs (plus `extra`); each run
    was evaluated on the model that trained it (run_cost: tokens, parameters)."""
    out = []
    for n in sorted(set(counts)):
        alpha = dict(zip(pipe.domain_names, map(float, fit(history[:n]))))
        out.append(_point(pipe, family, {**settings, "runs": n}, alpha, [run_cost] * n + list(extra), n,
                          run_cost[1]))
    return out


def _proxy(pipe, job, _small) -> list[dict]:
    from mergemix.search.baselines import best_run

    history, obj, _ = _trials(pipe, job, "proxy", job["trial_tokens"])
    cost = (trained_tokens(job["trial_tokens"], pipe.cfg["model"]), _params(pipe))
    return _prefix_points(pipe, "proxy", history, job["counts"], cost,
                          {"trial_tokens": int(job["trial_tokens"])}, lambda h: best_run(h, obj.utility))


def _regmix(pipe, job, _small) -> list[dict]:
    from mergemix.search.baselines import regmix_fit

    history, _, spec = _trials(pipe, job, "regmix", job["trial_tokens"])
    cost = (trained_tokens(job["trial_tokens"], pipe.cfg["model"]), _params(pipe))
    return _prefix_points(pipe, "regmix", history, job["counts"], cost,
                          {"trial_tokens": int(job["trial_tokens"])}, lambda h: regmix_fit(h, spec, pipe.search_seed))


def _full(pipe, job, _small) -> list[dict]:
    """Runs of mix.tokens: proxy search's best run, and RegMix fitted on the same runs (the paper's adapted RegMix)."""
    from mergemix.search.baselines import best_run, regmix_fit

    t = int(pipe.cfg["mix"]["tokens"])
    history, obj, spec = _trials(pipe, job, "proxy", t)
    cost = (trained_tokens(t, pipe.cfg["model"]), _params(pipe))
    return [*_prefix_points(pipe, "proxy_full", history, job["counts"], cost, {"trial_tokens": t},
                            lambda h: best_run(h, obj.utility)),
            *_prefix_points(pipe, "regmix_full", history, job["counts"], cost, {"trial_tokens": t},
                            lambda h: regmix_fit(h, spec, pipe.search_seed))]


def _small(pipe, job, small_model) -> list[dict]:
    """RegMix on a smaller model's proxies (its own base pretrained on the same data, charged), transferred."""
    from mergemix.search.baselines import regmix_fit

    small = pipe.derive(model=small_model)
    history, _, spec = _trials(pipe, job, "regmix", job["trial_tokens"], small=small)
    n_small = _params(small)
    base = (trained_tokens(small.cfg["base"]["tokens"], small_model), n_small)
    cost = (trained_tokens(job["trial_tokens"], small_model), n_small)
    return _prefix_points(pipe, "regmix_small", history, job["counts"], cost,
                          {"trial_tokens": int(job["trial_tokens"]), "model": small_model.get("name")},
                          lambda h: regmix_fit(h, spec, pipe.search_seed), extra=[base])


# ----------------------------------------------------------------------------------------- consistency ---
def consistency(cfg: dict, points: list[dict], n_boot: int = 1000) -> dict:
    """Do merges (plain, and each of `frontier.consistency`'s variants) rank the mixtures the strategies really
    trained? Spearman rho of merged against trained U over every trained point (mixture x training seed) of the
    frontier, with a bootstrap interval over points; merges at the reference experts, cached by alpha."""
    from mergemix.analysis import rank
    from mergemix.pipeline import Pipeline
    from mergemix.search.run import objective_for

    alphas = [np.array([p["alpha"][n] for n in sorted(p["alpha"])]) for p in points]
    trained = {"overall": [p["U"] for p in points],
               **{c: [p["capabilities"][c] for p in points] for c in points[0]["capabilities"]}}
    out = {"n_points": len(points), "n_mixtures": len({tuple(np.round(a, 6)) for a in alphas})}
    for name in cfg["frontier"]["consistency"]:
        pipe = Pipeline({**variant(cfg, name), "search_seed": 0}, ".")
        objective = objective_for(pipe)
        merged = [objective(a) for a in alphas]
        pred = {"overall": [r["U"] for r in merged],
                **{c: [r["capabilities"][c] for r in merged] for c in merged[0]["capabilities"]}}
        res = rank.compare(pred, [trained], n_boot, 0)["spearman"]
        out[name] = {"rho_U": res["overall"], "ci_U": res["interval"]["overall"], "rho": res["capabilities"]}
    return out


# --------------------------------------------------------------------------------------------- summary ---
def summarise(points: list[dict], reference: dict) -> dict:
    """Per point (family + settings): trained U over seeds, cost, and its multiple of the reference MergeMix
    point's training FLOPs; proxy_multiple_to_match: the smallest multiple at which a trial-training point's mean
    trained U reaches the reference's (null if none, with the largest multiple tried)."""
    from scipy import stats

    groups: dict[str, list[dict]] = {}
    for p in points:
        key = p["family"] + json.dumps(p["settings"], sort_keys=True)
        groups.setdefault(key, []).append(p)
    ref_key = "mergemix" + json.dumps(reference, sort_keys=True)
    if ref_key not in groups:
        raise ValueError(f"no reference MergeMix point {reference} among the results")
    ref = {p["seed"]: p for p in groups[ref_key]}
    ref_flops = float(np.mean([p["train_flops"] for p in ref.values()]))
    rows = []
    for key, ps in groups.items():
        u = np.array([p["U"] for p in ps])
        paired = [p["U"] - ref[p["seed"]]["U"] for p in ps if p["seed"] in ref]
        half = float(stats.t.ppf(0.975, len(paired) - 1) * np.std(paired, ddof=1) / np.sqrt(len(paired))) \
            if len(paired) > 1 else None
        flops = float(np.mean([p["train_flops"] for p in ps]))
        rows.append({"family": ps[0]["family"], "label": ps[0]["label"], "settings": ps[0]["settings"],
                     "seeds": sorted(p["seed"] for p in ps), "U_mean": float(u.mean()),
                     "U_std": float(u.std(ddof=1)) if len(u) > 1 else 0.0,
                     "U_item_std": float(np.mean([p["U_std"] for p in ps])),
                     "diff_vs_reference": float(np.mean(paired)) if paired else None,
                     "diff_ci95": None if half is None else [float(np.mean(paired)) - half,
                                                             float(np.mean(paired)) + half],
                     "train_tokens": float(np.mean([p["train_tokens"] for p in ps])), "train_flops": flops,
                     "eval_flops": float(np.mean([p["eval_flops"] for p in ps])),
                     "evaluations": float(np.mean([p["evaluations"] for p in ps])),
                     "multiple": flops / ref_flops if ref_flops else None,
                     "merged_U": _mean_or_none([p.get("merged_U") for p in ps])})
    ref_row = next(r for r in rows if r["family"] == "mergemix" and r["settings"] == reference)
    trials = [r for r in rows if r["family"] in TRIAL_FAMILIES]
    matching = sorted(r["multiple"] for r in trials if r["U_mean"] >= ref_row["U_mean"])
    by_family = {}
    for fam in TRIAL_FAMILIES:
        rs = [r for r in trials if r["family"] == fam]
        if rs:
            hit = sorted(r["multiple"] for r in rs if r["U_mean"] >= ref_row["U_mean"])
            by_family[fam] = {"multiple_to_match": hit[0] if hit else None,
                              "max_multiple_tried": max(r["multiple"] for r in rs)}
    rows.sort(key=lambda r: (list(FAMILIES).index(r["family"]), r["multiple"] or 0))
    return {"reference": {"settings": reference, "U_mean": ref_row["U_mean"], "U_std": ref_row["U_std"],
                          "train_tokens": ref_row["train_tokens"], "train_flops": ref_flops},
            "proxy_multiple_to_match": matching[0] if matching else None,
            "max_multiple_tried": max((r["multiple"] for r in trials), default=None),
            "by_family": by_family, "points": rows}


def _mean_or_none(values):
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def settings_text(s: dict) -> str:
    parts = []
    for k, v in s.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1000:
            v = f"{v / 1000:g}k"
        parts.append(f"{k.replace('_', ' ')} {v}")
    return ", ".join(parts) or "—"


def markdown(summary: dict, title: str) -> str:
    ref = summary["reference"]
    mult = summary["proxy_multiple_to_match"]
    lines = [f"### {title}", "",
             (f"Reference: MergeMix with {settings_text(ref['settings'])}: trained U {100 * ref['U_mean']:.2f} "
              f"± {100 * ref['U_std']:.2f} (std over seeds), {ref['train_tokens']:.3g} training tokens."),
             "", "**Training-cost multiple a trial-training strategy needs to match it:** " +
             (f"{mult:.2f}x" if mult is not None else
              f"none of them matched it within {summary['max_multiple_tried']:.1f}x (the largest tried)") + ".",
             "", ("| strategy | settings | seeds | trained U (mean ± std) | Δ vs reference [95% CI] | "
                  "training tokens | training FLOPs | × MergeMix | evaluations |"), "|" + "---|" * 9]
    for r in summary["points"]:
        ci = r["diff_ci95"]
        diff = "—" if r["diff_vs_reference"] is None else f"{100 * r['diff_vs_reference']:+.2f}" + (
            f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "")
        mult_r = "—" if not r["multiple"] else f"{r['multiple']:.2f}"
        lines.append(f"| {r['label']} | {settings_text(r['settings'])} | {len(r['seeds'])} | "
                     f"{100 * r['U_mean']:.2f} ± {100 * r['U_std']:.2f} | {diff} | {r['train_tokens']:.3g} | "
                     f"{r['train_flops']:.3g} | {mult_r} | {r['evaluations']:.0f} |")
    cons = summary.get("consistency")
    rows = {k: v for k, v in (cons or {}).items() if isinstance(v, dict) and "rho_U" in v}
    if rows:
        caps = list(next(iter(rows.values()))["rho"])
        lines += ["", (f"Merged vs trained U over the {cons['n_points']} trained points ({cons['n_mixtures']} "
                  "distinct mixtures) above: Spearman ρ [95% bootstrap interval over points]:"), "",
                  "| merge | ρ(U) | " + " | ".join(f"ρ {c}" for c in caps) + " |", "|" + "---|" * (2 + len(caps))]
        for name, c in rows.items():
            lo, hi = c["ci_U"]
            lines.append(f"| {name} | {_f2(c['rho_U'])} [{_f2(lo)}, {_f2(hi)}] | "
                         + " | ".join(_f2(v) for v in c["rho"].values()) + " |")
    lines += ["", "Per family, the smallest multiple that matched (— none, within the largest tried):", ""]
    for fam, v in summary["by_family"].items():
        hit = "—" if v["multiple_to_match"] is None else f"{v['multiple_to_match']:.2f}x"
        lines.append(f"- {FAMILIES[fam]}: {hit} (largest tried {v['max_multiple_tried']:.2f}x)")
    return "\n".join(lines) + "\n"


def _f2(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def plot(summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(6.5 * len(summaries), 4.8), squeeze=False)
    styles = {"mergemix": ("C3", "*"), "proxy": ("C0", "o"), "regmix": ("C1", "s"), "proxy_full": ("C0", "D"),
              "regmix_full": ("C1", "D"), "regmix_small": ("C2", "^")}
    for ax, (name, s) in zip(axes[0], summaries.items()):
        for fam, (color, marker) in styles.items():
            rs = sorted((r for r in s["points"] if r["family"] == fam), key=lambda r: r["multiple"])
            if rs:
                ax.errorbar([r["multiple"] for r in rs], [100 * r["U_mean"] for r in rs],
                            yerr=[100 * r["U_std"] for r in rs], color=color, marker=marker, capsize=3,
                            linestyle="none" if fam == "mergemix" else "-", label=FAMILIES[fam],
                            markersize=11 if fam == "mergemix" else 6)
        for r in (r for r in s["points"] if r["family"] == "mergemix"):
            st = r["settings"]
            tag = st["correction"] if st.get("correction", "none") != "none" else \
                f"{st['expert_tokens'] / 1000:g}k, N={st['budget']}"
            ax.annotate(tag, (r["multiple"], 100 * r["U_mean"]), textcoords="offset points", xytext=(6, 4),
                        fontsize=7, color="C3")
        for fam, ls in (("token", ":"), ("manual", "--")):
            for r in (r for r in s["points"] if r["family"] == fam):
                ax.axhline(100 * r["U_mean"], color="gray", linestyle=ls, label=f"{FAMILIES[fam]} (no search)")
        ref = s["reference"]
        ax.axhline(100 * ref["U_mean"], color="C3", alpha=0.3)
        ax.set_xscale("log")
        ax.set_xlabel("search training cost (FLOPs, × MergeMix reference)")
        ax.set_ylabel("trained U of the found mixture (×100 above chance)")
        ax.set_title(f"{name}: trained U vs search cost (mean ± std over seeds)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)  # below the axes: it hides no point
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
