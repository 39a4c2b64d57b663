"""Local search workers: the same search on W = 1 and W = 2 forked workers (`search.n_workers`), each time from
the cached base and experts with a fresh evaluation cache; both must find the same alpha*.

    .venv/bin/python -m bench.workers [--quick]     # this section alone"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import yaml

from bench.common import alternate, med, ratio

# the micro testbed (quick) or its search on the tiny model; the budget is the search's evaluations
SETTINGS = {
    "quick": ["experiment=micro"],
    # tiny's batches are 4x micro's: the micro runs' warm-ups must fit in their one or two steps
    "full": [
        "experiment=micro",
        "model=tiny",
        "search.budget=24",
        "experts.warmup_steps=1",
        "mix.warmup_steps=1",
    ],
}
UNCACHED = ("search", "evalcache", "studies", "mixture", "eval")  # what a fresh search recomputes


def _cfg(root: Path, overrides: list[str]) -> dict:
    from mergemix.cli import compose, to_plain

    return to_plain(compose([*overrides, "logger=none", f"paths.root={root}", f"paths.run_dir={root}/run"]))


def prepare(work: Path, overrides: list[str]) -> Path:
    """Tokenizer, benchmarks, base and experts in work/built (trained once, outside the timing)."""
    from mergemix.pipeline import Pipeline

    root = work / "built"
    cfg = _cfg(root, overrides)
    pipe = Pipeline(cfg, cfg["paths"]["run_dir"])
    pipe.expert_dirs, pipe.suite_key  # noqa: B018 -- trains and caches them
    return root


def search_once(built: Path, work: Path, overrides: list[str], workers: int, tag: str) -> tuple[float, list]:
    """Seconds of one search on `workers` workers from a fresh evaluation cache, and its alpha*."""
    from mergemix.pipeline import Pipeline

    root = work / tag
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(built / "cache", root / "cache", ignore=shutil.ignore_patterns(*UNCACHED))
    cfg = _cfg(root, [*overrides, f"search.n_workers={workers}"])
    t0 = time.perf_counter()
    search_dir = Pipeline(cfg, cfg["paths"]["run_dir"]).search_dir
    seconds = time.perf_counter() - t0
    alpha = yaml.safe_load((search_dir / "mixture.yaml").read_text())["alpha_star"]
    shutil.rmtree(root, ignore_errors=True)
    return seconds, alpha


def run(quick: bool, work: Path, repeats: int) -> tuple[dict, list[str]]:
    import torch

    overrides = SETTINGS["quick" if quick else "full"]
    built = prepare(work, overrides)
    alphas: dict[int, list] = {}
    rounds = iter(range(10**6))

    def side(w: int):
        def go() -> float:
            seconds, alphas[w] = search_once(built, work, overrides, w, f"w{w}-{next(rounds)}")
            return seconds

        return go

    t = alternate({"W1": side(1), "W2": side(2)}, repeats)  # the untimed round loads what every search reuses
    row = {
        "setting": " ".join(overrides),
        "torch_threads": torch.get_num_threads(),
        "W1_s": med(t["W1"]),
        "W2_s": med(t["W2"]),
        "speedup": ratio(t["W1"], t["W2"]),
        "same_alpha": alphas[1] == alphas[2],
        "alpha_star": alphas[1],
        "rounds_s": {k: [round(x, 2) for x in v] for k, v in t.items()},
    }
    notes = [] if row["same_alpha"] else [f"search workers: W=2 found {alphas[2]}, W=1 {alphas[1]}"]
    return row, notes


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    from bench.bench import quiet

    quiet()
    with tempfile.TemporaryDirectory(prefix="mergemix-bench-") as tmp:
        print(json.dumps(run(args.quick, Path(tmp), args.repeats), indent=2))
