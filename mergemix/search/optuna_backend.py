"""Optuna back-end: a persistent study (SQLite under the cache by default, or any RDB URL such as PostgreSQL)
over the simplex parameterisation of space.py. Workers sharing the storage URL share the study; a heartbeat marks
the trials of a killed worker failed and their mixtures are retried (the evaluation cache makes a retry free if
the merge had already been scored). The uniform point and the priors are enqueued as the first trials."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mergemix.errors import MergeMixError
from mergemix.registry import Registry
from mergemix.search.fanout import forked
from mergemix.search.space import alpha_of_trial, params_from_alpha, suggest_alpha
from mergemix.search.types import Evaluate, Outcome


def _sampler(cls: str, **options):
    def make(seed: int):
        import optuna

        return getattr(optuna.samplers, cls)(seed=seed, **options)

    return make


SAMPLERS = Registry("Optuna sampler", {
    "tpe": _sampler("TPESampler", multivariate=True, constant_liar=True), "cmaes": _sampler("CmaEsSampler"),
    "gp": _sampler("GPSampler"), "qmc": _sampler("QMCSampler", qmc_type="sobol", scramble=True),
    "random": _sampler("RandomSampler")})


def make_sampler(name: str, seed: int):
    return SAMPLERS.get(name)(seed)


def resumable_sampler(path: Path, name: str, seed: int):
    """The sampler of a study that one process runs by ask/tell: restored from `path` (pickled after every tell,
    `save_sampler`), so that a killed and resumed study proposes what the uninterrupted one would have (a fresh
    seeded sampler would replay its first random draws as duplicate trials); fresh when absent or unreadable."""
    import pickle

    try:
        return pickle.loads(path.read_bytes())
    except Exception:  # noqa: BLE001 - absent, cut by a kill or from another Optuna version: start fresh
        return make_sampler(name, seed)


def save_sampler(study, path: Path) -> None:
    import pickle

    from mergemix.artifacts import write_atomic

    write_atomic(path, pickle.dumps(study.sampler))


def ask_tell(study, names: Sequence[str], n: int, run: Evaluate, util: Callable[[dict], float],
             sampler_path: Path | None = None, desc: str = "search") -> None:
    """`n` more trials of a study that this process runs alone: ask, evaluate, record alpha and scores, tell; the
    sampler is saved after every tell when `sampler_path` is given (resumable_sampler)."""
    from tqdm.auto import tqdm

    for _ in tqdm(range(max(0, n)), desc=desc, unit="run"):
        trial = study.ask()
        alpha = suggest_alpha(trial, names)
        result = run(alpha)
        record_trial(trial, names, alpha, result)  # alpha and scores for optuna-dashboard
        study.tell(trial, util(result))
        if sampler_path:
            save_sampler(study, sampler_path)


def fail_orphans(study) -> None:
    """Trials left running by a killed process of this (one-process) study: failed, so they are not counted; the
    restored sampler proposes the interrupted one again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)


def open_study(storage_url: str, study_name: str, names: Sequence[str], sampler):
    import warnings

    import optuna
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():  # the heartbeat retry is marked experimental: not the user's concern
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = RDBStorage(storage_url, heartbeat_interval=5, grace_period=15,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as exc:  # SQLAlchemy raises many kinds
        raise MergeMixError(f"cannot open Optuna storage {storage_url}: {str(exc).splitlines()[0]}") from exc
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, direction="maximize",
                                load_if_exists=True)
    if study.metric_names is None:  # optuna-dashboard labels the objective
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(["U"])
    expected = {f"u_{n}" for n in names}
    for t in study.get_trials(deepcopy=False):  # a running or failed trial may hold only the first few parameters
        if not set(t.params) <= expected or (t.state == TrialState.COMPLETE and set(t.params) != expected):
            raise MergeMixError(f"study '{study_name}' exists with another search space ({sorted(t.params)}); "
                                f"choose another search.study_name")
    return study


