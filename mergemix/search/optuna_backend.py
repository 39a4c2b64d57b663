"""Optuna back-end: a persistent study (SQLite under the cache by default, or any RDB URL such as PostgreSQL)
over the simplex parameterisation of space.py, one study per search (study_name_for). Workers sharing the storage
URL share the study; a heartbeat marks the trials of a killed worker failed and their mixtures are retried (the
evaluation cache makes a retry free if the merge had already been scored). The uniform point and the priors are enqueued as the first trials."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mergemix.errors import MergeMixError
from mergemix.registry import Registry
from mergemix.search.fanout import forked, start_workers, thread_share
from mergemix.search.space import alpha_of_trial, params_from_alpha, suggest_alpha
from mergemix.search.types import Evaluate, Outcome


def _sampler(cls: str, **options):
    def make(seed: int):
        import optuna

        return getattr(optuna.samplers, cls)(seed=seed, **options)

    return make


SAMPLERS = Registry(
    "Optuna sampler",
    {
        "tpe": _sampler("TPESampler", multivariate=True, constant_liar=True),
        "cmaes": _sampler("CmaEsSampler"),
        "gp": _sampler("GPSampler"),
        "qmc": _sampler("QMCSampler", qmc_type="sobol", scramble=True),
        "random": _sampler("RandomSampler"),
    },
)


def make_sampler(name: str, seed: int):
    return SAMPLERS.get(name)(seed)


# trial_sampler reseeds the samplers whose state is their random generator; QMC keeps its seed (its scrambling), its
# place in the sequence is in the study's storage
SEEDED_ONCE = ("qmc",)


def trial_sampler(name: str, seed: int, done: int):
    """The sampler that proposes a one-process study's next trial, rebuilt from the study's own storage (nothing
    is read from a file): a killed and resumed study proposes what the uninterrupted one would (a sampler seeded
    once would replay its first random draws as duplicate trials)."""
    if name in SEEDED_ONCE:
        return make_sampler(name, seed)
    return make_sampler(name, int(np.random.SeedSequence([seed, done]).generate_state(1)[0]))


def complete_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def ask_tell(
    study,
    names: Sequence[str],
    n: int,
    run: Evaluate,
    util: Callable[[dict], float],
    sampler: tuple[str, int] | None = None,
    desc: str = "search",
) -> None:
    """`n` more trials of a study that this process runs alone: ask, evaluate, record alpha and scores, tell; with
    `sampler` = (name, seed), each trial's sampler is trial_sampler's (resumable)."""
    from tqdm.auto import tqdm

    for _ in tqdm(range(max(0, n)), desc=desc, unit="run"):
        if sampler:
            study.sampler = trial_sampler(*sampler, complete_count(study))
        trial = study.ask()
        alpha = suggest_alpha(trial, names)
        result = run(alpha)
        record_trial(trial, names, alpha, result)  # alpha and scores for optuna-dashboard
        study.tell(trial, util(result))


def fail_orphans(study) -> None:
    """Trials left running by a killed process of this (one-process) study: failed, so they are not counted;
    trial_sampler proposes the interrupted one again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)


# search settings that say where a study is stored, under which prefix, and how many workers fill it: not what it
# searches, so a search-worker with its own process layout (or a rotated storage password) joins the same study
NOT_STUDY = ("storage", "study_name", "n_workers")


