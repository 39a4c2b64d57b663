"""Baseline mixture searches that pay with training runs instead of merges (the cost MergeMix replaces).

uniform  the token-proportional mixture (no search)
manual   a prior given by the user
proxy    an Optuna study over lambda; every trial trains a proxy from the base on lambda for `trial_tokens`
regmix   RegMix: Dirichlet samples around the token prior, proxy runs, LightGBM per capability, >= 100k
         simulated mixtures, alpha* = average of the top-k
refine   MergeMix's merged search corrected by a few trained runs (refine.py)"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mergemix.models import load_checkpoint
from mergemix.registry import Registry
from mergemix.search.cost import Ledger, trained_tokens
from mergemix.search.refine import refine
from mergemix.search.surrogate import Surrogate, fine_search, result_utility
from mergemix.simplex import check_weights, dirichlet


class ProxyObjective:
    """lambda -> proxy trained from the base (a cached artifact) -> benchmark result; costs go to the ledger."""

    def __init__(self, pipe, cfg: Mapping, objective: str):
        self.pipe, self.names, self.objective = pipe, pipe.domain_names, objective
        self.spec = {**pipe.cfg["mix"], "tokens": int(cfg["trial_tokens"])}
        self.ledger = Ledger.for_model(load_checkpoint(pipe.base_dir))
        m = pipe.cfg["model"]
        self.run_tokens = trained_tokens(self.spec["tokens"], m)
        self.history: list[tuple[np.ndarray, dict]] = []

    def utility(self, result: dict) -> float:
        return result_utility(result, self.objective)

    def __call__(self, lam) -> dict:
        lam = np.asarray(lam, dtype=float)
        ratios = dict(zip(self.names, map(float, lam / lam.sum())))
        path = self.pipe.train_mixture(ratios, "proxy", self.spec)
        result = self.pipe.evaluate_checkpoint(path)
        self.ledger.train(self.run_tokens)
        self.ledger.evaluation(
            self.pipe.suite.evaluator.n_tokens(), self.utility(result), ratios, result["capabilities"]
        )
        self.history.append((lam, result))
        return result


def proxy_search(pipe, cfg: Mapping, seed: int, study_path) -> tuple[np.ndarray, ProxyObjective]:
    """An Optuna study over lambda (the token-proportional mixture first); alpha* = the best proxy run."""
    from optuna.trial import TrialState

    from mergemix.search.optuna_backend import ask_tell, fail_orphans, make_sampler, open_study
    from mergemix.search.space import alpha_of_trial, params_from_alpha

    obj = ProxyObjective(pipe, cfg, cfg["objective"])
    name = cfg.get("sampler") or "tpe"
    local = not cfg.get("storage")  # this process owns the study: resumable (optuna_backend.trial_sampler)
    study = open_study(
        cfg.get("storage") or f"sqlite:///{study_path}",
        f"proxy-{Path(study_path).stem}",
        obj.names,
        make_sampler(name, seed),
    )  # named by its key (proxy_study_path): one study per search
    if local:
        fail_orphans(study)
    if not study.trials:
        study.enqueue_trial(params_from_alpha([pipe.uniform_mixture[n] for n in obj.names], obj.names))
    # trials of an earlier (killed) run: their proxies are cached artifacts; replaying them charges the ledger
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))[: int(cfg["budget"])]:
        obj(alpha_of_trial(t.params, obj.names))
    remaining = int(cfg["budget"]) - len(obj.history)  # an enqueued (waiting) trial is taken by the first ask
    ask_tell(
        study,
        obj.names,
        remaining,
        obj,
        obj.utility,
        (name, seed) if local else None,
        "proxy-training search",
    )
    return best_run(obj.history, obj.utility), obj


def proxy_study_path(pipe, spec: Mapping, seed: int):
    """The SQLite file of a proxy-training study, keyed like a search: base, baseline settings, benchmarks, seed."""
    from mergemix.artifacts import stage_key

    return pipe.study_path(
        stage_key(
            "search",
            {"base": pipe.store.ref(pipe.base_dir), "baseline": spec, "suite": pipe.suite_key, "seed": seed},
        )
    )


def best_run(history: list[tuple[np.ndarray, dict]], util) -> np.ndarray:
    """Proxy search's answer after these runs: the mixture of the best one."""
    lam = max(history, key=lambda h: util(h[1]))[0]
    return lam / lam.sum()


def regmix_fit(history: list[tuple[np.ndarray, dict]], cfg: Mapping, seed: int) -> np.ndarray:
    """RegMix's answer from these runs: LightGBM per capability, >= 100k simulated mixtures, top-k mean."""
    lams = np.array([lam / lam.sum() for lam, _ in history])
    caps = sorted(history[0][1]["capabilities"])
    sur = Surrogate(cfg["lgbm"], seed).fit(
        lams, {c: [r["capabilities"][c] for _, r in history] for c in caps}
    )
    alpha, _ = fine_search(
        sur,
        lams.shape[1],
        max(100_000, int(cfg["n_candidates"])),
        int(cfg["top_k"]),
        seed,
        cfg["objective"],
        extra=lams,
    )
    return alpha


def regmix(pipe, cfg: Mapping, seed: int) -> tuple[np.ndarray, ProxyObjective]:
    """RegMix: Dirichlet samples around the token prior as proxy runs, then regmix_fit."""
    obj = ProxyObjective(pipe, cfg, cfg["objective"])
    prior = np.array([pipe.uniform_mixture[n] for n in obj.names])
    rng = np.random.default_rng(seed)
    lams = dirichlet(rng, prior, float(cfg["prior_concentration"]) * len(obj.names), int(cfg["budget"]))
    for lam in tqdm(lams, desc="RegMix proxy runs", unit="run"):
        obj(lam)
    return regmix_fit(obj.history, cfg, seed), obj


def manual_prior(prior, names: list[str]) -> dict[str, float]:
    """A user's prior mixture; "equal" gives every domain the same weight."""
    if prior == "equal":
        return {n: 1.0 / len(names) for n in names}
    return check_weights(prior, names, "baseline prior")


def _searched(alpha, obj: ProxyObjective) -> tuple[dict[str, float], dict]:
    return dict(zip(obj.names, map(float, alpha))), {**obj.ledger.summary(), "curve": obj.ledger.curve}


# each: (pipe, baseline cfg, seed, study path) -> (mixture, cost ledger summary)
BASELINES = Registry(
    "baseline",
    {
        "uniform": lambda pipe, cfg, seed, path: (dict(pipe.uniform_mixture), Ledger(0).summary()),
        "manual": lambda pipe, cfg, seed, path: (
            manual_prior(cfg["prior"], pipe.domain_names),
            Ledger(0).summary(),
        ),
        "proxy": lambda pipe, cfg, seed, path: _searched(*proxy_search(pipe, cfg, seed, path)),
        "regmix": lambda pipe, cfg, seed, path: _searched(*regmix(pipe, cfg, seed)),
        "refine": lambda pipe, cfg, seed, path: _searched(*refine(pipe, cfg, seed)[:2]),
    },
)


def baseline_mixture(pipe, cfg: Mapping, seed: int, study_path) -> tuple[dict[str, float], dict]:
    """The baseline's mixture and its cost ledger summary."""
    return BASELINES.get(cfg["baseline"])(pipe, cfg, seed, study_path)
