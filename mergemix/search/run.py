"""The search stage: one interface (propose alpha -> merge -> evaluate -> record) shared by every back-end, with
the persistent evaluation cache and the cost ledger; alpha* is verified by a real merge at the end."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from mergemix.errors import mask_secrets
from mergemix.log import log
from mergemix.merging import ExpertBank
from mergemix.models import load_checkpoint
from mergemix.search.backends import get_backend
from mergemix.search.calibration import calibrate, recovery
from mergemix.search.cost import Ledger, trained_tokens
from mergemix.search.evalcache import EvalCache
from mergemix.search.fanout import fan_out
from mergemix.search.surrogate import objective_std, out_of_fold, result_utility


def cross_validated_spearman(
    alphas: np.ndarray, scores: dict[str, list[float]], lgbm: dict, seed: int, folds: int = 5
) -> dict[str, float]:
    """How well the surrogate ranks unseen mixtures: Spearman rho of out-of-fold predictions, per capability."""
    from scipy.stats import spearmanr

    pred = out_of_fold(alphas, scores, lgbm, seed, folds)
    return {cap: float(spearmanr(pred[cap], np.asarray(y)).statistic) for cap, y in scores.items()}


class MergeObjective:
    """alpha -> merged model -> benchmark result, cached by alpha and recorded in the ledger and history.
    `scale` extrapolates the merge (base + scale * sum_k alpha_k tau_k); `calibration` ({"base": capability
    scores, "ratios": r_c}, calibration.py) moves merged scores to the trained scale after the cache (which keeps
    raw scores)."""

    def __init__(
        self,
        pipe,
        cache: EvalCache,
        objective: str = "macro",
        scale: float = 1.0,
        calibration: dict | None = None,
    ):
        self.pipe, self.cache, self.objective = pipe, cache, objective
        self.scale, self.calibration = float(scale), calibration
        self.names = pipe.domain_names
        self.bank = ExpertBank.from_paths(pipe.base_dir, pipe.expert_dirs)
        self.target = load_checkpoint(pipe.base_dir)
        self.ledger = Ledger.for_model(self.target)
        m = pipe.cfg["model"]  # the experts are MergeMix's cost: the tokens they trained
        self.ledger.train(len(self.names) * trained_tokens(pipe.cfg["experts"]["tokens"], m))
        self.history: list[tuple[np.ndarray, dict]] = []

    def utility(self, result: dict) -> float:
        return result_utility(result, self.objective)

    def _run(self, alpha: np.ndarray) -> Callable[[], dict]:
        def run() -> dict:
            self.bank.merge_into(self.target, dict(zip(self.names, map(float, alpha))), self.scale)
            with self.pipe.autocast():
                return self.pipe.suite.evaluate(self.target)

        return run

    def raw(self, alpha) -> dict:
        """The merge's scores as evaluated (cached by alpha), neither calibrated nor recorded."""
        alpha = np.asarray(alpha, dtype=float)
        return self.cache.get_or_eval(alpha, self._run(alpha))

    def fill(self, alphas) -> int:
        """Evaluate into the shared cache each merge of `alphas` that is neither cached nor being evaluated by
        another worker; how many are cached afterwards."""
        alphas = [np.asarray(a, dtype=float) for a in alphas]
        return sum(self.cache.try_eval(a, self._run(a)) for a in alphas)

    def prefill(self, alphas, workers: int) -> None:
        """A batch known in advance, evaluated on `workers` local processes (fanout.py) before it is read."""
        fan_out(self.fill, list(alphas), workers)

    def __call__(self, alpha) -> dict:
        alpha = np.asarray(alpha, dtype=float)
        result = self.raw(alpha)
        if self.calibration:
            result = calibrate(result, self.calibration["base"], self.calibration["ratios"])
        # a cache hit is free here, but costs its evaluation in a standalone search: the ledger counts it
        self.ledger.evaluation(
            self.pipe.suite.evaluator.n_tokens(),
            self.utility(result),
            dict(zip(self.names, map(float, alpha))),
            result["capabilities"],
        )
        self.history.append((alpha, result))
        return result


