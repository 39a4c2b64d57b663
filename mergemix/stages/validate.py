"""Before any stage: the inputs that need files or registries to check (domain sources, benchmark items, back-end
and sampler names, Trainer arguments), after the typed schema (mergemix/schema.py) passed."""

from __future__ import annotations

from mergemix.data import domains as dom
from mergemix.errors import MergeMixError
from mergemix.log import log
from mergemix.simplex import check_weights


def check_inputs(cfg: dict, domain_names: list[str]) -> None:
    """Domains, benchmarks, trainer and search settings, then the training budgets, in that order."""
    _check_data(cfg, domain_names)
    _check_benchmarks(cfg["benchmarks"], domain_names)
    _check_trainer(cfg["trainer"])
    if cfg.get("expert_domain") not in (None, *domain_names):
        raise MergeMixError(
            f"expert_domain '{cfg['expert_domain']}' is not a configured domain ({', '.join(domain_names)})"
        )
    _check_search(cfg["search"], cfg["benchmarks"], domain_names)
    _check_budgets(cfg)


def _check_data(cfg: dict, domain_names: list[str]) -> None:
    if len(domain_names) < 2:
        raise MergeMixError(
            f"a mixture needs at least 2 domains, got {len(domain_names)} "
            f"({', '.join(domain_names) or 'none'}): add domains under domains.sources"
        )
    for name in domain_names:
        dom.validate_spec(name, cfg["domains"]["sources"][name] or {})
    if cfg["base"]["mixture"] != "token":
        check_weights(cfg["base"]["mixture"], domain_names, "base.mixture")


def _check_benchmarks(b: dict, domain_names: list[str]) -> None:
    from mergemix.benchmarks.suite import MC_METRICS, check_task_spec
    from mergemix.benchmarks.tasks import load_jsonl_task

    if b["metric"] not in MC_METRICS:
        raise MergeMixError(f"benchmarks.metric must be one of {MC_METRICS}, got '{b['metric']}'")
    for cap, spec in b["capabilities"].items():
        missing = [t for t in spec["tasks"] if t not in b["tasks"]]
        if missing:
            raise MergeMixError(
                f"capability '{cap}' names unknown tasks {missing}; tasks: {sorted(b['tasks'])}"
            )
    for t, spec in b["tasks"].items():
        limit = spec.get("limit")
        if check_task_spec(t, spec) != "lmeval" and limit is not None and not float(limit).is_integer():
            raise MergeMixError(
                f"benchmark '{t}': limit must be a positive integer number of items, got {limit!r}"
            )
        if spec.get("builder") == "cloze" and spec["domain"] not in domain_names:
            raise MergeMixError(
                f"benchmark '{t}' is built from domain '{spec['domain']}', which is not "
                f"configured (domains: {domain_names})"
            )
        if spec.get("source") == "jsonl":  # every item, before any work
            load_jsonl_task(t, spec["path"], spec.get("kind"))
    lm = {t: spec for t, spec in b["tasks"].items() if spec.get("source") == "lmeval"}
    if lm:  # names, include paths and offline datasets of lm-eval members, before any work
        from mergemix.benchmarks import lmeval

        lmeval.resolve(lm)


def _check_trainer(tr: dict) -> None:
    from mergemix.resume import checkpoint_interval
    from mergemix.strategies import check_strategy
    from mergemix.training import trainer_passthrough

    check_strategy(tr.get("strategy"))
    trainer_passthrough(tr)
    checkpoint_interval(tr.get("checkpoint_every_n_steps"), 1)


def _check_search(s: dict, b: dict, domain_names: list[str]) -> None:
    from mergemix.search.backends import get_backend

    get_backend(s["backend"])
    if s.get("sampler"):
        from mergemix.search.optuna_backend import make_sampler

        make_sampler(s["sampler"], 0)
    goal = s["objective"] if isinstance(s["objective"], list) else [s["objective"]]
    if s["objective"] != "macro" and (not goal or any(c not in b["capabilities"] for c in goal)):
        raise MergeMixError(
            f"search.objective must be 'macro', a capability or a list of capabilities "
            f"{sorted(b['capabilities'])}, got {s['objective']!r}"
        )
    if len(set(goal)) < len(goal):
        raise MergeMixError(
            f"search.objective lists a capability more than once (it would weigh more), got {list(goal)}"
        )
    k = len(domain_names)
    if s["backend"] == "surrogate" and int(s["budget"]) < k:
        raise MergeMixError(
            f"search.budget must be at least the number of domains ({k}) for the surrogate "
            f"back-end (its seed merges start at the {k} vertices), got {s['budget']}"
        )
    if s.get("top_k") and s.get("n_candidates") and int(s["top_k"]) > int(s["n_candidates"]):
        log.warning(
            f"search.top_k {s['top_k']} exceeds search.n_candidates {s['n_candidates']}: alpha* will "
            "average all candidates"
        )


def _check_budgets(cfg: dict) -> None:
    """Every training budget covers at least one batch (commands that train; `info` only describes a model)."""
    batch = cfg["model"]["seq_len"] * cfg["model"]["batch_size"]
    bl = cfg.get("baseline") or {"kind": "none"}
    if bl["kind"] in ("proxy", "regmix", "refine") and int(bl.get("trial_tokens") or batch) < batch:
        raise MergeMixError(f"baseline.trial_tokens must cover at least one batch ({batch} tokens)")
    for key in ("base", "experts", "mix"):
        steps = int(cfg[key]["tokens"]) // batch
        if steps < 1:
            raise MergeMixError(f"{key}.tokens must cover at least one batch ({batch} tokens)")
        if int(cfg[key].get("warmup_steps") or 0) > steps:
            raise MergeMixError(
                f"{key}.warmup_steps must not exceed the run's {steps} steps ({key}.tokens / {batch} "
                f"tokens per step), got {cfg[key]['warmup_steps']}"
            )
