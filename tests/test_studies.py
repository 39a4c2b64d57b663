"""Optuna studies in shared storage: one study per search (named by its key), alpha as numeric trial attributes for
optuna-dashboard, and a one-process study resumed from its own storage without reading anything from a file."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import micro_cfg

NAMES = ["a", "b", "c"]


def _synthetic(alpha):
    a = np.asarray(alpha)
    caps = {f"c{i}": float(1 - 2 * abs(a[i] - t)) for i, t in enumerate((0.5, 0.3, 0.2))}
    return {"capabilities": caps, "U": float(np.mean(list(caps.values())))}


def test_two_searches_on_one_storage_get_two_studies(micro_run, micro_root, tmp_path):
    """Two TPE searches (other search_seed) on the same SQLite storage: two studies, each with its own trials, and
    two alpha*. With one fixed study name the second search ran no trial and returned the first's alpha*."""
    import optuna

    from mergemix.pipeline import Pipeline

    storage = f"sqlite:///{tmp_path}/shared.db"
    found = {}
    for seed in (31, 32):  # seeds no other test searches with (a search of the same inputs is cached)
        cfg = micro_cfg(
            micro_root,
            "search=tpe",
            "search.budget=6",
            f"search.storage={storage}",
            f"search_seed={seed}",
            f"paths.run_dir={tmp_path}/run{seed}",
        )
        pipe = Pipeline(cfg, cfg["paths"]["run_dir"])
        found[seed] = json.loads((pipe.search_dir / "search.json").read_text())
    names = [found[s]["info"]["study_name"] for s in (31, 32)]
    assert names[0] != names[1] and all(n.startswith("mergemix-") for n in names)
    assert sorted(optuna.get_all_study_names(storage=storage)) == sorted(names)
    for name in names:
        done = optuna.load_study(study_name=name, storage=storage).get_trials(
            states=(optuna.trial.TrialState.COMPLETE,)
        )
        assert len(done) == 6
    assert found[31]["alpha_star"] != found[32]["alpha_star"]


class _Payload:
    """What a hostile user plants as a pickle: unpickling it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


class _Objective:
    """ProxyObjective's interface on a synthetic objective (no training)."""

    def __init__(self, pipe, cfg, objective):
        self.names, self.history = list(NAMES), []

    def utility(self, result):
        return result["U"]

    def __call__(self, lam):
        result = _synthetic(lam)
        self.history.append((np.asarray(lam, float), result))
        return result


def test_proxy_study_resumes_from_its_storage_and_never_unpickles(tmp_path, monkeypatch):
    """proxy_search: the study is named by its key (the study file's name); a pickle planted where the sampler
    used to be restored from is never read, and a killed study resumed from its storage proposes the
    uninterrupted study's trials. Every trial holds alpha/<domain> and U as numbers."""
    import pickle

    import optuna
    from optuna.trial import TrialState

    from mergemix.search import baselines

    monkeypatch.setattr(baselines, "ProxyObjective", _Objective)
    pipe = SimpleNamespace(uniform_mixture={"a": 0.5, "b": 0.3, "c": 0.2})
    marker = tmp_path / "pwned"

    def search(key, budget):
        path = tmp_path / "studies" / f"{key}.db"
        path.parent.mkdir(exist_ok=True)
        path.with_name(f"{path.name}.sampler.pkl").write_bytes(pickle.dumps(_Payload(marker)))
        baselines.proxy_search(pipe, {"budget": budget, "objective": "macro", "sampler": "tpe"}, 0, path)
        study = optuna.load_study(study_name=f"proxy-{key}", storage=f"sqlite:///{path}")
        return [t for t in study.trials if t.state == TrialState.COMPLETE]

    whole = search("0123abcd", 6)
    search("4567cdef", 3)
    resumed = search("4567cdef", 6)  # the next run, with a larger budget, resumes the study
    assert not marker.exists()
    assert [t.params for t in resumed] == [t.params for t in whole]
    for t in whole:
        alpha = [t.user_attrs[f"alpha/{n}"] for n in NAMES]
        assert all(isinstance(a, float) for a in alpha) and sum(alpha) == pytest.approx(1, abs=1e-5)
        assert t.user_attrs["U"] == pytest.approx(t.value) and "alpha" not in t.user_attrs
