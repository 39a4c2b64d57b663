"""The paper's search: merge and evaluate N seed mixtures, fit the surrogate, search the simplex, verify."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from mergemix.merging import ExpertBank
from mergemix.models import load_checkpoint
from mergemix.search.design import seed_mixtures
from mergemix.search.evalcache import EvalCache
from mergemix.search.surrogate import Surrogate, fine_search, utility


def cross_validated_spearman(alphas: np.ndarray, scores: dict[str, list[float]], lgbm: dict, seed: int,
                             folds: int = 5) -> dict[str, float]:
    """How well the surrogate ranks unseen mixtures: Spearman rho of out-of-fold predictions, per capability."""
    from scipy.stats import spearmanr

    idx = np.random.default_rng(seed).permutation(len(alphas))
    out = {}
    for cap, y in scores.items():
        y = np.asarray(y)
        pred = np.zeros_like(y)
        for f in range(folds):
            test = idx[f::folds]
            train = np.setdiff1d(idx, test)
            pred[test] = Surrogate(lgbm, seed).fit(alphas[train], {cap: y[train]}).predict(alphas[test])[cap]
        out[cap] = float(spearmanr(pred, y).statistic)
    return out


def _log_trials(pipe, seeds, results, names, verified, alpha) -> None:
    """Every merge as a step of the stage's logger (CSV or one W&B run), α* and its verified scores last."""
    if not pipe.loggers:
        return
    logger = pipe.loggers("search", None)
    rows = [*zip(seeds, results), (alpha, verified)]
    for step, (a, r) in enumerate(rows):
        metrics = {f"alpha/{n}": float(w) for n, w in zip(names, a)}
        metrics.update({f"capability/{c}": v for c, v in r["capabilities"].items()})
        metrics.update({"U": r["U"], "U_std": r["U_std"], "is_alpha_star": float(step == len(rows) - 1)})
        logger.log_metrics(metrics, step=step)
    logger.save()
    logger.finalize("success")
    if pipe.cfg["logger"]["kind"] == "wandb":
        import wandb

        wandb.finish()


def run_surrogate_search(pipe, out_dir: Path, cache_path: Path) -> dict:
    s, names = pipe.cfg["search"], pipe.domain_names
    t0 = time.time()
    bank = ExpertBank.from_paths(pipe.base_dir, pipe.expert_dirs)
    target = load_checkpoint(pipe.base_dir)
    cache = EvalCache(cache_path)
    suite = pipe.suite

    def evaluate(alpha: np.ndarray) -> dict:
        def run():
            bank.merge_into(target, dict(zip(names, map(float, alpha))))
            with pipe.autocast():
                return suite.evaluate(target)
        return cache.get_or_eval(alpha, run)

    seeds = seed_mixtures(names, int(s["n_seeds"]), int(s["grid_resolution"]), [pipe.uniform_mixture],
                          float(s["prior_concentration"]), pipe.seed)
    results = [evaluate(a) for a in tqdm(seeds, desc="search: seed merges", unit="merge")]
    caps = sorted(results[0]["capabilities"])
    scores = {c: [r["capabilities"][c] for r in results] for c in caps}
    surrogate = Surrogate(s["lgbm"], pipe.seed).fit(seeds, scores)
    alpha, predicted = fine_search(surrogate, len(names), int(s["n_candidates"]), int(s["top_k"]), pipe.seed,
                                   s["objective"], extra=seeds)
    predicted["U"] = float(utility(predicted, s["objective"]))
    verified = evaluate(alpha)
    u_seeds = [r["U"] if s["objective"] == "macro" else r["capabilities"][s["objective"]] for r in results]
    best = int(np.argmax(u_seeds))

    with open(out_dir / "seeds.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, *caps, "U", "U_std"])
        for a, r in zip(seeds, results):
            w.writerow([*np.round(a, 6), *(round(r["capabilities"][c], 6) for c in caps), round(r["U"], 6),
                        round(r["U_std"], 6)])
    _log_trials(pipe, seeds, results, names, verified, alpha)
    alpha_star = {n: round(float(a), 6) for n, a in zip(names, alpha)}
    mixture = {"domains": names, "alpha_star": alpha_star, "objective": s["objective"],
               "predicted": {k: round(v, 6) for k, v in predicted.items()},
               "verified": {"U": round(verified["U"], 6), "U_std": round(verified["U_std"], 6),
                            **{c: round(v, 6) for c, v in verified["capabilities"].items()}},
               "best_seed": {"alpha": {n: round(float(a), 6) for n, a in zip(names, seeds[best])},
                             "U": round(u_seeds[best], 6)}}
    (out_dir / "mixture.yaml").write_text(yaml.safe_dump(mixture, sort_keys=False))
    cv = cross_validated_spearman(seeds, scores, s["lgbm"], pipe.seed)
    (out_dir / "search.json").write_text(json.dumps({**mixture, "surrogate_cv_spearman": cv,
                                                     "cache_hits": cache.hits, "evaluations": cache.misses,
                                                     "verified_result": verified,
                                                     "wall_s": round(time.time() - t0, 1)}, indent=2))
    return {"alpha_star": alpha_star, "predicted": mixture["predicted"], "verified": mixture["verified"],
            "best_seed": mixture["best_seed"], "surrogate_cv_spearman": cv, "n_seeds": len(seeds),
            "task_vector_norms": bank.task_vector_norms(), "task_vector_cosines": bank.cosines()}
