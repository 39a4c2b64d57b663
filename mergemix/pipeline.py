"""The MergeMix pipeline as cached stages over a plain config dict (Hydra stays in the CLI).

    corpus -> tokenizer -> tokens -> base -> experts -> search -> mixtures -> report

Each stage's artifact is content-addressed by what determines it (see artifacts.py): a second run reuses
everything, and a changed input recomputes only what depends on it."""

from __future__ import annotations

import contextlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from mergemix import artifacts
from mergemix.artifacts import ArtifactStore, read_manifest
from mergemix.checks import check_config
from mergemix.data import domains as dom
from mergemix.data import tokens as tok_store
from mergemix.data.tokenizer import load_tokenizer, train_tokenizer
from mergemix.errors import MergeMixError
from mergemix.loggers import StageRun, Tracker, report_scores, report_search, report_training
from mergemix.simplex import check_weights, token_proportional


def _dtype(name):
    return None if not name else getattr(torch, name)


# What each stage reads from the config, as dotted paths (a section stands for all its leaves). A stage's key hashes
# the resolved values at these paths (named by their last part), with the keys of the artifacts it is built from and
# the inputs it is given (a domain's spec, a run's ratios, spec and seed). A setting that no stage lists changes no
# artifact: the process layout, logging, paths, checks and the studies' own settings. tests/test_cache_safety.py
# changes every leaf of the composed config and checks that exactly the stages listing it get new keys.
READS = {
    "corpus": ("seed", "domains.heldout_fraction"),
    "tokenizer": ("tokenizer.vocab_size", "tokenizer.train_chars"),
    "train": ("model", "optim", "trainer.precision", "trainer.gradient_clip_val"),  # base, experts, mixtures
    "benchmarks": ("benchmarks.tasks", "seed"),
    "eval": ("benchmarks.metric", "benchmarks.capabilities", "benchmarks.max_length", "benchmarks.bootstrap",
             "trainer.eval_dtype"),
    "search": ("search",),
}