def recovery_calibration(pipe, objective: MergeObjective) -> dict:
    """Per-capability recovery at the token-proportional mixture: its trained run (the baseline every run
    trains, at mix.tokens and search_seed) against its merge; the trained run is charged to the search."""
    prior = pipe.uniform_mixture
    base = pipe.evaluate_checkpoint(pipe.base_dir)
    merged = objective.raw([prior[n] for n in objective.names])
    trained = pipe.evaluate_checkpoint(pipe.train_mixture(prior, "uniform"))
    m = pipe.cfg["model"]
    objective.ledger.train(trained_tokens(pipe.cfg["mix"]["tokens"], m))
    from mergemix.benchmarks.suite import paired_gap

    noise = paired_gap(merged, base, pipe.suite.capabilities)["capabilities_std"]  # same items: paired
    ratios = recovery(base, merged, trained, gain_std=noise)
    return {
        "base": dict(base["capabilities"]),
        "ratios": ratios,
        "at": dict(prior),
        "merged_gain_std": noise,
        "merged": dict(merged["capabilities"]),
        "trained": dict(trained["capabilities"]),
    }


def objective_for(pipe, cache_path: Path | None = None) -> MergeObjective:
    """The merge objective the config asks for: its scale, and calibrated when search.calibration is set."""
    s = pipe.cfg["search"]
    objective = MergeObjective(
        pipe, EvalCache(cache_path or pipe.merge_cache_path), s["objective"], float(s.get("merge_scale", 1.0))
    )
    if (s.get("calibration") or "none") == "recovery":
        objective.calibration = recovery_calibration(pipe, objective)
    return objective


def choose_alpha(outcome_alpha, verified: dict, searched: list, util, objective, sigmas: float = 2.0) -> dict:
    """alpha*: the back-end's proposal, unless its verified merge scores below the best evaluated merge by more
    than `sigmas` standard deviations of their difference (item bootstrap of each, combined): then the best merge.
    Returns the choice with both candidates, so a report shows them side by side."""
    best_alpha, best = max(searched, key=lambda h: util(h[1]))
    gap = util(best) - util(verified)
    sd = float(np.hypot(objective_std(best, objective), objective_std(verified, objective)))
    switched = bool(gap > sigmas * sd and sd > 0)
    return {
        "alpha": np.asarray(best_alpha if switched else outcome_alpha, dtype=float),
        "result": best if switched else verified,
        "switched": switched,
        "gap": float(gap),
        "gap_std": sd,
        "rule": f"best evaluated merge if it beats the proposal's verified merge by > {sigmas:g} sigma",
        "proposed": {"alpha": [float(a) for a in outcome_alpha], "objective": float(util(verified))},
        "best_merge": {
            "alpha": [float(a) for a in best_alpha],
            "objective": float(util(best)),
            "U": float(best["U"]),
        },
    }


def write_trials(path: Path, history, names, caps: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(f"alpha/{n}" for n in names), *(f"score/{c}" for c in caps), "U", "U_std"])
        for a, r in history:
            w.writerow(
                [
                    *np.round(a, 6),
                    *(round(r["capabilities"][c], 6) for c in caps),
                    round(r["U"], 6),
                    round(r["U_std"], 6),
                ]
            )


