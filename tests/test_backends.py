"""Search back-ends on synthetic objectives with known optima, the simplex parameterisation, Optuna studies."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from scipy import stats

from mergemix.errors import MergeMixError
from mergemix.search.backends import get_backend
from mergemix.search.space import alpha_from_params, params_from_alpha

NAMES = ["a", "b", "c"]
TARGET = np.array([0.5, 0.3, 0.2])
CFG = {
    "budget": 40,
    "grid_resolution": 2,
    "prior_concentration": 10,
    "n_candidates": 20000,
    "top_k": 50,
    "objective": "macro",
    "round_concentration": 30,
    "lgbm": {
        "n_estimators": 150,
        "learning_rate": 0.05,
        "num_leaves": 7,
        "min_data_in_leaf": 3,
        "min_data_in_bin": 1,
        "verbose": -1,
    },
}


def synthetic(alpha):
    """Capabilities that each peak where alpha hits TARGET: U is maximal exactly at TARGET."""
    a = np.asarray(alpha)
    caps = {f"c{i}": float(1 - 2 * abs(a[i] - TARGET[i])) for i in range(3)}
    return {"capabilities": caps, "U": float(np.mean(list(caps.values())))}


def test_parameterisation_covers_the_simplex_uniformly():
    rng = np.random.default_rng(0)
    alphas = np.array([alpha_from_params(rng.uniform(size=4)) for _ in range(4000)])
    assert np.allclose(alphas.sum(1), 1) and (alphas >= 0).all()
    for k in range(4):  # Dirichlet(1,1,1,1) marginals are Beta(1, 3)
        assert stats.kstest(alphas[:, k], stats.beta(1, 3).cdf).pvalue > 0.01
    point = np.array([0.1, 0.2, 0.3, 0.4])
    assert np.allclose(alpha_from_params(list(params_from_alpha(point, "wxyz").values())), point)


SLOW = pytest.mark.slow  # ~10 s each on an RDB study: the fast tier keeps TPE, the default Optuna sampler


@pytest.mark.parametrize(
    "backend, sampler, tol",
    [
        ("surrogate", None, 0.15),
        ("iterative", None, 0.15),
        ("grid", None, 0.15),
        ("optuna", "tpe", 0.15),
        *(
            pytest.param("optuna", s, tol, marks=SLOW)
            for s, tol in (("cmaes", 0.15), ("gp", 0.15), ("qmc", 0.2), ("random", 0.2))
        ),
    ],
)
def test_backend_finds_known_optimum(backend, sampler, tol, tmp_path):
    cfg = {
        **CFG,
        "sampler": sampler,
        "storage": f"sqlite:///{tmp_path}/s.db",
        "study_name": "t",
        "n_workers": 1,
    }
    out = get_backend(backend)(synthetic, NAMES, cfg, 0, [{"a": 0.6, "b": 0.2, "c": 0.2}], lambda r: r["U"])
    assert np.isclose(out.alpha.sum(), 1) and (out.alpha >= 0).all()
    assert np.abs(out.alpha - TARGET).max() < tol, out.alpha


def test_unknown_backend_and_sampler():
    from mergemix.search.optuna_backend import make_sampler

    with pytest.raises(MergeMixError, match="unknown search back-end 'annealing'"):
        get_backend("annealing")
    with pytest.raises(MergeMixError, match="unknown Optuna sampler 'nsga9'"):
        make_sampler("nsga9", 0)


def test_bad_storage_and_study_with_another_space(tmp_path):
    from mergemix.search.optuna_backend import make_sampler, open_study

    with pytest.raises(MergeMixError, match="cannot open Optuna storage"):
        open_study(f"sqlite:///{tmp_path}/no/such/dir/s.db", "x", NAMES, make_sampler("random", 0))
    url = f"sqlite:///{tmp_path}/s.db"
    study = open_study(url, "x", NAMES, make_sampler("random", 0))
    study.optimize(lambda t: sum(t.suggest_float(f"u_{n}", 1e-9, 1) for n in NAMES), n_trials=3)
    with pytest.raises(MergeMixError, match="exists with another search space"):
        open_study(url, "x", ["a", "b"], make_sampler("random", 0))
    assert len(open_study(url, "x", NAMES, make_sampler("random", 0)).trials) == 3  # nothing lost


def test_a_trial_caught_between_suggestions_is_not_another_space(tmp_path):
    """A worker killed (or still running) after its first suggestion leaves a trial with only some parameters: the
    study opens; a parameter outside the space is still refused."""
    from mergemix.search.optuna_backend import make_sampler, open_study

    url = f"sqlite:///{tmp_path}/s.db"
    study = open_study(url, "x", NAMES, make_sampler("random", 0))
    study.ask().suggest_float(f"u_{NAMES[0]}", 1e-9, 1)
    assert len(open_study(url, "x", NAMES, make_sampler("random", 0)).trials) == 1
    study.ask().suggest_float("u_other", 1e-9, 1)
    with pytest.raises(MergeMixError, match="exists with another search space"):
        open_study(url, "x", NAMES, make_sampler("random", 0))


WORKER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from mergemix.search.optuna_backend import optuna_search
    from mergemix.search.evalcache import EvalCache
    url, log, budget, workers, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    cache = EvalCache(log + ".cache")

    def evaluate(alpha):
        def run():
            time.sleep(delay)
            with open(log, "a") as fh:
                fh.write(json.dumps(list(map(float, alpha))) + "\\n")
            return {"U": float(-np.sum((np.asarray(alpha) - 1 / 3) ** 2)), "capabilities": {}}
        return cache.get_or_eval(alpha, run)

    cfg = {"budget": budget, "n_workers": workers, "storage": url, "study_name": "s", "sampler": "random"}
    optuna_search(evaluate, ["a", "b", "c"], cfg, 0, [], lambda r: r["U"])
""")


