"""More search workers for a running study: `mergemix search-worker <the search's overrides>` on other machines
joins the Optuna study that `mergemix search` fills on a shared database (search.storage=postgresql://...). The
workers load the experts once, score merges into the shared evaluation cache, and stop when the study holds the
budget; the `mergemix search` job then fits, verifies and writes the result as usual."""

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
    from optuna.trial import TrialState

    from mergemix.search.evalcache import EvalCache
    from mergemix.search.optuna_backend import make_sampler, open_study, run_workers
    from mergemix.search.run import MergeObjective

    s = pipe.cfg["search"]
    url = str(s.get("storage") or "")
    if s.get("backend") != "optuna" or not url.startswith(SHARED_SCHEMES):
        raise MergeMixError("search-worker joins a study on a shared database: choose an Optuna search (search=tpe, "
                            "cmaes, gp, qmc, random) and search.storage=postgresql://user@host/db")
    names, seed = pipe.domain_names, joiner_seed(pipe.search_seed)
    open_study(url, s["study_name"], names, make_sampler(s["sampler"], seed))  # checks the URL and search space
    objective = MergeObjective(pipe, EvalCache(pipe.merge_cache_path), s["objective"])
    run_workers(url, s["study_name"], names, s["sampler"], seed, int(s["budget"]), objective, objective.utility,
                int(s.get("n_workers", 1)))
    study = open_study(url, s["study_name"], names, make_sampler(s["sampler"], seed))
    done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    return {"study": s["study_name"], "complete_trials": done, "budget": int(s["budget"])}
