"""More search workers: `mergemix search-worker <the search's overrides>` on other machines or GPUs.

- Back-ends that know their merges in advance (surrogate seeds, iterative's first round, grid): the worker
  evaluates that design into the shared evaluation cache (paths on a shared file system), skipping merges another
  worker holds; `mergemix search` then reads them as cache hits, fits, verifies and writes the result as usual.
- Optuna back-ends: the worker joins the study that `mergemix search` fills on a shared database
  (search.storage=postgresql://...) and stops when the study holds the budget.
The workers load the experts once; fanout.py describes the shared mechanism."""

from __future__ import annotations

import os
import socket
import zlib

from mergemix.errors import MergeMixError

SHARED_SCHEMES = ("postgresql", "mysql", "oracle", "mssql")


def joiner_seed(search_seed: int) -> int:
    """Sampler seeds of this machine's workers: unlike the search job's (search_seed + i), they differ per host and
    process, so joined workers never propose the same random mixtures as the job or as each other."""
    return zlib.crc32(f"{search_seed}:{socket.gethostname()}:{os.getpid()}".encode()) % (2**31 - 1024)


def join_search(pipe) -> dict:
    """One more worker on the search that `mergemix search` with the same overrides runs (or will run)."""
    from mergemix.search.backends import DESIGNS
    from mergemix.search.run import objective_for

    s = pipe.cfg["search"]
    if s.get("backend") in DESIGNS:
        return _join_batch(pipe, objective_for(pipe), DESIGNS[s["backend"]])
    url = str(s.get("storage") or "")
    if s.get("backend") != "optuna" or not url.startswith(SHARED_SCHEMES):
        raise MergeMixError(
            "search-worker joins a search that knows its merges in advance (search=surrogate, "
            "iterative, grid; paths on a shared file system), or an Optuna study on a shared database "
            "(search=tpe, cmaes, gp, qmc, random and search.storage=postgresql://user@host/db)"
        )
    return _join_study(pipe, url, objective_for(pipe))


def _join_batch(pipe, objective, design) -> dict:
    """Evaluate the back-end's design into the shared evaluation cache, starting at a place of this worker's own
    and skipping merges that another worker is evaluating."""
    from mergemix.search.fanout import fan_out, rotated

    s = pipe.cfg["search"]
    alphas = list(design(pipe.domain_names, s, pipe.search_seed, [pipe.uniform_mixture]))
    order = rotated(alphas, joiner_seed(pipe.search_seed))
    fan_out(objective.fill, order, int(s.get("n_workers", 1)))
    cached = objective.fill(order)  # what this node's workers left, and a count of the whole design
    return {
        "backend": s["backend"],
        "design": len(alphas),
        "cached": cached,
        "evaluated_here": objective.cache.misses,
        "cache": str(objective.cache.path),
    }


def _join_study(pipe, url: str, objective) -> dict:
    from optuna.trial import TrialState

    from mergemix.search.optuna_backend import make_sampler, open_study, run_workers, study_name_for
    from mergemix.stages.search import search_inputs

    s = pipe.cfg["search"]
    names, seed = pipe.domain_names, joiner_seed(pipe.search_seed)
    name = study_name_for(
        s.get("study_name"),
        search_inputs(
            pipe.store,
            pipe.cfg,
            pipe.base_dir,
            pipe.expert_dirs,
            pipe.suite_key,
            pipe.search_seed,
            pipe.uniform_mixture,
        ),
    )
    open_study(url, name, names, make_sampler(s["sampler"], seed))  # checks the URL and search space
    run_workers(
        url,
        name,
        names,
        s["sampler"],
        seed,
        int(s["budget"]),
        objective,
        objective.utility,
        int(s.get("n_workers", 1)),
    )
    study = open_study(url, name, names, make_sampler(s["sampler"], seed))
    done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    return {"study": name, "complete_trials": done, "budget": int(s["budget"])}