def _complete(url, name="s"):
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_two_workers_share_a_sqlite_study(tmp_path):
    url, log = f"sqlite:///{tmp_path}/s.db", tmp_path / "calls.jsonl"
    res = subprocess.run(
        [sys.executable, "-c", WORKER, url, str(log), "12", "2", "0.05"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    done = _complete(url)
    assert len(done) >= 12
    numbers = [t.number for t in done]
    assert len(numbers) == len(set(numbers))
    calls = log.read_text().splitlines()
    assert len(calls) == len(set(calls))  # no mixture evaluated twice


def test_killed_search_resumes_without_losing_or_repeating(tmp_path):
    url, log = f"sqlite:///{tmp_path}/s.db", tmp_path / "calls.jsonl"
    args = [sys.executable, "-c", WORKER, url, str(log), "10", "1", "0.2"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(_complete(url))
    assert 0 < before < 10
    res = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(_complete(url)) == 10
    calls = log.read_text().splitlines()
    assert len(calls) == len(set(calls))


def test_gradient_matches_finite_differences(micro_run):
    import torch

    from mergemix.merging import ExpertBank
    from mergemix.models import load_checkpoint
    from mergemix.search.gradient import MergeNLL, dev_requests

    pipe, _ = micro_run
    bank = ExpertBank.from_paths(pipe.base_dir, pipe.expert_dirs)
    model = load_checkpoint(pipe.base_dir).double()
    bank.base_params = {n: p.double() for n, p in bank.base_params.items()}
    bank.deltas = {n: d.double() for n, d in bank.deltas.items()}
    reqs = dev_requests(pipe.tokenizer, pipe.suite.tasks, 10, 64)
    nll = MergeNLL(bank, model, reqs, pipe.tokenizer.pad_token_id)
    z = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.double, requires_grad=True)
    nll(z).backward()
    eps = 1e-3  # central differences; the model keeps some float32 internals (rotary), so no smaller
    for k in range(4):
        dz = torch.zeros(4, dtype=torch.double)
        dz[k] = eps
        with torch.no_grad():
            fd = (nll(z + dz) - nll(z - dz)) / (2 * eps)
        assert abs(float(fd) - float(z.grad[k])) < 1e-3 * max(0.1, abs(float(fd)))


@pytest.mark.slow  # a gradient search through the micro pipeline
def test_gradient_backend_on_micro_pipeline(micro_run, micro_root, tmp_path):
    from conftest import micro_cfg

    from mergemix.pipeline import Pipeline

    cfg = micro_cfg(
        micro_root,
        "search=gradient",
        "search.budget=3",
        "search.n_candidates=2000",
        "search.top_k=10",
        f"paths.run_dir={tmp_path}",
    )
    pipe = Pipeline(cfg, tmp_path)
    result = pipe.search_result
    nll = result["info"]["dev_nll"]
    assert len(nll) == 3 and nll[-1] < nll[0]  # each Adam step on the dev NLL of the merge lowers it
    assert abs(sum(result["alpha_star"].values()) - 1) < 1e-5 and result["alpha_star"] != pipe.uniform_mixture


@pytest.mark.slow
def test_compare_sweep_writes_comparison(micro_root, tmp_path):
    import json

    def sweep(name: str, strategies: str) -> dict:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "mergemix.cli",
                "compare",
                "-m",
                "experiment=micro",
                "logger=none",
                f"strategy={strategies}",
                "seed=0",
                "search.budget=5",
                "baseline.budget=3",
                "baseline.trial_tokens=4096",
                f"paths.root={micro_root}",
                f"hydra.sweep.dir={tmp_path}/{name}",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads((tmp_path / name / "comparison.json").read_text())

    table = sweep("sweep", "surrogate,proxy,uniform,refine")
    assert set(table) == {"surrogate", "proxy", "uniform", "refine"}
    assert table["proxy"]["train_tokens"] == 3 * 4096  # three proxy runs
    # refine pays the merged search (its experts) and its three trained runs
    assert table["refine"]["train_tokens"] == table["surrogate"]["train_tokens"] + 3 * 4096
    assert table["refine"]["evaluations"] == table["surrogate"]["evaluations"] + 3
    # a rerun finds the study complete and its proxies cached, and still charges the search's cost
    assert sweep("again", "proxy")["proxy"]["train_tokens"] == 3 * 4096
    assert table["surrogate"]["cost_ratio_to_proxy"] > 0 and table["uniform"]["train_tokens"] == 0
    assert (tmp_path / "sweep" / "comparison.md").is_file() and (
        tmp_path / "sweep" / "cost_curves.png"
    ).is_file()


@pytest.mark.slow  # a real search stage killed and rerun in subprocesses (the fast tier kills a synthetic study)
@pytest.mark.parametrize("backend", ["surrogate", "tpe"])
def test_killed_search_stage_resumes_to_the_same_result(backend, micro_run, micro_root, tmp_path):
    """SIGKILL the real search stage mid-way, rerun the same command: no merge is evaluated twice, and the result
    equals the uninterrupted search (the micro run's, for the surrogate)."""
    import json
    import shutil

    import yaml

    root = tmp_path / "root"
    shutil.copytree(
        micro_root / "cache",
        root / "cache",
        ignore=shutil.ignore_patterns("search", "evalcache", "studies", "mixture", "eval"),
    )
    args = [
        sys.executable,
        "-m",
        "mergemix.cli",
        "search",
        "experiment=micro",
        "logger=none",
        f"search={backend}",
        f"paths.root={root}",
        f"paths.run_dir={tmp_path}/run",
    ]
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline, cache = time.time() + 300, root / "cache" / "evalcache"
    while time.time() < deadline and sum(len(p.read_text().splitlines()) for p in cache.glob("*.jsonl")) < 4:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((root / "cache").glob("search/*/manifest.json"))  # nothing half-written reads as complete
    res = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    keys = [json.loads(line)["key"] for p in cache.glob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(keys) == len(set(keys))  # no merge evaluated twice across the kill
    search = json.loads(next((root / "cache").glob("search/*/search.json")).read_text())
    if backend == "tpe":
        study = next((root / "cache" / "studies").glob("*.db"))
        assert len(_complete(f"sqlite:///{study}", name=None)) == 12  # the budget exactly, none lost
    else:
        pipe, _ = micro_run
        reference = yaml.safe_load((pipe.search_dir / "mixture.yaml").read_text())["alpha_star"]
        assert search["alpha_star"] == reference
        seeds = next((root / "cache").glob("search/*/seeds.csv")).read_text()
        assert (
            seeds == (pipe.search_dir / "seeds.csv").read_text()
        )  # same search_seed, same trials and scores


def test_compare_job_logs_its_trials_to_wandb(tmp_path, monkeypatch):
    """A real offline W&B run per job, grouped per sweep; a spy on the run records what was logged."""
    import wandb

    from mergemix.analysis.compare import log_to_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    real_init, seen = wandb.init, {"steps": []}

    def spy_init(**kwargs):
        run = real_init(**kwargs)
        seen["init"], real_log = kwargs, run.log
        run.log = lambda data, step=None, **kw: (
            seen["steps"].append((step, data)),
            real_log(data, step=step, **kw),
        )[1]
        return run

    monkeypatch.setattr(wandb, "init", spy_init)
    curve = [
        {
            "evaluations": i + 1,
            "train_tokens": 1000.0,
            "flops": 1e9 * (i + 1),
            "utility": u,
            "best_so_far": max(0.1, u),
            "alpha/a": 0.5,
            "alpha/b": 0.5,
            "capability/x": u,
        }
        for i, u in enumerate([0.1, 0.3, 0.2])
    ]
    result = {
        "strategy": "tpe",
        "seed": 2,
        "alpha": {"a": 0.5, "b": 0.5},
        "U": 0.25,
        "capabilities": {"x": 0.25},
        "cost": {"train_tokens": 1000, "flops": 3e9, "evaluations": 3},
        "curve": curve,
    }
    run_dir = log_to_wandb({"project": "mergemix"}, result, group="compare-sweep", out_dir=tmp_path)
    assert seen["init"]["group"] == "compare-sweep" and seen["init"]["job_type"] == "compare"
    assert seen["init"]["config"]["strategy"] == "tpe" and seen["init"]["settings"].silent
    assert [s for s, _ in seen["steps"]] == [1, 2, 3]
    assert seen["steps"][1][1]["U"] == 0.3 and seen["steps"][1][1]["alpha/a"] == 0.5
    assert seen["steps"][2][1]["cost/flops"] == 3e9 and seen["steps"][2][1]["score/x"] == 0.2
    assert seen["steps"][2][1]["best_U"] == 0.2 and seen["steps"][2][1]["cost/train_tokens"] == 1000.0
    assert list(run_dir.glob("run-*.wandb"))  # the offline run was written


def test_a_resumed_one_process_study_proposes_what_the_uninterrupted_one_would(tmp_path):
    """proxy_search's loop (ask_tell): a kill leaves a running trial; the resumed study fails the orphan, re-proposes
    it (each trial's sampler is seeded by the study's complete trials), and its complete trials equal the
    uninterrupted study's. A sampler seeded once instead replays its first random draws as duplicate trials."""
    from optuna.trial import TrialState

    from mergemix.search import optuna_backend as ob

    def study(name):
        return ob.open_study(f"sqlite:///{tmp_path}/{name}.db", name, NAMES, ob.make_sampler("tpe", 0))

    def complete(s):
        return [tuple(t.params.values()) for t in s.get_trials(states=(TrialState.COMPLETE,))]

    whole = study("whole")
    ob.ask_tell(whole, NAMES, 6, synthetic, lambda r: r["U"], ("tpe", 0))
    for name, sampler in (("resumed", ("tpe", 0)), ("fresh", None)):
        first = study(name)
        ob.ask_tell(first, NAMES, 3, synthetic, lambda r: r["U"], sampler)
        first.ask().suggest_float(f"u_{NAMES[0]}", 1e-9, 1.0)  # killed while evaluating the fourth trial
        again = study(name)
        ob.fail_orphans(again)
        ob.ask_tell(again, NAMES, 3, synthetic, lambda r: r["U"], sampler)
        if sampler is None:
            assert len(set(complete(again))) < len(complete(again)) == 6  # duplicates of its first draws
        else:
            assert complete(again) == complete(whole) and len(set(complete(again))) == 6
