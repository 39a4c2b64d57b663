"""The cost-quality frontier (the paper's Figure 1, top): every mixture-search strategy at several costs, each
found mixture retrained from the base at `mix.tokens` on a fresh data order and scored, over several seeds.

    MergeMix        experts of each `frontier.expert_tokens` (redrawn per seed: `experts.seed`), `frontier.budgets`
                    merges; with its corrections
    refine          MergeMix corrected by `frontier.refine_runs` full-horizon trained runs (search/refine.py), one
                    point per design in `frontier.refine`
    proxy search    an Optuna (TPE) study whose trials are trained runs of `trial_tokens`; after n runs its answer
                    is the best run (one study per length and seed, its first n trials give the point for n)
    RegMix          Dirichlet trials around the token prior, LightGBM per capability, top-k mean of >= 100k
                    simulated mixtures (fitted on the first n runs)
    full horizon    the proxy study with runs of `mix.tokens` (the paper's "manual / RegMix at the target scale"),
                    a point after every run; RegMix fitted on those same runs at `regmix_full_counts`
    small proxies   RegMix with proxies of a smaller model (`frontier.small_model`, its own base charged), the
                    mixture transferred to the target model (RegMix's own design)
    token, manual   the token-proportional mixture and a manual prior, no search

Cost is the total compute a strategy pays before its final run: 6·N·D for every run it trained (experts, trials,
refine's runs, a small model's base) and 2·N·D for every evaluation (merges, trials), N the active parameters of
the model that ran. The final run on the chosen mixture is charged to no strategy and is never one of its trials:
it trains on data-order seed `search_seed + frontier.retrain_offset`. Jobs are independent processes over one shared
artifact cache: a rerun (or a killed run) redoes only what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mergemix.artifacts import write_atomic
from mergemix.errors import MergeMixError
from mergemix.search.cost import Ledger, trained_tokens

FAMILIES = {
    "mergemix": "MergeMix",
    "refine": "MergeMix + refine",
    "proxy": "proxy search",
    "regmix": "RegMix",
    "proxy_full": "proxy search, full",
    "regmix_full": "RegMix, full",
    "regmix_small": "RegMix, small proxies",
    "token": "token-proportional",
    "manual": "manual prior",
}
TRIAL_FAMILIES = ("proxy", "regmix", "proxy_full", "regmix_full", "regmix_small")


# -------------------------------------------------------------------------------------------------- jobs ---
def jobs(cfg: dict) -> list[dict]:
    """Every unit of work (one search at one seed, all its points). `frontier.seeds` run MergeMix, refine,
    full-horizon proxy search and the fixed mixtures (first, seed by seed, the most expensive first, so that an
    interrupted run leaves whole seeds of the headline comparison); the first `frontier.other_seeds` of them every
    other strategy too (after)."""
    f, out = cfg["frontier"], []
    reference = (int(cfg["experts"]["tokens"]), int(cfg["search"]["budget"]))
    others = set(f["seeds"][: int(f["other_seeds"])])
    for seed in f["seeds"]:
        out.append(
            {
                "kind": "mergemix",
                "seed": seed,
                "experts": reference[0],
                "budget": reference[1],
                "cost": 2,
                "core": True,
            }
        )
        if f["refine"]:
            out.append(
                {
                    "kind": "refine",
                    "seed": seed,
                    "designs": list(f["refine"]),
                    "runs": int(f["refine_runs"]),
                    "cost": 5,
                    "core": True,
                }
            )
        out.append(
            {
                "kind": "full",
                "seed": seed,
                "counts": list(range(1, int(f["full_runs"]) + 1)),
                "regmix_counts": [n for n in f["regmix_full_counts"] if n <= int(f["full_runs"])],
                "cost": 10,
                "core": True,
            }
        )
        out.append({"kind": "fixed", "seed": seed, "cost": 1, "core": True})
        if seed not in others:
            continue
        for e in f["expert_tokens"]:
            for n in f["budgets"]:
                if (e, n) != reference:
                    out.append({"kind": "mergemix", "seed": seed, "experts": e, "budget": n, "cost": 2})
        for corr in f["corrections"]:
            out.append(
                {
                    "kind": "mergemix",
                    "seed": seed,
                    "experts": reference[0],
                    "budget": reference[1],
                    "correction": corr,
                    "cost": 2,
                }
            )
        for fam in ("proxy", "regmix"):
            for t in f["trial_tokens"]:
                out.append(
                    {"kind": fam, "seed": seed, "trial_tokens": t, "counts": f["trial_counts"], "cost": 4}
                )
        if f.get("small_model"):
            out.append(
                {
                    "kind": "small",
                    "seed": seed,
                    "trial_tokens": f["small_trial_tokens"],
                    "counts": f["small_counts"],
                    "cost": 3,
                }
            )
    return sorted(out, key=lambda j: (not j.get("core"), j["seed"], -j["cost"]))


def job_id(job: dict) -> str:
    keys = [k for k in ("kind", "experts", "budget", "correction", "trial_tokens") if k in job]
    return "-".join(str(job[k]) for k in keys) + f"-s{job['seed']}"


def expected(job: dict) -> set[tuple]:
    """The (family, runs, correction) of every point a job writes."""
    kind, counts = job["kind"], job.get("counts", [])
    if kind == "fixed":
        return {("token", None, None), ("manual", None, None)}
    if kind == "mergemix":
        return {("mergemix", None, job.get("correction") or "none")}
    if kind == "refine":
        return {("refine", job["runs"], d) for d in job["designs"]}
    if kind == "full":
        return {("proxy_full", n, None) for n in counts} | {
            ("regmix_full", n, None) for n in job["regmix_counts"]
        }
    return {({"small": "regmix_small"}.get(kind, kind), n, None) for n in counts}


def finished(job: dict, out_dir: Path) -> list[dict] | None:
    """The job's written points, if they hold every point it asks for, each retrained (a larger count reruns it;
    its runs are cached, so only the new ones train); else None."""
    path = Path(out_dir) / f"{job_id(job)}.json"
    if not path.is_file():
        return None
    points = json.loads(path.read_text())
    have = {(p["family"], p["settings"].get("runs"), p["settings"].get("correction")) for p in points}
    return points if expected(job) <= have and all(p.get("retrained") for p in points) else None


def run_job(cfg: dict, job: dict, out_dir: Path, small_model: dict | None = None) -> list[dict]:
    """Run one job (cached artifacts make a repeat cheap) and write its points to out_dir/<job id>.json."""
    from mergemix.pipeline import Pipeline

    path = Path(out_dir) / f"{job_id(job)}.json"
    if (done := finished(job, out_dir)) is not None:
        return done
    pipe = Pipeline({**cfg, "search_seed": int(job["seed"])}, out_dir)
    points = {
        "fixed": _fixed,
        "mergemix": _mergemix,
        "refine": _refine,
        "proxy": _proxy,
        "regmix": _regmix,
        "full": _full,
        "small": _small,
    }[job["kind"]](pipe, job, small_model)
    write_atomic(path, json.dumps(points, indent=1, default=float))
    return points


def _point(pipe, family: str, settings: dict, alpha: dict, cost: dict) -> dict:
    """Retrain `alpha` at mix.tokens on a fresh data order (search_seed + frontier.retrain_offset), score it, and
    record what the search paid: `cost` = {train_tokens, train_flops, eval_flops, evaluations}."""
    total = sum(alpha.values())
    alpha = {n: float(alpha[n]) / total for n in pipe.domain_names}
    seed = pipe.search_seed + int(pipe.cfg["frontier"]["retrain_offset"])
    scores = pipe.evaluate_checkpoint(pipe.train_mixture(alpha, family, seed=seed))
    return {
        "family": family,
        "label": FAMILIES[family],
        "settings": settings,
        "seed": pipe.search_seed,
        "alpha": alpha,
        "U": scores["U"],
        "U_std": scores["U_std"],
        "capabilities": scores["capabilities"],
        "retrained": True,
        "retrain_seed": seed,
        "train_tokens": int(cost["train_tokens"]),
        "train_flops": float(cost["train_flops"]),
        "eval_flops": float(cost["eval_flops"]),
        "total_flops": float(cost["train_flops"]) + float(cost["eval_flops"]),
        "evaluations": int(cost["evaluations"]),
    }


def ledger_cost(summary: dict) -> dict:
    """A search ledger's summary (search/cost.py) as a point's cost."""
    return Ledger(
        int(summary["n_params"]), summary["train_tokens"], summary["eval_tokens"], summary["evaluations"]
    ).cost()


def runs_cost(runs: int, tokens: int, eval_tokens: int, params: int, extra_tokens: int = 0) -> dict:
    """`runs` trained runs of `tokens` each evaluated once on `eval_tokens`, plus `extra_tokens` trained (a small
    model's base), on a model of `params` active parameters."""
    return Ledger(params, runs * tokens + extra_tokens, eval_tokens * runs, runs).cost()


def _params(pipe) -> int:
    """Active parameters of the pipeline's model (= all of them for a dense model)."""
    from mergemix.models import active_params, load_checkpoint

    return active_params(load_checkpoint(pipe.base_dir))


def _fixed(pipe, job, _small) -> list[dict]:
    from mergemix.search.baselines import manual_prior

    prior, free = pipe.cfg["frontier"]["manual_prior"], runs_cost(0, 0, 0, 0)
    return [
        _point(pipe, "token", {}, dict(pipe.uniform_mixture), free),
        _point(pipe, "manual", {"prior": prior}, manual_prior(prior, pipe.domain_names), free),
    ]


# the merge variants a MergeMix point or the consistency table can use: config sections patched over the run's
VARIANTS = {
    "merge": {},
    "recovery": {"search": {"calibration": "recovery"}},
    "lora": {"experts": {"kind": "lora"}},
}


def variant(cfg: dict, name: str | None) -> dict:
    """The config with variant `name` applied: one of VARIANTS, or scale<s> (extrapolated merges, s = float)."""
    if name and name.startswith("scale"):
        patch = {"search": {"merge_scale": float(name[len("scale") :])}}
    elif (name or "merge") in VARIANTS:
        patch = VARIANTS[name or "merge"]
    else:
        raise MergeMixError(f"unknown frontier variant '{name}' (choose from {sorted(VARIANTS)} or scale<s>)")
    return {**cfg, **{k: {**cfg[k], **v} for k, v in patch.items()}}


def merge_pipeline(pipe, cfg: dict, expert_tokens: int, budget: int):
    """The pipeline of a MergeMix search at one seed: experts of `expert_tokens` (redrawn per seed when
    frontier.redraw_experts: a rerun trains its own experts on the same base) and `budget` merges."""
    experts = {**cfg["experts"], "tokens": int(expert_tokens)}
    if cfg["frontier"]["redraw_experts"]:
        experts["seed"] = pipe.search_seed
    return pipe.derive(experts=experts, search={**cfg["search"], "budget": int(budget)})


def _mergemix(pipe, job, _small) -> list[dict]:
    corr = job.get("correction")
    cfg = variant(pipe.cfg, corr)
    p = merge_pipeline(pipe, cfg, job["experts"], job["budget"])
    result = p.search_result
    cost = ledger_cost(result["cost"])  # experts (LoRA experts: the same tokens) and every merge evaluated
    if corr == "recovery":  # the token-proportional run it calibrates on (at search_seed) and its evaluation
        extra = runs_cost(
            1, trained_tokens(cfg["mix"]["tokens"], cfg["model"]), p.suite.evaluator.n_tokens(), _params(p)
        )
        cost = {k: cost[k] + extra[k] for k in cost}
    settings = {
        "expert_tokens": int(job["experts"]),
        "budget": int(job["budget"]),
        "correction": corr or "none",
    }
    point = _point(p, "mergemix", settings, result["alpha_star"], cost)
    point.update(
        merged_U=result["verified"].get("U"),
        switched_to_best_merge=result.get("alpha_choice", {}).get("switched_to_best_merge"),
    )
    return [point]


def _refine(pipe, job, _small) -> list[dict]:
    from mergemix.search.refine import refine

    cfg = pipe.cfg
    p = merge_pipeline(pipe, cfg, cfg["experts"]["tokens"], cfg["search"]["budget"])
    out = []
    for design in job["designs"]:
        spec = {
            "budget": int(job["runs"]),
            "trial_tokens": int(cfg["mix"]["tokens"]),
            "correction": design,
            "min_distance": float(cfg["frontier"]["refine_min_distance"]),
        }
        alpha, obj, info = refine(p, spec, pipe.search_seed)
        point = _point(
            p,
            "refine",
            {"runs": int(job["runs"]), "correction": design},
            dict(zip(p.domain_names, map(float, alpha))),
            ledger_cost(obj.ledger.summary()),
        )
        point.update(answer=info["answer"], trained_runs=info["runs"], trained_runs_U=info["trained_U"])
        out.append(point)
    return out


def _trials(pipe, job, kind: str, trial_tokens: int, small=None):
    """The trial runs of one proxy study (TPE) or RegMix design, at the largest count; (history, objective)."""
    from mergemix.search.baselines import proxy_search, proxy_study_path, regmix

    spec = {
        **pipe.cfg["search"],
        **pipe.cfg["baseline"],
        "baseline": kind,
        "budget": max(job["counts"]),
        "trial_tokens": int(trial_tokens),
        "sampler": "tpe",
        "prior_concentration": 10,
    }
    runner = small or pipe
    if kind == "proxy":
        _, obj = proxy_search(
            runner, spec, pipe.search_seed, proxy_study_path(runner, spec, pipe.search_seed)
        )
    else:
        _, obj = regmix(runner, spec, pipe.search_seed)
    return obj.history, obj, spec


def _prefix_points(
    pipe, family, history, counts, runner, tokens: int, settings, fit, extra_tokens=0
) -> list[dict]:
    """One point per count n: the strategy's answer from its first n runs, charged n runs of `tokens` and their
    evaluations on `runner`'s model (plus `extra_tokens` trained there)."""
    params, eval_tokens = _params(runner), runner.suite.evaluator.n_tokens()
    run_tokens = trained_tokens(tokens, runner.cfg["model"])
    out = []
    for n in sorted(set(counts)):
        alpha = dict(zip(pipe.domain_names, map(float, fit(history[:n]))))
        cost = runs_cost(n, run_tokens, eval_tokens, params, extra_tokens)
        out.append(_point(pipe, family, {**settings, "runs": n}, alpha, cost))
    return out


def _proxy(pipe, job, _small) -> list[dict]:
    from mergemix.search.baselines import best_run

    history, obj, _ = _trials(pipe, job, "proxy", job["trial_tokens"])
    return _prefix_points(
        pipe,
        "proxy",
        history,
        job["counts"],
        pipe,
        job["trial_tokens"],
        {"trial_tokens": int(job["trial_tokens"])},
        lambda h: best_run(h, obj.utility),
    )


def _regmix(pipe, job, _small) -> list[dict]:
    from mergemix.search.baselines import regmix_fit

    history, _, spec = _trials(pipe, job, "regmix", job["trial_tokens"])
    return _prefix_points(
        pipe,
        "regmix",
        history,
        job["counts"],
        pipe,
        job["trial_tokens"],
        {"trial_tokens": int(job["trial_tokens"])},
        lambda h: regmix_fit(h, spec, pipe.search_seed),
    )


def _full(pipe, job, _small) -> list[dict]:
    """Runs of mix.tokens: proxy search's best run after every run, and RegMix fitted on the same runs."""
    from mergemix.search.baselines import best_run, regmix_fit

    t = int(pipe.cfg["mix"]["tokens"])
    history, obj, spec = _trials(pipe, job, "proxy", t)
    return [
        *_prefix_points(
            pipe,
            "proxy_full",
            history,
            job["counts"],
            pipe,
            t,
            {"trial_tokens": t},
            lambda h: best_run(h, obj.utility),
        ),
        *_prefix_points(
            pipe,
            "regmix_full",
            history,
            job["regmix_counts"],
            pipe,
            t,
            {"trial_tokens": t},
            lambda h: regmix_fit(h, spec, pipe.search_seed),
        ),
    ]


def _small(pipe, job, small_model) -> list[dict]:
    """RegMix on a smaller model's proxies (its own base pretrained on the same data, charged), transferred."""
    from mergemix.search.baselines import regmix_fit

    small = pipe.derive(model=small_model)
    history, _, spec = _trials(pipe, job, "regmix", job["trial_tokens"], small=small)
    base = trained_tokens(small.cfg["base"]["tokens"], small_model)
    return _prefix_points(
        pipe,
        "regmix_small",
        history,
        job["counts"],
        small,
        job["trial_tokens"],
        {"trial_tokens": int(job["trial_tokens"]), "model": small_model.get("name")},
        lambda h: regmix_fit(h, spec, pipe.search_seed),
        extra_tokens=base,
    )


# ----------------------------------------------------------------------------------------- consistency ---
def consistency(cfg: dict, points: list[dict], n_boot: int = 1000) -> dict:
    """Do merges (plain, and each of `frontier.consistency`'s variants) rank the mixtures the strategies really
    trained? Spearman rho of merged against trained U over every trained point (mixture x training seed) of the
    frontier, with a bootstrap interval over points; merges at the reference experts, cached by alpha."""
    from mergemix.analysis import rank
    from mergemix.pipeline import Pipeline
    from mergemix.search.run import objective_for

    alphas = [np.array([p["alpha"][n] for n in sorted(p["alpha"])]) for p in points]
    trained = {
        "overall": [p["U"] for p in points],
        **{c: [p["capabilities"][c] for p in points] for c in points[0]["capabilities"]},
    }
    out = {"n_points": len(points), "n_mixtures": len({tuple(np.round(a, 6)) for a in alphas})}
    for name in cfg["frontier"]["consistency"]:
        pipe = Pipeline({**variant(cfg, name), "search_seed": 0}, ".")
        objective = objective_for(pipe)
        merged = [objective(a) for a in alphas]
        pred = {
            "overall": [r["U"] for r in merged],
            **{c: [r["capabilities"][c] for r in merged] for c in merged[0]["capabilities"]},
        }
        res = rank.compare(pred, [trained], n_boot, 0)["spearman"]
        out[name] = {"rho_U": res["overall"], "ci_U": res["interval"]["overall"], "rho": res["capabilities"]}
    return out
