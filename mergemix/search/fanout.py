"""Merge evaluations fanned out over workers, one mechanism for every back-end: the shared evaluation cache
(evalcache.py) with a lock per merge. Workers evaluate into the cache; the search then reads every result in its
own order, so a W-worker search records the same evaluations and finds the same alpha* as a one-worker search,
and no merge is evaluated twice.

- Local workers (`search.n_workers=W`): W-1 forked processes share the loaded experts and benchmarks; each takes
  every W-th merge of a batch that a back-end knows in advance (seed designs, grids, rounds). The Optuna back-ends
  share their study instead (optuna_backend.run_workers), over the same cache.
- Workers on other machines or GPUs: `mergemix search-worker <the search's overrides>` (join.py) with paths on a
  shared file system, one per GPU (CUDA_VISIBLE_DEVICES=i) or per node."""

from __future__ import annotations

import multiprocessing as mp
import sys
from collections.abc import Callable, Sequence

from mergemix.errors import MergeMixError
from mergemix.log import log


def rotated(items: Sequence, start: int) -> list:
    """`items` starting at position `start` (mod len) and wrapping around: workers that start apart collide
    least."""
    start = start % max(1, len(items))
    return [*items[start:], *items[:start]]


def forked(target: Callable, *args) -> None:
    """Run `target(*args)` in a forked worker on one torch thread. OpenMP's thread pool does not survive fork: a
    child that enters a parallel region the parent had used waits forever (torch's DataLoader workers do the same
    for this reason); one thread per worker is also what W workers on W cores want."""
    import torch

    torch.set_num_threads(1)
    target(*args)


def fan_out(work: Callable[[list], None], items: Sequence, workers: int) -> None:
    """Run `work(share)` on `workers` processes: this one and workers-1 forked ones, worker i taking items[i::W].
    A failed worker leaves its merges to the caller's in-order pass; its exit code is reported."""
    if workers <= 1 or len(items) <= 1:
        return
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        raise MergeMixError("search.n_workers > 1 forks local workers, which CUDA does not allow once it is in use: "
                            "start one `mergemix search-worker` per GPU instead (CUDA_VISIBLE_DEVICES=i)")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=forked, args=(work, list(items[i::workers]))) for i in range(1, workers)]
    for p in procs:
        p.start()
    try:
        work(list(items[0::workers]))
    finally:
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        log.warning(f"search: {len(bad)} local worker(s) failed (exit codes {bad}); their merges are evaluated here")
