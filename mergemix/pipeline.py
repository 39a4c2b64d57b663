"""The MergeMix pipeline: the stages of mergemix/stages chained over a plain config dict (Hydra stays in the CLI).

    data -> tokenizer -> base -> experts -> merge -> evaluate -> search -> mix -> report

Each stage's artifact is content-addressed by what determines it (see artifacts.py): a second run reuses
everything, and a changed input recomputes only what depends on it. This is the one place that wires the stages
together; each cached property below computes one artifact once per pipeline."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from mergemix.artifacts import ArtifactStore, read_manifest
from mergemix.checks import check_config
from mergemix.data import domains as dom
from mergemix.data.tokenizer import load_tokenizer
from mergemix.errors import MergeMixError
from mergemix.loggers import Tracker
from mergemix.simplex import check_weights, token_proportional
from mergemix.stages import base, data, evaluate, experts, merge, mix, report, search, tokenizer, train
from mergemix.stages.keys import READS, config_inputs
from mergemix.stages.validate import check_inputs

__all__ = ["READS", "ExpertSpace", "Pipeline", "config_inputs"]


class Pipeline:
    def __init__(self, cfg: dict, run_dir: str | Path, tracker: Tracker | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.store = ArtifactStore(cfg["paths"]["cache_dir"])
        self.tracker = tracker or Tracker(None, run_dir, "")  # one run per stage (loggers.py)
        self.domain_names = sorted(cfg["domains"]["sources"])
        if not self.domain_names:
            raise MergeMixError("no domains configured (domains.sources is empty)")
        check_config(cfg)  # numbers, named paths, cache directory, storage URL: before anything reads them
        self.seed = int(cfg["seed"])  # corpus split, tokenizer, base, experts, benchmarks
        self.search_seed = int(cfg.get("search_seed", self.seed))  # search and mixture-training data order
        threads = cfg["trainer"].get("num_threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.validate()

    def validate(self) -> None:
        """Check what can be checked before any work starts, so bad input fails in seconds."""
        check_inputs(self.cfg, self.domain_names)

    # ------------------------------------------------------------------------------ data, tokenizer ---
    @property
    def data_cfg(self) -> dict:
        return self.cfg.get("data") or {}

    @cached_property
    def corpus(self) -> dict[str, Path]:
        return data.build_corpus(self.store, self.cfg, self.domain_names, self.seed)

    def shards(self, name: str) -> list[dom.Shard]:
        return data.shards(self.cfg, name, self.corpus[name])

    def docs(self, name: str, split: str):
        return data.docs(self.cfg, name, self.corpus[name], split)

    @cached_property
    def tokenizer_dir(self) -> Path:
        return tokenizer.build_tokenizer(self.store, self.cfg, self.corpus)

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_dir)

    @cached_property
    def token_dirs(self) -> dict[str, Path]:
        return tokenizer.tokenize_domains(self.store, self.cfg, self.corpus, self.tokenizer_dir)

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        return tokenizer.load_arrays(self.token_dirs)

    @cached_property
    def token_counts(self) -> dict[str, int]:
        return {n: len(a) for n, a in self.arrays.items()}

    @cached_property
    def uniform_mixture(self) -> dict[str, float]:
        """The token-proportional baseline (the paper's 'uniform')."""
        return token_proportional(self.token_counts)

    # ------------------------------------------------------------------------ base, experts, mixtures ---
    def check_epochs(self, ratios: dict[str, float], n_tokens: int, label: str) -> None:
        data.check_epochs(self.cfg, self.token_counts, ratios, n_tokens, label)

    @cached_property
    def preflight(self) -> bool:
        """The runs known before any training (base, experts, the uniform mixture), checked at once right after
        the token stage, so that a repetition error does not wait for the base to train."""
        if not self.cfg["base"].get("checkpoint"):
            mixture = self.cfg["base"]["mixture"]
            self.check_epochs(
                self.uniform_mixture if mixture == "token" else mixture, self.cfg["base"]["tokens"], "base"
            )
        for n in self.domain_names:
            self.check_epochs({n: 1.0}, self.cfg["experts"]["tokens"], f"expert:{n}")
        self.check_epochs(self.uniform_mixture, self.cfg["mix"]["tokens"], "mix:uniform")
        return True

    def _train(self, job: train.TrainJob) -> Path:
        """Train (or take from the cache) one checkpoint, after the repetition checks."""
        _ = self.preflight  # the known runs, once, before the first training
        self.check_epochs(job.ratios, job.spec["tokens"], job.desc)
        return train.train_checkpoint(
            job,
            self.cfg,
            self.store,
            self.tracker,
            self.tokenizer_dir,
            self.token_dirs,
            self.evaluate_checkpoint,
        )

    @cached_property
    def base_dir(self) -> Path:
        b = self.cfg["base"]
        return base.user_base(b) or self._train(
            base.base_job(b, self.domain_names, self.uniform_mixture, self.seed)
        )

    @cached_property
    def expert_dirs(self) -> dict[str, Path]:
        return {n: self.expert_dir(n) for n in self.domain_names}

    def expert_dir(self, name: str, ratios: dict[str, float] | None = None) -> Path:
        """One domain's expert (jobs training different experts in parallel share the base through the cache), or
        with `ratios` an expert named `name` trained on that mixture of domains (a coarse group of the
        hierarchical search)."""
        spec = {k: v for k, v in self.cfg["experts"].items() if k != "seed"}
        seed = self.cfg["experts"].get(
            "seed"
        )  # a rerun's fresh experts on the same base (the frontier's seeds)
        return self._train(
            experts.expert_job(name, spec, self.base_dir, self.seed if seed is None else int(seed), ratios)
        )

    def derive(self, **sections) -> Pipeline:
        """This pipeline with whole config sections replaced (another model, a checkpoint as the base): what the
        new inputs determine is rebuilt, everything else comes from the shared cache."""
        return Pipeline({**self.cfg, **sections}, self.run_dir, self.tracker)

    def train_mixture(
        self, ratios: dict[str, float], label: str, spec: dict | None = None, seed: int | None = None
    ) -> Path:
        """Train the base on `ratios` (the mid-training run, or a proxy run with another `spec`); `seed` (data
        order) defaults to search_seed."""
        ratios = check_weights(ratios, self.domain_names, f"mixture '{label}'")  # before the base is built
        seed = self.search_seed if seed is None else int(seed)
        return self._train(
            mix.mixture_job(
                ratios,
                label,
                spec or self.cfg["mix"],
                self.base_dir,
                seed,
                evaluate=self.tracker.kind == "wandb",
            )
        )

    # ------------------------------------------------------------------------------------- evaluation ---
    @cached_property
    def task_dir(self) -> Path:
        return evaluate.build_tasks(self.store, self.cfg, self.corpus, self.tokenizer_dir, self.seed)

    @cached_property
    def suite(self):
        return evaluate.load_suite(self.cfg, self.task_dir, self.tokenizer)

    @property
    def suite_key(self) -> str:
        return evaluate.suite_key(self.cfg, self.task_dir)

    def autocast(self):
        return evaluate.autocast(self.cfg["trainer"])

    def eval_dir(self, path: Path) -> Path:
        """The stored scores of a checkpoint, cached by (checkpoint, benchmark suite)."""
        return evaluate.score_checkpoint(
            self.store, path, self.suite_key, lambda: self.suite, self.cfg["trainer"]
        )

    def evaluate_checkpoint(self, path: Path) -> dict:
        return json.loads((self.eval_dir(path) / "scores.json").read_text())

    # ----------------------------------------------------------------------------------- merge, search ---
    @property
    def merge_cache_path(self) -> Path:
        return merge.merge_cache_path(
            self.store,
            self.base_dir,
            self.expert_dirs,
            self.suite_key,
            float(self.cfg["search"].get("merge_scale", 1.0)),
        )

    @cached_property
    def search_dir(self) -> Path:
        inputs = search.search_inputs(
            self.store,
            self.cfg,
            self.base_dir,
            self.expert_dirs,
            self.suite_key,
            self.search_seed,
            self.uniform_mixture,
        )
        return search.run(self.store, self.tracker, self, inputs, self.merge_cache_path)

    def study_path(self, key: str) -> Path:
        return search.study_path(self.store, key)

    @property
    def alpha_star(self) -> dict[str, float]:
        return read_manifest(self.search_dir)["alpha_star"]

    @property
    def search_result(self) -> dict:
        return json.loads((self.search_dir / "search.json").read_text())

    # ------------------------------------------------------------------------------------------ the run ---
    def run(self) -> dict:
        """All stages; writes table.{md,csv,png}, mixture.yaml and summary.json into the run directory."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rows = {"base": self.evaluate_checkpoint(self.base_dir)}
        for name, path in self.expert_dirs.items():
            rows[f"expert:{name}"] = self.evaluate_checkpoint(path)
        found = self.search_result
        alpha = found["alpha_star"]
        total = sum(alpha.values())  # alpha* is stored rounded to 6 decimals
        mixtures = {
            "uniform": self.train_mixture(self.uniform_mixture, "uniform"),
            "mergemix": self.train_mixture({d: w / total for d, w in alpha.items()}, "mergemix"),
        }
        rows["uniform (trained)"] = self.evaluate_checkpoint(mixtures["uniform"])
        rows["mergemix (trained)"] = self.evaluate_checkpoint(mixtures["mergemix"])
        rows["mergemix (merge)"] = found["verified_result"]
        exports = self.write_exports()
        paths = {
            "base": str(self.base_dir),
            "search": str(self.search_dir),
            "experts": {k: str(v) for k, v in self.expert_dirs.items()},
            "mixtures": {k: str(v) for k, v in mixtures.items()},
            **({"alpha_star_checkpoint": str(exports["checkpoint"])} if "checkpoint" in exports else {}),
        }
        alphas, merged = self.seed_merges()
        results = report.RunResults(
            rows,
            found,
            self.search_dir,
            self.domain_names,
            self.uniform_mixture,
            self.token_counts,
            paths,
            merged,
            alphas,
            self.cfg["search"]["lgbm"],
            self.search_seed,
        )
        return report.report_run(self.run_dir, results, self.suite.capabilities, self.capability_domains)

    def seed_merges(self) -> tuple[list, list[dict]]:
        """The search's evaluated merges (seeds.csv) with their full results (items included) from the evaluation
        cache; a merge the cache no longer holds is left out."""
        from mergemix.search.evalcache import EvalCache, alpha_key
        from mergemix.search.run import read_trials

        alphas, _ = read_trials(self.search_dir / "seeds.csv", self.domain_names)
        entries = EvalCache(self.merge_cache_path).entries
        found = [(a, entries[alpha_key(a)]) for a in alphas if alpha_key(a) in entries]
        return [a for a, _ in found], [r for _, r in found]

    @property
    def capability_domains(self) -> dict[str, str | None]:
        return {c: s.get("domain") for c, s in self.cfg["benchmarks"]["capabilities"].items()}

    def write_exports(self) -> dict[str, Path]:
        """alpha* as a mergekit config, a weight YAML and a blend list (and its checkpoint) in the run directory."""
        return merge.export_alpha_star(
            self.run_dir, self.alpha_star, self.base_dir, self.expert_dirs, self.cfg.get("export") or {}
        )

    def expert_report(self) -> dict:
        """Base and expert scores, and each expert's gain on its own capability (paired noise)."""
        rows = {"base": self.evaluate_checkpoint(self.base_dir)}
        names = [self.cfg["expert_domain"]] if self.cfg.get("expert_domain") else self.domain_names
        rows.update({f"expert:{n}": self.evaluate_checkpoint(self.expert_dir(n)) for n in names})
        return report.expert_gains(rows, self.capability_domains, self.suite.capabilities)


class ExpertSpace:
    """The pipeline searched over another set of experts of its base (a hierarchical search's coarse-group
    experts, or one group's sub-experts): the names of `expert_dirs` take the place of the domains, `prior` seeds the
    search in place of the token-proportional mixture, and everything else (base, benchmarks, cache) is the
    pipeline's. Only the search reads the view; training and data stay on the pipeline."""

    def __init__(self, pipe: Pipeline, expert_dirs: dict[str, Path], prior: dict[str, float]):
        self.pipe, self.expert_dirs = pipe, dict(sorted(expert_dirs.items()))
        self.domain_names, self.uniform_mixture = (
            sorted(expert_dirs),
            {n: prior[n] for n in sorted(expert_dirs)},
        )

    def __getattr__(self, name: str):
        return getattr(self.pipe, name)

    search_dir, merge_cache_path = Pipeline.search_dir, Pipeline.merge_cache_path
    alpha_star, search_result = Pipeline.alpha_star, Pipeline.search_result