def study_name_for(prefix: str | None, inputs: Mapping) -> str:
    """One study per search in shared storage: the user's `search.study_name` followed by the key of what the
    search's result depends on (search_inputs: models, benchmarks, settings, seed, prior). Another search on the
    same storage gets another study, never this one's trials."""
    from mergemix.artifacts import stage_key

    search = {k: v for k, v in (inputs.get("search") or {}).items() if k not in NOT_STUDY}
    return f"{prefix or 'mergemix'}-{stage_key('search', {**inputs, 'search': search})}"


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
            storage = RDBStorage(
                storage_url,
                heartbeat_interval=5,
                grace_period=15,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
    except Exception as exc:  # SQLAlchemy raises many kinds
        raise MergeMixError(f"cannot open Optuna storage {storage_url}: {str(exc).splitlines()[0]}") from exc
    study = optuna.create_study(
        study_name=study_name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
    )
    if study.metric_names is None:  # optuna-dashboard labels the objective
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(["U"])
    expected = {f"u_{n}" for n in names}
    for t in study.get_trials(
        deepcopy=False
    ):  # a running or failed trial may hold only the first few parameters
        if not set(t.params) <= expected or (t.state == TrialState.COMPLETE and set(t.params) != expected):
            raise MergeMixError(
                f"study '{study_name}' exists with another search space ({sorted(t.params)}); "
                f"choose another search.study_name"
            )
    return study


def record_trial(trial, names: Sequence[str], alpha, result: Mapping) -> None:
    """A trial's mixture and scores as numeric user attributes, which optuna-dashboard sorts and plots:
    `alpha/<domain>` (the weights on the simplex; the parameters u_k are only their encoding), `score/<capability>`,
    `U`."""
    for n, a in zip(names, alpha):
        trial.set_user_attr(f"alpha/{n}", round(float(a), 6))
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
        if (
            only_waiting
        ):  # the enqueued trials in one process: SQLite has no row locks, two workers could pop one
            waiting = sum(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
            if waiting:
                study.optimize(
                    objective, n_trials=waiting, callbacks=[progress], show_progress_bar=False, catch=()
                )
        elif done < budget:
            study.optimize(
                objective,
                callbacks=[MaxTrialsCallback(budget, states=(TrialState.COMPLETE,)), progress],
                show_progress_bar=False,
                catch=(),
            )
    finally:
        progress.close()
    return optuna


def run_workers(
    storage_url: str,
    study_name: str,
    names: Sequence[str],
    sampler: str,
    seed: int,
    budget: int,
    evaluate: Evaluate,
    util: Callable[[dict], float],
    workers: int = 1,
) -> None:
    """`workers` processes (worker i samples with seed + i) until the study holds `budget` complete trials."""
    args = (storage_url, study_name, list(names), sampler)
    if workers <= 1:
        _worker(*args, seed, budget, evaluate, util)
        return
    if storage_url.startswith("sqlite"):
        _worker(*args, seed, budget, evaluate, util, only_waiting=True)
    ctx = mp.get_context("fork")  # workers inherit the loaded experts and benchmark requests
    share = thread_share(workers)  # this process waits: the workers share its threads
    procs = [
        ctx.Process(
            target=forked, args=(_worker, *args, seed + i, budget, evaluate, util), kwargs={"threads": share}
        )
        for i in range(workers)
    ]
    start_workers(procs, share)
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise MergeMixError(f"{len(bad)} search worker(s) failed (exit codes {bad})")


def optuna_search(
    evaluate: Evaluate,
    names: Sequence[str],
    cfg: Mapping,
    seed: int,
    priors: list[dict],
    util: Callable[[dict], float],
) -> Outcome:
    from optuna.trial import TrialState

    budget, workers = int(cfg["budget"]), int(cfg.get("n_workers", 1))
    storage_url, study_name = cfg["storage"], cfg["study_name"]
    study = open_study(storage_url, study_name, names, make_sampler(cfg["sampler"], seed))
    if not study.trials:
        for point in [
            np.full(len(names), 1 / len(names)),
            *[np.array([p[n] for n in names]) for p in priors],
        ]:
            study.enqueue_trial(params_from_alpha(point, names), skip_if_exists=True)
    run_workers(storage_url, study_name, names, cfg["sampler"], seed, budget, evaluate, util, workers)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value)
    alphas = np.array([alpha_of_trial(t.params, names) for t in done])
    return Outcome(
        alpha_of_trial(best.params, names),
        None,
        {
            "alphas": alphas,
            "values": [t.value for t in done],
            "n_trials": len(study.trials),
            "storage": storage_url,
            "study_name": study_name,
        },
    )