def record_trial(trial, names: Sequence[str], alpha, result: Mapping) -> None:
    """A trial's mixture and scores as user attributes (optuna-dashboard shows them next to its value): `alpha`
    ({domain: weight} on the simplex; the parameters u_k are only its encoding), `score/<capability>`, `U`."""
    trial.set_user_attr("alpha", {n: round(float(a), 6) for n, a in zip(names, alpha)})
    for cap, value in result["capabilities"].items():
        trial.set_user_attr(f"score/{cap}", float(value))
    trial.set_user_attr("U", float(result["U"]))


class Progress:
    """A tqdm bar over the study's complete trials (of every worker), updated after each trial."""

    def __init__(self, budget: int, done: int, desc: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=budget, initial=min(done, budget), desc=desc, unit="trial", dynamic_ncols=True)

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        self.bar.update(min(done, self.bar.total) - self.bar.n)
        if trial.value is not None:
            self.bar.set_postfix(U=f"{trial.value:.4f}", best=f"{study.best_value:.4f}")

    def close(self) -> None:
        self.bar.close()


def _worker(storage_url, study_name, names, sampler_name, seed, budget, evaluate, util, only_waiting=False):
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    study = open_study(storage_url, study_name, names, make_sampler(sampler_name, seed))

    def objective(trial):
        alpha = suggest_alpha(trial, names)
        result = evaluate(alpha)
        record_trial(trial, names, alpha, result)
        return util(result)

    done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    progress = Progress(budget, done, f"search ({sampler_name})")
    try:
        if only_waiting:  # the enqueued trials in one process: SQLite has no row locks, two workers could pop one
            waiting = sum(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
            if waiting:
                study.optimize(objective, n_trials=waiting, callbacks=[progress], show_progress_bar=False, catch=())
        elif done < budget:
            study.optimize(objective, callbacks=[MaxTrialsCallback(budget, states=(TrialState.COMPLETE,)), progress],
                           show_progress_bar=False, catch=())
    finally:
        progress.close()
    return optuna


def run_workers(storage_url: str, study_name: str, names: Sequence[str], sampler: str, seed: int, budget: int,
                evaluate: Evaluate, util: Callable[[dict], float], workers: int = 1) -> None:
    """`workers` processes (worker i samples with seed + i) until the study holds `budget` complete trials."""
    args = (storage_url, study_name, list(names), sampler)
    if workers <= 1:
        _worker(*args, seed, budget, evaluate, util)
        return
    if storage_url.startswith("sqlite"):
        _worker(*args, seed, budget, evaluate, util, only_waiting=True)
    ctx = mp.get_context("fork")  # workers inherit the loaded experts and benchmark requests
    procs = [ctx.Process(target=forked, args=(_worker, *args, seed + i, budget, evaluate, util))
             for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise MergeMixError(f"{len(bad)} search worker(s) failed (exit codes {bad})")


def optuna_search(evaluate: Evaluate, names: Sequence[str], cfg: Mapping, seed: int, priors: list[dict],
                  util: Callable[[dict], float]) -> Outcome:
    from optuna.trial import TrialState

    budget, workers = int(cfg["budget"]), int(cfg.get("n_workers", 1))
    storage_url, study_name = cfg["storage"], cfg["study_name"]
    study = open_study(storage_url, study_name, names, make_sampler(cfg["sampler"], seed))
    if not study.trials:
        for point in [np.full(len(names), 1 / len(names)), *[np.array([p[n] for n in names]) for p in priors]]:
            study.enqueue_trial(params_from_alpha(point, names), skip_if_exists=True)
    run_workers(storage_url, study_name, names, cfg["sampler"], seed, budget, evaluate, util, workers)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value)
    alphas = np.array([alpha_of_trial(t.params, names) for t in done])
    return Outcome(alpha_of_trial(best.params, names), None,
                   {"alphas": alphas, "values": [t.value for t in done], "n_trials": len(study.trials),
                    "storage": storage_url, "study_name": study_name})
