"""Merge evaluations on several workers (search/fanout.py, search/join.py): the same evaluations and alpha* as one
worker, and no merge evaluated twice."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import micro_cfg

from mergemix.errors import MergeMixError
from mergemix.search.fanout import rotated


def test_rotation_visits_every_item_once():
    items = list(range(7))
    for start in (0, 3, 7, 123456):
        order = rotated(items, start)
        assert sorted(order) == items and order[0] == items[start % 7]


def _fresh_root(micro_root, tmp_path, name):
    """The micro run's base and experts, without any evaluation or search."""
    root = tmp_path / name
    shutil.copytree(
        micro_root / "cache",
        root / "cache",
        ignore=shutil.ignore_patterns("search", "evalcache", "studies", "mixture", "eval"),
    )
    return root


def _search(root, *overrides):
    from mergemix.pipeline import Pipeline

    cfg = micro_cfg(root, *overrides)
    pipe = Pipeline(cfg, cfg["paths"]["run_dir"])
    search_dir = pipe.search_dir
    keys = [json.loads(line)["key"] for line in pipe.merge_cache_path.read_text().splitlines()]
    return (
        pipe,
        json.loads((search_dir / "search.json").read_text()),
        (search_dir / "seeds.csv").read_text(),
        keys,
    )


@pytest.fixture
def reference(micro_run):
    pipe, _ = micro_run
    return (
        yaml.safe_load((pipe.search_dir / "mixture.yaml").read_text())["alpha_star"],
        (pipe.search_dir / "seeds.csv").read_text(),
    )


def test_two_local_workers_give_the_one_worker_result(micro_root, tmp_path, reference):
    _, search, seeds, keys = _search(_fresh_root(micro_root, tmp_path, "w2"), "search.n_workers=2")
    assert (search["alpha_star"], seeds) == reference  # same merges, same scores, same alpha*
    assert len(keys) == len(set(keys)) == search["evaluations"]  # no merge evaluated twice
    assert search["evaluations_by_workers"] > 0  # the forked worker did its share


def test_a_joined_worker_evaluates_the_design_the_search_then_reads(micro_root, tmp_path, reference):
    from mergemix.pipeline import Pipeline
    from mergemix.search.join import join_search

    root = _fresh_root(micro_root, tmp_path, "joined")
    cfg = micro_cfg(root)
    joined = join_search(Pipeline(cfg, cfg["paths"]["run_dir"]))
    assert joined["cached"] == joined["design"] == joined["evaluated_here"] == cfg["search"]["budget"]
    _, search, seeds, keys = _search(root)
    assert (search["alpha_star"], seeds) == reference
    assert search["cache_hits"] >= cfg["search"]["budget"] and len(keys) == len(set(keys))


def test_the_gradient_back_end_refuses_workers():
    from mergemix.search.gradient import gradient_search

    with pytest.raises(MergeMixError, match="n_workers=1"):
        gradient_search(None, ["a", "b"], {"n_workers": 2}, 0, [], lambda r: r["U"])


FORK_AFTER_THREADS = """
import sys, torch
from mergemix.search.fanout import fan_out
torch.set_num_threads(2)
x = torch.rand(3000, 3000)
(x[:, None, :50] > x[None, :50, :50]).sum()  # the parent has used OpenMP's thread pool

def work(share):
    y = torch.rand(3000, 3000)
    (y[:, None, :50] > y[None, :50, :50]).sum()  # a parallel region in the forked worker
    open(f"{sys.argv[1]}/done-{share[0]}", "w").close()

fan_out(work, [0, 1], 2)
"""


def test_forked_workers_do_not_hang_on_the_parents_thread_pool(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(Path(__file__).parents[1])}
    try:
        subprocess.run(
            [sys.executable, "-c", FORK_AFTER_THREADS, str(tmp_path)], env=env, timeout=120, check=True
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a forked worker hung in a parallel region (OpenMP's pool does not survive fork)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done-0", "done-1"]


SHARE_THREADS = """
import os, sys, torch
from mergemix.search.fanout import fan_out
PARENT = os.getpid()
torch.set_num_threads(4)
x = torch.rand(3000, 3000)
(x[:, None, :50] > x[None, :50, :50]).sum()  # the parent has used OpenMP's thread pool

def work(share):
    y = torch.rand(3000, 3000)
    (y[:, None, :50] > y[None, :50, :50]).sum()  # a parallel region on the worker's share of threads
    who = "parent" if os.getpid() == PARENT else "child"
    open(f"{sys.argv[1]}/{who}-{torch.get_num_threads()}", "w").close()

fan_out(work, [0, 1], 2)
open(f"{sys.argv[1]}/after-{torch.get_num_threads()}", "w").close()
"""


def test_workers_share_the_parents_threads_and_the_parent_gets_its_own_back(tmp_path):
    """W processes on T threads run T/W each (parent included) during the fan-out; a child with more than one
    thread does not hang on the parent's OpenMP pool."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "4", "PYTHONPATH": str(Path(__file__).parents[1])}
    try:
        subprocess.run([sys.executable, "-c", SHARE_THREADS, str(tmp_path)], env=env, timeout=120, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("a forked worker on two threads hung in a parallel region")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after-4", "child-2", "parent-2"]


class _Process:
    def __init__(self, target, args, kwargs):
        self.kwargs, self.exitcode = kwargs, 0

    def join(self):
        pass


def test_optuna_workers_share_the_threads(monkeypatch):
    """The Optuna back-ends' parent waits while its W workers run: each gets threads / W."""
    import torch

    from mergemix.search import optuna_backend

    started = []
    monkeypatch.setattr(optuna_backend.mp, "get_context", lambda _: type("Ctx", (), {"Process": _Process}))
    monkeypatch.setattr(
        optuna_backend,
        "start_workers",
        lambda procs, threads: started.append((threads, [p.kwargs["threads"] for p in procs])),
    )
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the real count stays as the session's
    optuna_backend.run_workers("postgresql://x", "s", ["a", "b"], "tpe", 0, 4, None, None, workers=2)
    assert started == [(2, [2, 2])]
