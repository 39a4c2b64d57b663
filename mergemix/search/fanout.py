"""Merge evaluations fanned out over workers, one mechanism for every back-end: the shared evaluation cache
(evalcache.py) with a lock per merge. Workers evaluate into the cache; the search then reads every result in its
own order, so a W-worker search records the same evaluations and finds the same alpha* as a one-worker search,
and no merge is evaluated twice.

- Local workers (`search.n_workers=W`): W-1 forked processes share the loaded experts and benchmarks; each takes
  every W-th merge of a batch that a back-end knows in advance (seed designs, grids, rounds). The Optuna back-ends
  share their study instead (optuna_backend.run_workers), over the same cache.
- Workers on other machines or GPUs: `mergemix search-worker <the search's overrides>` (join.py) with paths on a
  shared file system, one per GPU (CUDA_VISIBLE_DEVICES=i) or per node.

Threads: a fan-out over W processes gives each torch threads ÷ W of the parent's torch threads (all cores, or
trainer.num_threads), the parent included while it evaluates its share; W workers on C cores run C threads, not
C + W - 1 that stall each other."""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from mergemix.errors import MergeMixError
from mergemix.log import log


def rotated(items: Sequence, start: int) -> list:
    """`items` starting at position `start` (mod len) and wrapping around: workers that start apart collide
    least."""
    start = start % max(1, len(items))
    return [*items[start:], *items[:start]]


def forked(target: Callable, *args, threads: int = 1) -> None:
    """Run `target(*args)` in a forked worker on `threads` torch threads. OpenMP's thread pool does not survive
    fork: a child that enters a parallel region the parent had used waits forever (torch's DataLoader workers run
    one thread for this reason). One thread avoids the pool; more are safe when the child was forked from a thread
    that never entered OpenMP (start_workers), since the pool is the forking thread's."""
    import torch

    torch.set_num_threads(max(1, threads))
    target(*args)


def thread_share(workers: int) -> int:
    """Torch threads per process when `workers` processes share this process's threads."""
    import torch

    return max(1, torch.get_num_threads() // max(1, workers))


@contextmanager
def threads_for(n: int) -> Iterator[None]:
    """This process on `n` torch threads for the duration of a fan-out, then back to its own."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def start_workers(procs: Sequence, threads: int) -> None:
    """Start forked processes that run `threads` torch threads each; from a fresh thread (no OpenMP pool of its
    own) when that is more than one, so that each child builds its own pool."""

    def start() -> None:
        for p in procs:
            p.start()

    if threads <= 1:
        start()
        return
    t = threading.Thread(target=start, name="mergemix-fork")
    t.start()
    t.join()


def fan_out(work: Callable[[list], None], items: Sequence, workers: int) -> None:
    """Run `work(share)` on `workers` processes: this one and workers-1 forked ones, worker i taking items[i::W].
    A failed worker leaves its merges to the caller's in-order pass; its exit code is reported."""
    if workers <= 1 or len(items) <= 1:
        return
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        raise MergeMixError(
            "search.n_workers > 1 forks local workers, which CUDA does not allow once it is in use: "
            "start one `mergemix search-worker` per GPU instead (CUDA_VISIBLE_DEVICES=i)"
        )
    ctx, share = mp.get_context("fork"), thread_share(workers)
    procs = [
        ctx.Process(target=forked, args=(work, list(items[i::workers])), kwargs={"threads": share})
        for i in range(1, workers)
    ]
    with threads_for(share):
        start_workers(procs, share)
        try:
            work(list(items[0::workers]))
        finally:
            for p in procs:
                p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        log.warning(
            f"search: {len(bad)} local worker(s) failed (exit codes {bad}); their merges are evaluated here"
        )