def config_inputs(cfg: dict, stage: str) -> dict:
    """The config values `stage` reads (READS), by the last part of their path."""
    out = {}
    for dotted in READS[stage]:
        node = cfg
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[dotted.rsplit(".", 1)[-1]] = node
    return out


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
        from mergemix.benchmarks.suite import MC_METRICS, check_task_spec
        from mergemix.benchmarks.tasks import load_jsonl_task

        for name in self.domain_names:
            dom.validate_spec(name, self.cfg["domains"]["sources"][name] or {})
        limit = self.data_cfg.get("max_epochs")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
            raise MergeMixError(f"data.max_epochs must be a positive number or null, got {limit!r}")
        workers = self.data_cfg.get("num_workers", 0)
        if not isinstance(workers, int) or workers < 0:
            raise MergeMixError(f"data.num_workers must be 0 (one per CPU) or a positive integer, got {workers!r}")
        if self.cfg["base"]["mixture"] != "token":
            check_weights(self.cfg["base"]["mixture"], self.domain_names, "base.mixture")
        b = self.cfg["benchmarks"]
        if b["metric"] not in MC_METRICS:
            raise MergeMixError(f"benchmarks.metric must be one of {MC_METRICS}, got '{b['metric']}'")
        for cap, spec in b["capabilities"].items():
            missing = [t for t in spec["tasks"] if t not in b["tasks"]]
            if missing:
                raise MergeMixError(f"capability '{cap}' names unknown tasks {missing}; tasks: {sorted(b['tasks'])}")
        for t, spec in b["tasks"].items():
            check_task_spec(t, spec)
            if spec.get("builder") == "cloze" and spec["domain"] not in self.domain_names:
                raise MergeMixError(f"benchmark '{t}' is built from domain '{spec['domain']}', which is not "
                                    f"configured (domains: {self.domain_names})")
            if spec.get("source") == "jsonl":  # every item, before any work
                load_jsonl_task(t, spec["path"], spec.get("kind"))
        lm = {t: spec for t, spec in b["tasks"].items() if spec.get("source") == "lmeval"}
        if lm:  # names, include paths and offline datasets of lm-eval members, before any work
            from mergemix.benchmarks import lmeval

            lmeval.resolve(lm)
        from mergemix.strategies import check_strategy

        check_strategy(self.cfg["trainer"].get("strategy"))
        from mergemix.training import trainer_passthrough

        trainer_passthrough(self.cfg["trainer"])
        from mergemix.resume import checkpoint_interval

        checkpoint_interval(self.cfg["trainer"].get("checkpoint_every_n_steps"), 1)
        if self.cfg.get("expert_domain") not in (None, *self.domain_names):
            raise MergeMixError(f"expert_domain '{self.cfg['expert_domain']}' is not a configured domain "
                                f"({', '.join(self.domain_names)})")
        s = self.cfg["search"]
        from mergemix.search.backends import get_backend

        get_backend(s["backend"])
        if s.get("sampler"):
            from mergemix.search.optuna_backend import make_sampler
            make_sampler(s["sampler"], 0)
        if (s.get("calibration") or "none") not in ("none", "recovery"):
            raise MergeMixError(f"search.calibration must be none or recovery, got '{s['calibration']}'")
        goal = s["objective"] if isinstance(s["objective"], list) else [s["objective"]]
        if s["objective"] != "macro" and (not goal or any(c not in b["capabilities"] for c in goal)):
            raise MergeMixError(f"search.objective must be 'macro', a capability or a list of capabilities "
                                f"{sorted(b['capabilities'])}, got {s['objective']!r}")
        bl = self.cfg.get("baseline") or {"kind": "none"}
        if bl["kind"] in ("proxy", "regmix"):
            if int(bl["budget"]) < 1:
                raise MergeMixError(f"baseline.budget must be at least 1 proxy run, got {bl['budget']}")
            if int(bl["trial_tokens"]) < self.cfg["model"]["seq_len"] * self.cfg["model"]["batch_size"]:
                raise MergeMixError(f"baseline.trial_tokens must cover at least one batch "
                                    f"({self.cfg['model']['seq_len'] * self.cfg['model']['batch_size']} tokens)")
        for key in ("base", "experts", "mix"):
            if int(self.cfg[key]["tokens"]) < self.cfg["model"]["seq_len"] * self.cfg["model"]["batch_size"]:
                raise MergeMixError(f"{key}.tokens must cover at least one batch "
                                    f"({self.cfg['model']['seq_len'] * self.cfg['model']['batch_size']} tokens)")

    # ------------------------------------------------------------------------------------------- data ---
    @property
    def data_cfg(self) -> dict:
        return self.cfg.get("data") or {}

    @cached_property
    def corpus(self) -> dict[str, Path]:
        """Embedded domains: their documents, split. User domains: fingerprinted only (their files are streamed)."""
        out, d = {}, self.cfg["domains"]
        memo_path = self.store.root / "digests.json"
        memo = artifacts.read_json(memo_path, {})  # file hashes by path, size and mtime: unreadable = none
        n_memo = len(memo)
        for name in self.domain_names:
            spec = d["sources"][name] or {}
            inputs = {"source": dom.source_fingerprint(name, spec, memo), **config_inputs(self.cfg, "corpus")}

            def build(tmp: Path, name=name, spec=spec):
                if spec.get("source", "embedded") != "embedded":
                    parts = dom.shards(name, spec, tmp, d["heldout_fraction"], 1 << 62)
                    return {"docs": "streamed from the domain's files", "swap": not dom.probe(name, parts)}
                train, held = dom.load_embedded(name, spec, self.seed, d["heldout_fraction"])
                (tmp / "train.json").write_text(json.dumps(train))
                (tmp / "heldout.json").write_text(json.dumps(held))
                return {"docs": {"train": len(train), "heldout": len(held)}}

            out[name] = self.store.get_or_build("corpus", inputs, build)
        if len(memo) != n_memo:
            artifacts.write_atomic(memo_path, json.dumps(memo))
        return out

    def shards(self, name: str) -> list[dom.Shard]:
        """The domain's units of tokenising work (about `data.shard_mb` each)."""
        swap = bool(read_manifest(self.corpus[name]).get("swap"))
        return dom.shards(name, self.cfg["domains"]["sources"][name] or {}, self.corpus[name],
                          self.cfg["domains"]["heldout_fraction"],
                          int(float(self.data_cfg.get("shard_mb", 64)) * 2**20), swap)

    def docs(self, name: str, split: str):
        """The domain's documents of one split, streamed in order."""
        return dom.iter_docs(self.shards(name), split)

    @cached_property
    def tokenizer_dir(self) -> Path:
        tc = self.cfg["tokenizer"]
        if tc.get("path"):
            load_tokenizer(tc["path"])  # fail early and clearly
            return Path(tc["path"])
        inputs = {"corpus": {n: p.name for n, p in self.corpus.items()}, **config_inputs(self.cfg, "tokenizer")}

        def build(tmp: Path):
            per_domain = tc["train_chars"] // len(self.domain_names)

            def texts():
                for name in self.domain_names:
                    used = 0
                    for doc in self.docs(name, "train"):
                        if used >= per_domain:
                            break
                        used += len(doc)
                        yield doc

            train_tokenizer(texts(), tc["vocab_size"], tmp)

        return self.store.get_or_build("tokenizer", inputs, build)

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_dir)

    @cached_property
    def token_dirs(self) -> dict[str, Path]:
        out = {}
        for name in self.domain_names:
            inputs = {"corpus": self.corpus[name].name, "tokenizer": self.store.ref(self.tokenizer_dir)}
            cap = (self.cfg["domains"]["sources"][name] or {}).get("max_tokens")
            if cap:  # only when set, so that the keys of uncapped domains stay as they were
                inputs["max_tokens"] = int(cap)

            def build(tmp: Path, name=name, cap=cap):
                return tok_store.pack_shards(self.shards(name), self.tokenizer_dir, tmp,
                                             int(self.data_cfg.get("num_workers", 0)), cap)

            out[name] = self.store.get_or_build("tokens", inputs, build)
        return out

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        return {n: tok_store.load_split(p, "train") for n, p in self.token_dirs.items()}

    @cached_property
    def token_counts(self) -> dict[str, int]:
        return {n: len(a) for n, a in self.arrays.items()}

    @cached_property
    def uniform_mixture(self) -> dict[str, float]:
        """The token-proportional baseline (the paper's 'uniform')."""
        return token_proportional(self.token_counts)

    # --------------------------------------------------------------------------------------- training ---
    def check_epochs(self, ratios: dict[str, float], n_tokens: int, label: str) -> None:
        """Refuse a run that would repeat a domain beyond its `max_epochs` (data.max_epochs by default)."""
        from mergemix.data.sampler import check_epochs

        default = self.data_cfg.get("max_epochs")
        limits = {n: (self.cfg["domains"]["sources"][n] or {}).get("max_epochs", default) for n in self.domain_names}
        m = self.cfg["model"]
        check_epochs(self.token_counts, ratios, int(n_tokens), m["seq_len"], m["batch_size"], limits, label)

    @cached_property
    def preflight(self) -> bool:
        """The runs known before any training (base, experts, the uniform mixture), checked at once right after
        the token stage, so that a repetition error does not wait for the base to train."""
        if not self.cfg["base"].get("checkpoint"):
            mixture = self.cfg["base"]["mixture"]
            self.check_epochs(self.uniform_mixture if mixture == "token" else mixture, self.cfg["base"]["tokens"],
                              "base")
        for n in self.domain_names:
            self.check_epochs({n: 1.0}, self.cfg["experts"]["tokens"], f"expert:{n}")
        self.check_epochs(self.uniform_mixture, self.cfg["mix"]["tokens"], "mix:uniform")
        return True

    def _train(self, stage: str, inputs: dict, init: Path | None, ratios: dict, spec: dict, desc: str,
               seed: int | None = None, evaluate: bool = False) -> Path:
        """Train (or take from the cache) one checkpoint in its own tracked run; `evaluate`: its scores too."""
        from mergemix.models import build_model, load_checkpoint
        from mergemix.training import train_causal_lm, trainer_passthrough

        _ = self.preflight  # the known runs, once, before the first training
        self.check_epochs(ratios, spec["tokens"], desc)
        m, tr = self.cfg["model"], self.cfg["trainer"]
        seed = self.seed if seed is None else seed
        lora = spec.get("kind") == "lora"  # LoRA experts: adapters on the base (lora.py)
        key_spec = spec if lora else {k: v for k, v in spec.items() if k not in ("kind", "lora")}
        full_inputs = {**inputs, **config_inputs(self.cfg, "train"),
                       "tokens": {n: p.name for n, p in self.token_dirs.items()}, "ratios": ratios, "spec": key_spec,
                       "seed": seed, "init": self.store.ref(init) if init else None}
        extra = trainer_passthrough(tr)
        if extra:  # only when set, so that the keys of runs without them stay as they were
            full_inputs["trainer"] = extra
        # model.batch_size is the global batch: the process layout is not an input (the weights do not depend on it)
        parallel = bool(tr.get("strategy")) or str(tr["devices"]) != "1" or int(tr.get("num_nodes", 1)) > 1

        def build(tmp: Path, run: StageRun):
            model = load_checkpoint(init) if init else build_model(
                {**m, "max_position_embeddings": m["seq_len"]}, len(self.tokenizer), seed)
            if lora:
                from mergemix.lora import wrap

                model = wrap(model, spec["lora"])
            trainer_kwargs = {k: tr[k] for k in ("accelerator", "devices", "precision", "enable_progress_bar",
                                                  "gradient_clip_val")}
            trainer_kwargs.update(num_nodes=int(tr.get("num_nodes", 1)), strategy=tr.get("strategy"),
                                  micro_batch_size=tr.get("micro_batch_size"),
                                  checkpoint_every_n_steps=tr.get("checkpoint_every_n_steps"), **extra)
            optim = {"weight_decay": self.cfg["optim"]["weight_decay"], "betas": self.cfg["optim"]["betas"],
                     "warmup_steps": spec.get("warmup_steps", 0), "schedule": spec.get("schedule", "constant")}
            out = train_causal_lm(model, self.tokenizer, self.arrays, ratios, tmp, int(spec["tokens"]),
                                  m["seq_len"], m["batch_size"], float(spec["lr"]), seed, optim, trainer_kwargs,
                                  run.lightning(), desc, self.store.partial_dir(stage, full_inputs),
                                  float(m.get("router_bias_update_rate", 0.0)))
            return {**out, "run_id": run.id}

        from mergemix.strategies import is_secondary_rank, launch_id

        if parallel and is_secondary_rank():  # every rank trains (collectives); rank 0 alone writes and logs
            return self.store.follow(stage, full_inputs, lambda tmp: build(tmp, StageRun()), launch_id())
        config = {**full_inputs, "cache_key": artifacts.stage_key(stage, full_inputs)}
        with self.tracker.stage(desc, stage, config) as run:
            path = self.store.get_or_build(stage, full_inputs, lambda tmp: build(tmp, run),
                                           leader=launch_id() if parallel else None)
            if run.active:
                report_training(run, read_manifest(path))
            if evaluate:
                report_scores(run, self.evaluate_checkpoint(path), ratios)
        return path

    @cached_property
    def base_dir(self) -> Path:
        b = self.cfg["base"]
        if b.get("checkpoint"):
            from mergemix.models import load_checkpoint
            load_checkpoint(b["checkpoint"])  # validates
            return Path(b["checkpoint"])
        mixture = self.uniform_mixture if b["mixture"] == "token" else check_weights(
            b["mixture"], self.domain_names, "base.mixture")
        return self._train("base", {}, None, mixture, b, "base")

    @cached_property
    def expert_dirs(self) -> dict[str, Path]:
        return {n: self.expert_dir(n) for n in self.domain_names}

    def expert_dir(self, name: str, ratios: dict[str, float] | None = None) -> Path:
        """One domain's expert (jobs training different experts in parallel share the base through the cache), or
        with `ratios` an expert named `name` trained on that mixture of domains by the same recipe (a coarse group
        of the hierarchical search); a mixture expert is keyed by its ratios, not its name."""
        inputs = {"domain": name} if ratios is None else {}
        return self._train("expert", inputs, self.base_dir, ratios or {name: 1.0}, self.cfg["experts"],
                           f"expert:{name}")

    def derive(self, **sections) -> Pipeline:
        """This pipeline with whole config sections replaced (another model, a checkpoint as the base): what the
        new inputs determine is rebuilt, everything else comes from the shared cache."""
        return Pipeline({**self.cfg, **sections}, self.run_dir, self.tracker)

    def train_mixture(self, ratios: dict[str, float], label: str, spec: dict | None = None,
                      seed: int | None = None) -> Path:
        """Train the base on `ratios` (the mid-training run, or a proxy run with another `spec`); `seed` (data
        order) defaults to search_seed."""
        ratios = check_weights(ratios, self.domain_names, f"mixture '{label}'")
        return self._train("mixture", {}, self.base_dir, ratios, spec or self.cfg["mix"], f"mix:{label}",
                           self.search_seed if seed is None else int(seed), evaluate=self.tracker.kind == "wandb")

    # ----------------------------------------------------------------------------------------- benchmarks ---
    @cached_property
    def task_dir(self) -> Path:
        b = self.cfg["benchmarks"]
        heldout_keys = {n: self.corpus[n].name for n in self.domain_names}
        files = {t: artifacts.file_digest(s["path"]) for t, s in b["tasks"].items()
                 if s.get("source") == "jsonl" and Path(s["path"]).is_file()}
        inputs = {**config_inputs(self.cfg, "benchmarks"), "heldout": heldout_keys, "files": files,
                  "tokenizer": self.store.ref(self.tokenizer_dir)}
        lm = {t: s for t, s in b["tasks"].items() if s.get("source") == "lmeval"}
        if lm:  # lm-eval's version and the files under each include_path
            from mergemix.benchmarks import lmeval

            inputs["lmeval"] = lmeval.fingerprint(lm)

        def build(tmp: Path):
            from mergemix.benchmarks.suite import build_task

            cloze = {s.get("domain") for s in b["tasks"].values() if s.get("builder") == "cloze"}
            held = {n: list(self.docs(n, "heldout")) for n in self.domain_names if n in cloze}
            for name, spec in sorted(b["tasks"].items()):
                task = build_task(name, spec, held, self.seed, self.tokenizer)
                (tmp / f"{name}.json").write_text(json.dumps({"kind": task.kind, "items": task.items,
                                                              "max_new_tokens": task.max_new_tokens,
                                                              "lmeval": task.lmeval}))
            return {"n_items": {t: len(json.loads((tmp / f"{t}.json").read_text())["items"]) for t in b["tasks"]}}

        return self.store.get_or_build("benchmarks", inputs, build)

    @cached_property
    def suite(self):
        from mergemix.benchmarks.suite import Suite
        from mergemix.benchmarks.tasks import Task

        b = self.cfg["benchmarks"]
        tasks = {}
        for name in sorted(b["tasks"]):
            raw = json.loads((self.task_dir / f"{name}.json").read_text())
            tasks[name] = Task(name, raw["kind"], raw["items"], raw["max_new_tokens"], raw.get("lmeval"))
        caps = {c: spec["tasks"] for c, spec in b["capabilities"].items()}
        return Suite(self.tokenizer, tasks, caps, b["metric"], b["batch_size"], b["max_length"], b["bootstrap"])

    @property
    def suite_key(self) -> str:
        return artifacts.stage_key("eval", {"tasks": self.task_dir.name, **config_inputs(self.cfg, "eval")})

    def autocast(self):
        dtype = _dtype(self.cfg["trainer"].get("eval_dtype"))
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu" if self.cfg["trainer"]["accelerator"] == "cpu" else "cuda", dtype=dtype)

    def eval_dir(self, path: Path) -> Path:
        """The stored scores of a checkpoint, cached by (checkpoint, benchmark suite)."""
        from mergemix.benchmarks.suite import check_finite
        from mergemix.models import load_checkpoint

        inputs = {"checkpoint": self.store.ref(path), "suite": self.suite_key}

        def build(tmp: Path):
            with self.autocast():
                result = self.suite.evaluate(load_checkpoint(path))
            check_finite(result, f"checkpoint {path}")
            (tmp / "scores.json").write_text(json.dumps(result, indent=2, allow_nan=False))

        return self.store.get_or_build("eval", inputs, build)

    def evaluate_checkpoint(self, path: Path) -> dict:
        return json.loads((self.eval_dir(path) / "scores.json").read_text())

    # ------------------------------------------------------------------------------------------- search ---
    @cached_property
    def search_dir(self) -> Path:
        from mergemix.search.run import run_search

        inputs = {"base": self.store.ref(self.base_dir),
                  "experts": {n: self.store.ref(p) for n, p in self.expert_dirs.items()},
                  "suite": self.suite_key, **config_inputs(self.cfg, "search"), "seed": self.search_seed,
                  "prior": self.uniform_mixture}
        if (self.cfg["search"].get("calibration") or "none") != "none":  # calibrated on a trained mixture run
            inputs.update(mix=self.cfg["mix"], calibration_noise="paired")
        key = artifacts.stage_key("search", inputs)
        study_path = self.study_path(key)

        def build(tmp: Path):
            return run_search(self, tmp, self.merge_cache_path, study_path)

        with self.tracker.stage("search", "search", {**inputs, "cache_key": key}) as run:
            path = self.store.get_or_build("search", inputs, build)
            if run.active:
                report_search(run, path, self.domain_names)
        return path

    @property
    def merge_cache_path(self) -> Path:
        """One evaluation cache per (base, experts, benchmarks, merge scale), shared by every back-end and seed."""
        inputs = {"base": self.store.ref(self.base_dir), "suite": self.suite_key,
                  "experts": {n: self.store.ref(p) for n, p in self.expert_dirs.items()}}
        scale = float(self.cfg["search"].get("merge_scale", 1.0))
        if scale != 1.0:  # only when set, so that plain merges keep their cache
            inputs["merge_scale"] = scale
        key = artifacts.stage_key("eval", inputs)
        return self.store.root / "evalcache" / f"{key}.jsonl"

    def study_path(self, key: str) -> Path:
        path = self.store.root / "studies" / f"{key}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def alpha_star(self) -> dict[str, float]:
        return read_manifest(self.search_dir)["alpha_star"]

    @property
    def search_result(self) -> dict:
        return json.loads((self.search_dir / "search.json").read_text())

    # ------------------------------------------------------------------------------------------ the run ---
    def run(self) -> dict:
        """All stages; writes table.{md,csv,png}, mixture.yaml and summary.json into the run directory."""
        import shutil

        from mergemix.analysis import report
        from mergemix.search.run import copy_trials

        self.run_dir.mkdir(parents=True, exist_ok=True)
        rows = {"base": self.evaluate_checkpoint(self.base_dir)}
        for name, path in self.expert_dirs.items():
            rows[f"expert:{name}"] = self.evaluate_checkpoint(path)
        search = self.search_result
        alpha = search["alpha_star"]
        uniform = self.uniform_mixture
        total = sum(alpha.values())  # alpha* is stored rounded to 6 decimals
        mixtures = {"uniform": self.train_mixture(uniform, "uniform"),
                    "mergemix": self.train_mixture({d: w / total for d, w in alpha.items()}, "mergemix")}
        rows["uniform (trained)"] = self.evaluate_checkpoint(mixtures["uniform"])
        rows["mergemix (trained)"] = self.evaluate_checkpoint(mixtures["mergemix"])
        rows["mergemix (merge)"] = search["verified_result"]

        shutil.copy2(self.search_dir / "mixture.yaml", self.run_dir / "mixture.yaml")
        exports = self.write_exports()
        copy_trials(self.search_dir / "seeds.csv", self.run_dir / "seeds.csv", self.domain_names)
        table = report.write_table(self.run_dir, rows)
        cap_domain = {c: s.get("domain") for c, s in self.cfg["benchmarks"]["capabilities"].items()}
        caps = self.suite.capabilities
        calib = report.calibration(rows, cap_domain, caps, self.search_dir / "seeds.csv", self.domain_names)
        result = report.margin(rows["mergemix (trained)"], rows["uniform (trained)"], caps)
        warnings = report.verdict(calib, search["surrogate_cv_spearman"], search.get("alpha_choice"))
        summary = {
            "alpha_star": alpha, "uniform_mixture": uniform, "predicted": search["predicted"],
            "rows": {k: {"capabilities": v["capabilities"], "capabilities_std": v["capabilities_std"],
                         "U": v["U"], "U_std": v["U_std"], "tasks": v["tasks"]} for k, v in rows.items()},
            "mergemix_vs_uniform": result, "calibration": calib, "verdict": warnings,
            "surrogate_cv_spearman": search["surrogate_cv_spearman"], "domain_tokens": self.token_counts,
            "artifacts": {"base": str(self.base_dir), "search": str(self.search_dir),
                          "experts": {k: str(v) for k, v in self.expert_dirs.items()},
                          "mixtures": {k: str(v) for k, v in mixtures.items()},
                          **({"alpha_star_checkpoint": str(exports["checkpoint"])} if "checkpoint" in exports
                             else {})},
        }
        report.write_summary(self.run_dir, summary)
        self._print(table, summary)
        return summary

    def write_exports(self) -> dict[str, Path]:
        """alpha* as a mergekit config, a weight YAML and a blend list in the run directory (exports.py). Not in
        the search artifact: the data prefix is a deployment setting, not an input of the search."""
        from mergemix.exports import write_exports

        export = self.cfg.get("export") or {}
        out = write_exports(self.run_dir, self.alpha_star, self.base_dir, self.expert_dirs,
                            export.get("data_prefix", "/data/{domain}"))
        if export.get("alpha_star_checkpoint"):  # theta(alpha*) as an HF checkpoint (from_pretrained, pipeline)
            from mergemix.merging import export_merge

            names = self.domain_names
            out["checkpoint"] = export_merge(self.base_dir, [self.expert_dirs[n] for n in names],
                                             [self.alpha_star[n] for n in names], self.run_dir / "alpha_star",
                                             overwrite=True)
        return out

    def expert_report(self) -> dict:
        """Base and expert scores, and each expert's gain on its own capability (paired noise)."""
        from mergemix.analysis import report

        rows = {"base": self.evaluate_checkpoint(self.base_dir)}
        names = [self.cfg["expert_domain"]] if self.cfg.get("expert_domain") else self.domain_names
        rows.update({f"expert:{n}": self.evaluate_checkpoint(self.expert_dir(n)) for n in names})
        cap_domain = {c: s.get("domain") for c, s in self.cfg["benchmarks"]["capabilities"].items()}
        return report.expert_gains(rows, cap_domain, self.suite.capabilities)

    def _print(self, table: str, s: dict) -> None:
        from mergemix.analysis import report

        fmt = ", ".join(f"{d}={w:.3f}" for d, w in s["alpha_star"].items())
        uni = ", ".join(f"{d}={w:.3f}" for d, w in s["uniform_mixture"].items())
        print(f"\nalpha* (MergeMix): {fmt}\nuniform (token-proportional): {uni}\n\n{table}\n")
        print("calibration:")
        report.print_gains(s["calibration"]["expert_gains"])
        t = s["calibration"]["tradeoff"]
        print(f"  best merge interior: {t['best_is_interior']} (interior U {100 * t['best_interior_U']:.1f}"
              f" vs best vertex U {100 * (t['best_vertex_U'] or float('nan')):.1f}; seed U spread std"
              f" {100 * t['U_spread_std']:.1f})")
        m = s["mergemix_vs_uniform"]
        print(f"MergeMix vs uniform (trained): U {100 * m['U_diff']:+.2f} (paired noise std"
              f" {100 * m['noise_std']:.2f}, {m['sigmas']:+.1f} sigma)")
        if s["verdict"]:
            print("verdict: do not act on alpha* yet; the run's own checks found:")
            for line in s["verdict"]:
                print(f"  - {line}")
        else:
            print("verdict: every expert lifts its capability, the optimum is interior, the surrogate ranks unseen "
                  "merges and every capability responds to the mixture")


class ExpertSpace:
    """The pipeline searched over another set of experts of its base (a hierarchical search's coarse-group
    experts, or one group's sub-experts): the names of `expert_dirs` take the place of the domains, `prior` seeds the
    search in place of the token-proportional mixture, and everything else (base, benchmarks, cache) is the
    pipeline's. Only the search reads the view; training and data stay on the pipeline."""

    def __init__(self, pipe: Pipeline, expert_dirs: dict[str, Path], prior: dict[str, float]):
        self.pipe, self.expert_dirs = pipe, dict(sorted(expert_dirs.items()))
        self.domain_names, self.uniform_mixture = sorted(expert_dirs), {n: prior[n] for n in sorted(expert_dirs)}

    def __getattr__(self, name: str):
        return getattr(self.pipe, name)

    search_dir, merge_cache_path = Pipeline.search_dir, Pipeline.merge_cache_path
    alpha_star, search_result = Pipeline.alpha_star, Pipeline.search_result