def read_trials(path: Path, names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A trials file's alphas [N, K] and score columns (capabilities, U, U_std), keyed by capability. Read by
    position: files written before the columns were named `alpha/<domain>`, `score/<capability>` repeat names."""
    with open(path) as fh:
        header, *rows = list(csv.reader(fh))
    data = np.array(rows, dtype=float).reshape(-1, len(header))
    return data[:, : len(names)], {
        c.removeprefix("score/"): data[:, len(names) + i] for i, c in enumerate(header[len(names) :])
    }


def copy_trials(src: Path, dst: Path, names: list[str]) -> None:
    """A trials file with named columns (also one cached before the columns were named)."""
    alphas, columns = read_trials(src, names)
    caps = [c for c in columns if c not in ("U", "U_std")]
    history = [
        (
            a,
            {
                "capabilities": {c: columns[c][i] for c in caps},
                "U": columns["U"][i],
                "U_std": columns["U_std"][i],
            },
        )
        for i, a in enumerate(alphas)
    ]
    write_trials(dst, history, names, caps)


def run_search(
    pipe, out_dir: Path, cache_path: Path, study_path: Path, study_name: str | None = None
) -> dict:
    """The search artifact; an Optuna back-end fills the study `study_name` (optuna_backend.study_name_for) in
    `search.storage`, by default SQLite at `study_path`."""
    s, names = dict(pipe.cfg["search"]), pipe.domain_names
    s.setdefault("storage", None)
    s["storage"] = s["storage"] or f"sqlite:///{study_path}"
    s["study_name"] = study_name or s.get("study_name")
    t0 = time.time()
    objective = objective_for(pipe, cache_path)
    backend = get_backend(s["backend"])
    outcome = backend(objective, names, s, pipe.search_seed, [pipe.uniform_mixture], objective.utility)
    searched = list(objective.history)
    verified = objective(outcome.alpha)
    caps = sorted(verified["capabilities"])
    write_trials(out_dir / "seeds.csv", searched, names, caps)
    searched = searched or [
        (np.asarray(outcome.alpha), verified)
    ]  # the gradient back-end evaluates only alpha*
    choice = choose_alpha(outcome.alpha, verified, searched, objective.utility, s["objective"])
    best = choice["best_merge"]
    chosen = choice.pop("result")
    alpha_star = {n: round(float(a), 6) for n, a in zip(names, choice.pop("alpha"))}
    mixture = {
        "domains": names,
        "alpha_star": alpha_star,
        "backend": s["backend"],
        "objective": s["objective"],
        "predicted": {k: round(v, 6) for k, v in (outcome.predicted or {}).items()},
        "verified": {
            "U": round(chosen["U"], 6),
            "U_std": round(chosen["U_std"], 6),
            **{c: round(v, 6) for c, v in chosen["capabilities"].items()},
        },
        "best_seed": {
            "alpha": {n: round(a, 6) for n, a in zip(names, best["alpha"])},
            "objective": round(best["objective"], 6),
            "U": round(best["U"], 6),
        },  # U: macro
        "alpha_choice": {
            "switched_to_best_merge": choice["switched"],
            "gap": round(choice["gap"], 6),
            "gap_std": round(choice["gap_std"], 6),
            "rule": choice["rule"],
        },
    }
    if choice["switched"]:
        log.info(
            f"search: the proposal's verified merge scores {100 * choice['gap']:.2f} below the best evaluated "
            f"merge (> 2 sigma, sigma {100 * choice['gap_std']:.2f}): alpha* is that merge; both are in "
            "mixture.yaml"
        )
        mixture["alpha_choice"]["proposed"] = {
            "alpha": dict(zip(names, np.round(choice["proposed"]["alpha"], 6).tolist())),
            "objective": round(choice["proposed"]["objective"], 6),
        }
    (out_dir / "mixture.yaml").write_text(yaml.safe_dump(mixture, sort_keys=False))
    alphas = np.array([a for a, _ in searched])
    cv = (
        cross_validated_spearman(
            alphas,
            {c: [r["capabilities"][c] for _, r in searched] for c in caps},
            s["lgbm"],
            pipe.search_seed,
        )
        if len(searched) >= 10
        else {}
    )
    ledger = objective.ledger.summary()
    with open(out_dir / "cost_curve.csv", "w", newline="") as fh:
        w = csv.DictWriter(
            fh, fieldnames=list(objective.ledger.curve[0]) if objective.ledger.curve else ["none"]
        )
        w.writeheader()
        w.writerows(objective.ledger.curve)
    (out_dir / "search.json").write_text(
        json.dumps(
            {
                **mixture,
                "surrogate_cv_spearman": cv,
                "cache_hits": objective.cache.hits,
                "cost": ledger,
                "evaluations": objective.cache.misses + objective.cache.joined,
                "evaluations_by_workers": objective.cache.joined,
                "verified_result": chosen,
                "wall_s": round(time.time() - t0, 1),
                "calibration": objective.calibration,
                "merge_scale": objective.scale,
                "info": mask_secrets(
                    {k: v for k, v in outcome.info.items() if k not in ("alphas", "results")}
                ),
            },
            indent=2,
            default=float,
        )
    )
    return {
        "alpha_star": alpha_star,
        "predicted": mixture["predicted"],
        "verified": mixture["verified"],
        "best_seed": mixture["best_seed"],
        "surrogate_cv_spearman": cv,
        "n_evaluated": len(searched),
        "cost": ledger,
        "task_vector_norms": objective.bank.task_vector_norms(),
        "task_vector_cosines": objective.bank.cosines(),
    }
