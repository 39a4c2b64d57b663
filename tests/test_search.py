from pathlib import Path

import numpy as np
import pytest

from mergemix.errors import MergeMixError
from mergemix.search.design import seed_mixtures
from mergemix.search.evalcache import EvalCache
from mergemix.search.surrogate import Surrogate, fine_search
from mergemix.simplex import check_weights, grid, grid_size

LGBM = {
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 7,
    "min_data_in_leaf": 3,
    "min_data_in_bin": 1,
    "verbose": -1,
}


def test_grid_covers_the_simplex():
    g = grid(4, 3)
    assert len(g) == grid_size(4, 3) == 20
    assert np.allclose(g.sum(1), 1) and (g >= 0).all()
    assert all(any(np.allclose(row, np.eye(4)[i]) for row in g) for i in range(4))


def test_seed_design():
    prior = {"a": 0.7, "b": 0.1, "c": 0.1, "d": 0.1}
    s = seed_mixtures(list("abcd"), 40, 3, [prior], 10, seed=0)
    assert s.shape == (40, 4) and np.allclose(s.sum(1), 1) and (s >= 0).all()
    assert len({tuple(np.round(r, 4)) for r in s}) == 40
    assert any(np.allclose(r, [0.25] * 4) for r in s) and any(np.allclose(r, [0.7, 0.1, 0.1, 0.1]) for r in s)
    assert np.array_equal(s, seed_mixtures(list("abcd"), 40, 3, [prior], 10, seed=0))


def test_surrogate_finds_a_known_interior_optimum():
    """Capabilities that saturate in their own domain's weight: U's optimum is known analytically."""
    rng = np.random.default_rng(0)
    target = np.array([0.4, 0.3, 0.2, 0.1])

    def caps(a):
        return {f"c{i}": 1 - (np.atleast_2d(a)[:, i] - target[i]) ** 2 * 4 for i in range(4)}

    seeds = np.vstack([grid(4, 3), rng.dirichlet(np.ones(4), 40)])
    sur = Surrogate(LGBM).fit(seeds, caps(seeds))
    alpha, _pred = fine_search(sur, 4, 20000, 50, 0, extra=seeds)
    assert np.allclose(alpha.sum(), 1)
    assert np.abs(alpha - target).max() < 0.12, alpha


def test_specialist_objective_weights_its_domain():
    rng = np.random.default_rng(1)
    seeds = rng.dirichlet(np.ones(3), 60)
    sur = Surrogate(LGBM).fit(seeds, {"x": seeds[:, 0], "y": seeds[:, 1]})
    alpha, _ = fine_search(sur, 3, 5000, 20, 0, objective="y")
    assert alpha[1] > 0.7


def test_eval_cache_evaluates_each_alpha_once(tmp_path):
    calls = []
    cache = EvalCache(tmp_path / "c.jsonl")
    for a in ([0.5, 0.5], [0.5, 0.5], [0.2, 0.8]):
        cache.get_or_eval(a, lambda a=a: calls.append(a) or {"U": sum(a)})
    assert len(calls) == 2 and cache.hits == 1
    again = EvalCache(tmp_path / "c.jsonl")  # a resumed search reads what was evaluated
    again.get_or_eval([0.2, 0.8], lambda: pytest.fail("re-evaluated"))


def _evaluate_shared(path: str, log: str, alphas: list) -> None:
    """One search process: evaluates `alphas` through the shared cache, logging each real evaluation."""
    import time

    cache = EvalCache(path)

    def run(a):
        time.sleep(0.02)  # long enough for the other process to ask for the same merge meanwhile
        with open(log, "a") as fh:
            fh.write(f"{a}\n")
        return {"U": float(sum(a)), "capabilities": {}}

    for a in alphas:
        assert cache.get_or_eval(a, lambda a=a: run(a))["U"] == pytest.approx(sum(a))


def test_eval_cache_is_shared_by_processes_and_sees_their_later_lines(tmp_path):
    """Two processes asking for the same merges at once evaluate each once; a cache opened earlier reads the
    lines another process appended later instead of evaluating again."""
    import multiprocessing as mp

    path, log = str(tmp_path / "cache.jsonl"), str(tmp_path / "evaluations.log")
    early = EvalCache(path)
    alphas = [[i / 10, 1 - i / 10] for i in range(10)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_evaluate_shared, args=(path, log, alphas[::step])) for step in (1, -1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    evaluated = Path(log).read_text().splitlines()
    assert sorted(evaluated) == sorted(map(str, alphas))  # every merge once, by one of the two
    assert early.get_or_eval(alphas[3], lambda: pytest.fail("evaluated again")) == {
        "U": 1.0,
        "capabilities": {},
    }
    assert early.joined == 1 and early.hits == early.misses == 0  # evaluated by another process meanwhile


@pytest.mark.parametrize(
    "w, message",
    [
        ([0.5, 0.5 + 2e-6], "sum to 1"),
        ([1.0, 0.0, 0.0], "have 3 entries"),
        ({"a": 1.0}, "miss domains"),
    ],
)
def test_check_weights(w, message):
    with pytest.raises(MergeMixError, match=message):
        check_weights(w, ["a", "b"])
    assert check_weights([0.5, 0.5 + 5e-7], ["a", "b"])


def test_one_mixture_reached_by_two_float_paths_has_one_canonical_form():
    """Normalising in another order moves a weight by an ulp; the canonical weights (and so the cache key) agree."""
    raw = np.array([0.3557, 0.2275, 0.281, 0.1358]) * 3.7
    a, b = raw / raw.sum(), raw[::-1] / raw[::-1].sum()
    b = b[::-1]
    names = ["code", "math", "prose", "sft"]
    wa = check_weights(list(a), names)
    assert wa == check_weights(list(b), names) == check_weights([np.nextafter(x, 1) for x in a], names)
    assert wa == check_weights(wa, names)  # idempotent


def test_try_eval_skips_a_merge_another_process_holds(tmp_path):
    from mergemix.artifacts import locked
    from mergemix.search.evalcache import alpha_key

    cache, alpha = EvalCache(tmp_path / "c.jsonl"), [0.3, 0.7]
    with locked(cache._lock_path(alpha_key(alpha))):  # a second open file description: flock conflicts
        assert cache.try_eval(alpha, lambda: pytest.fail("evaluated while held")) is False
    assert cache.try_eval(alpha, lambda: {"U": 1.0}) is True and cache.misses == 1
    assert cache.try_eval(alpha, lambda: pytest.fail("evaluated twice")) is True
