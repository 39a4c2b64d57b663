"""Stage 7, search: alpha* over the simplex of expert weights, each candidate scored as the merge theta(alpha)
(search/run.py), with its seeds, surrogate and the verified merge, in one tracked run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergemix import artifacts
from mergemix.artifacts import ArtifactStore
from mergemix.loggers import Tracker, report_search
from mergemix.stages.keys import config_inputs


def search_inputs(
    store: ArtifactStore,
    cfg: dict,
    base_dir: Path,
    expert_dirs: dict[str, Path],
    suite_key: str,
    seed: int,
    prior: dict[str, float],
) -> dict:
    """What determines alpha*: the merged models, the benchmarks, the search settings, its seed and prior."""
    inputs = {
        "base": store.ref(base_dir),
        "experts": {n: store.ref(p) for n, p in expert_dirs.items()},
        "suite": suite_key,
        **config_inputs(cfg, "search"),
        "seed": seed,
        "prior": prior,
    }
    if (cfg["search"].get("calibration") or "none") != "none":  # calibrated on a trained mixture run
        inputs.update(mix=cfg["mix"], calibration_noise="paired")
    return inputs


def study_path(store: ArtifactStore, key: str) -> Path:
    """The search's Optuna study (its trials survive a killed search)."""
    path = store.root / "studies" / f"{key}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run(store: ArtifactStore, tracker: Tracker, space: Any, inputs: dict, merge_cache: Path) -> Path:
    """The search artifact (search.json, mixture.yaml, seeds.csv). `space` is what search/run.py searches: the
    pipeline, or an ExpertSpace over other experts of its base."""
    from mergemix.search.optuna_backend import study_name_for
    from mergemix.search.run import run_search

    key = artifacts.stage_key("search", inputs)
    study = study_path(store, key), study_name_for(inputs["search"].get("study_name"), inputs)
    with tracker.stage("search", "search", {"cache_key": key, "inputs": inputs}) as tracked:
        path = store.get_or_build("search", inputs, lambda tmp: run_search(space, tmp, merge_cache, *study))
        if tracked.active:
            report_search(tracked, path, space.domain_names)
    return path
